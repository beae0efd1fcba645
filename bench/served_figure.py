"""The README's results figure: each EAN run's served graph, batch graph and
network alone beside its linear twin, from the run JSONs that `experiments.py`
writes under one folder (default `bench/results/xeon`, laid out as
`seed<N>/<experiment>/<run>.json`).

    python bench/served_figure.py [--results_dir=bench/results/xeon] [--out=...]

Reads only the JSONs: nothing is trained or evaluated. One panel per noise rate;
in it, one group of bars per EAN run that has a linear twin (the linear run of
the same seed folder and noise rate), labelled with its seed and file name. The
served bar is the graph the run served (its config's `inference_graph`).
"""

from __future__ import annotations

import glob
import json
import os

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "results_dir", os.path.join(common.RESULTS_DIR, "xeon"), "Folder of run JSONs."
)
flags.DEFINE_string("out", "", "Figure path (default: <results_dir>/served.png).")

BARS = (  # key, legend, colour
    ("linear", "linear twin", "tab:gray"),
    ("served", "EAN, served graph", "tab:red"),
    ("batch", "EAN, batch graph (the paper's protocol)", "tab:green"),
    ("isolated", "EAN, network alone (A = I)", "tab:purple"),
)


def pairs(results_dir: str) -> list[dict]:
    """[{"noise", "seed", "name", "preset", "dataset", "graph", "linear", "served",
    "batch", "isolated"}] for each EAN run with a linear twin, by noise, seed and
    name."""
    runs = []
    for path in sorted(
        glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)
    ):
        with open(path) as f:
            r = json.load(f)
        if "accuracy" not in r or "config" not in r:
            continue  # an experiment's table, or another bench's JSON
        rel = os.path.relpath(path, results_dir).split(os.sep)
        r["_seed"] = next((p for p in rel if p.startswith("seed")), "")
        r["_name"] = os.path.basename(path)[: -len(".json")]
        runs.append(r)
    linear = {
        (r["_seed"], r["config"]["data"]["noise_rate"]): r
        for r in runs
        if r["config"]["model"]["head"] == "linear"
    }
    out = []
    for r in runs:
        if r["config"]["model"]["head"] != "ean" or r.get("same_run_as"):
            continue  # a copy (`same_run_as`) is drawn once, as its original
        noise = r["config"]["data"]["noise_rate"]
        twin = linear.get((r["_seed"], noise))
        if twin is None:
            continue
        graph = r["config"]["model"]["inference_graph"]
        out.append(
            {
                "noise": noise,
                "seed": r["_seed"],
                "name": r["_name"],
                "preset": r.get("preset", ""),
                "dataset": r["config"]["data"]["dataset"],
                "graph": graph,
                "linear": twin["accuracy"]["isolated"],
                "served": r["accuracy"].get(graph),
                "batch": r["accuracy"].get("batch"),
                "isolated": r["accuracy"].get("isolated"),
            }
        )
    return sorted(out, key=lambda row: (row["noise"], row["seed"], row["name"]))


def panel_title(noise: float) -> str:
    return "clean labels" if noise == 0 else f"{round(noise * 100)}% label noise"


def draw(rows: list[dict], path: str, title: str) -> None:
    """One panel per noise rate, each EAN run a group of bars (the BARS) with the
    accuracy written above each bar; each panel's y-axis fits its own runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = sorted({row["noise"] for row in rows})
    most = max(sum(row["noise"] == n for row in rows) for n in noises)
    fig, axes = plt.subplots(
        1, len(noises), figsize=(0.8 + 2.8 * most * len(noises), 4.4), squeeze=False
    )
    width = 0.8 / len(BARS)
    for ax, noise in zip(axes[0], noises, strict=True):
        group = [row for row in rows if row["noise"] == noise]
        for k, (key, legend, colour) in enumerate(BARS):
            xs = [g + (k - (len(BARS) - 1) / 2) * width for g in range(len(group))]
            ys = [row[key] or 0.0 for row in group]
            if key == "served":
                legend += f" ({', '.join(sorted({r['graph'] for r in rows}))})"
            ax.bar(xs, ys, width * 0.92, label=legend, color=colour)
            for x, y in zip(xs, ys, strict=True):
                if y:
                    ax.text(
                        x,
                        y + 0.001,
                        f"{y:.3f}",
                        ha="center",
                        va="bottom",
                        fontsize=7.5,
                        rotation=90,
                    )
        labels = [
            f"{row['seed'].replace('seed', 'seed ')}\n{row['name']}" for row in group
        ]
        ax.set_xticks(range(len(group)), labels, fontsize=8)
        values = [row[key] for row in group for key, _, _ in BARS if row[key]]
        ax.set_ylim(min(values) - 0.02, max(values) + 0.012)
        ax.set_xlim(-0.6, most - 0.4)
        ax.set_title(panel_title(noise), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("validation accuracy (the axis does not start at 0)", fontsize=8)
    handles, legends = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, legends, fontsize=8, loc="lower center", ncol=len(BARS))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    rows = pairs(FLAGS.results_dir)
    if not rows:
        raise SystemExit(
            f"{FLAGS.results_dir}: no EAN run with a linear twin of the same seed "
            "and noise rate yet."
        )
    out = FLAGS.out or os.path.join(FLAGS.results_dir, "served.png")
    presets = ", ".join(sorted({row["preset"] for row in rows}))
    data = ", ".join(sorted({row["dataset"] for row in rows}))
    draw(
        rows,
        out,
        f"--config={presets}, {data} validation split: each EAN run beside its "
        "linear twin (same seed, same noise)",
    )
    print(f"Wrote {out}: {len(rows)} pair(s)")
    for row in rows:
        graphs = ", ".join(
            f"{key} {row[key]:.4f}" for key, _, _ in BARS if row[key] is not None
        )
        print(f"  {panel_title(row['noise'])}, {row['seed']}, {row['name']}: {graphs}")


if __name__ == "__main__":
    app.run(main)
