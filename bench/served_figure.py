"""The served-graph figure of the README: validation accuracy of each EAN graph
beside its linear twin, per experiment and seed, from the run JSONs that
`experiments.py` writes under one folder (default `bench/results/served`, laid out
as `seed<N>/<experiment>/<run>.json`).

    python bench/served_figure.py [--results_dir=bench/results/served] [--out=...]

Reads only the JSONs: nothing is trained or evaluated. A pair appears once its
EAN run has finished; the linear bar is its twin of the same seed and noise.
"""

from __future__ import annotations

import glob
import json
import os

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "results_dir", os.path.join(common.RESULTS_DIR, "served"), "Folder of run JSONs."
)
flags.DEFINE_string("out", "", "Figure path (default: <results_dir>/served.png).")

GRAPHS = ("context", "bank", "batch", "isolated")
COLOURS = {
    "linear": "tab:gray",
    "context": "tab:blue",
    "bank": "tab:orange",
    "batch": "tab:green",
    "isolated": "tab:purple",
}


def pairs(results_dir: str) -> list[dict]:
    """[{"label", "linear", "context", ...}] for each EAN run with a linear twin:
    same seed folder, same noise rate and the same `--extra` fields."""
    from ean_tf.config import FIRST_DEFAULTS

    runs = []
    for path in sorted(
        glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)
    ):
        with open(path) as f:
            r = json.load(f)
        if "accuracy" not in r or "config" not in r or "run" not in r:
            continue  # an experiment's summary table
        rel = os.path.relpath(path, results_dir).split(os.sep)
        r["_seed"] = next((p for p in rel if p.startswith("seed")), "")
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
        # The loss and the backbone's gradient are named from the config: their
        # defaults changed, and a JSON without a field was trained with its
        # first default.
        model = {
            name: r["config"]["model"].get(name, before)
            for (section, name), before in FIRST_DEFAULTS.items()
            if section == "model"
        }
        beta = model["isolated_ce_weight"]
        loss = "paper loss" if beta == 0 else f"isolated_ce_weight={beta:g}"
        backbone = f"graph_backbone_grad={model['graph_backbone_grad']}"
        extra = [
            f"{k}={v}"
            for k, v in r["overrides"].items()
            if k not in ("head", "noise_rate", *model)
        ]
        name = f"{round(noise * 100)}% noise, {r['_seed'].replace('seed', 'seed ')}"
        name += "\n" + "\n".join([loss, backbone, *extra])  # one setting a line
        out.append(
            {
                "label": name,
                "preset": r["preset"],
                "linear": twin["accuracy"]["isolated"],
                **{g: r["accuracy"].get(g) for g in GRAPHS},
            }
        )
    return out


def draw(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = ("linear", *GRAPHS)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 2.2 * len(rows)), 4.2))
    values = [v for row in rows for b in bars if (v := row.get(b)) is not None]
    for i, bar in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(rows))]
        ys = [row.get(bar) or 0.0 for row in rows]
        label = "linear twin" if bar == "linear" else f"EAN, {bar} graph"
        if bar == "context":
            label += " (served)"
        ax.bar(xs, ys, width, label=label, color=COLOURS[bar])
        for x, y in zip(xs, ys, strict=True):
            if y:
                ax.text(
                    x,
                    y + 0.002,
                    f"{y:.3f}",
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    rotation=90,
                )
    ax.set_xticks(range(len(rows)), [row["label"] for row in rows], fontsize=8)
    ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.07))
    ax.set_ylabel("validation accuracy (FER2013Valid for FERPlus)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
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
    draw(rows, out, f"--config={presets}: each EAN graph beside its linear twin")
    print(f"Wrote {out}: {len(rows)} pair(s)")
    for row in rows:
        graphs = ", ".join(f"{g} {row[g]:.4f}" for g in GRAPHS if row.get(g))
        print(f"  {row['label']!r}: linear {row['linear']:.4f}, {graphs}")


if __name__ == "__main__":
    app.run(main)
