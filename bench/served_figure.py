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

GRAPHS = ("context", "nearest", "bank", "batch", "isolated")
COLOURS = {
    "linear": "tab:gray",
    "context": "tab:blue",
    "nearest": "tab:red",
    "bank": "tab:orange",
    "batch": "tab:green",
    "isolated": "tab:purple",
}


def pairs(results_dir: str) -> list[dict]:
    """[{"noise", "seed", "variant", "linear", "context", ...}] for each EAN run
    with a linear twin: same seed folder, same noise rate and the same `--extra`
    fields."""
    from ean_tf.config import with_first_defaults

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
        # The loss and the graph's gradients are named from the config: their
        # defaults changed, and a JSON without a field was trained with its
        # first default.
        model = with_first_defaults(r["config"])["model"]
        beta = model["isolated_ce_weight"]
        loss = "paper loss" if beta == 0 else f"isolated_ce_weight={beta:g}"
        named = ("graph_backbone_grad", "graph_head_grad")
        grads = [f"{k}={model[k]}" for k in named]
        extra = [
            f"{k}={v}"
            for k, v in r["overrides"].items()
            if k not in ("head", "noise_rate", "isolated_ce_weight", *named)
        ]
        out.append(
            {
                "noise": noise,
                "seed": r["_seed"],
                "variant": "\n".join([loss, *grads, *extra]),  # a setting a line
                "preset": r["preset"],
                "linear": twin["accuracy"]["isolated"],
                "served": model.get("inference_graph"),  # what the run served
                **{g: r["accuracy"].get(g) for g in GRAPHS},
            }
        )
    return out


def panel_title(row: dict) -> str:
    return f"{round(row['noise'] * 100)}% noise, {row['seed'].replace('seed', 'seed ')}"


def draw(rows: list[dict], path: str, title: str) -> None:
    """One panel per noise rate (columns) and seed (rows), each EAN run of that
    setting a group of bars beside its linear twin; one y-axis for all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        panels.setdefault((row["seed"], row["noise"]), []).append(row)
    seeds = sorted({seed for seed, _ in panels})
    noises = sorted({noise for _, noise in panels})
    most = max(len(group) for group in panels.values())
    fig, axes = plt.subplots(
        len(seeds),
        len(noises),
        figsize=(len(noises) * (1.2 + 1.7 * most), 0.8 + 3.6 * len(seeds)),
        squeeze=False,
        sharey=True,
    )
    served = {row.get("served") for row in rows}  # what the drawn runs served
    # A graph no run has (`nearest` before it existed) gets no slot.
    bars = ("linear", *(g for g in GRAPHS if any(row.get(g) for row in rows)))
    width = 0.8 / len(bars)
    values = [v for row in rows for b in bars if (v := row.get(b)) is not None]
    for (i, seed), (j, noise) in (
        (s, n) for s in enumerate(seeds) for n in enumerate(noises)
    ):
        ax, group = axes[i][j], panels.get((seed, noise), [])
        if not group:
            ax.set_axis_off()
            continue
        for k, bar in enumerate(bars):
            xs = [g + (k - (len(bars) - 1) / 2) * width for g in range(len(group))]
            ys = [row.get(bar) or 0.0 for row in group]
            label = "linear twin" if bar == "linear" else f"EAN, {bar} graph"
            if bar in served:
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
        ax.set_xticks(range(len(group)), [row["variant"] for row in group], fontsize=7)
        ax.set_xlim(-0.6, most - 0.4)  # the same bar width in every panel
        ax.set_title(panel_title(group[0]), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if j == 0:
            ax.set_ylabel("validation accuracy")
    axes[0][0].set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    handles, labels = next(
        ax for row in axes for ax in row if ax.axison
    ).get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=len(bars))
    fig.suptitle(title, fontsize=9, y=0.995 - 0.35 / fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
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
    draw(
        rows,
        out,
        f"--config={presets}, validation accuracy (FER2013Valid for FERPlus): "
        "each EAN run's graphs beside its linear twin",
    )
    print(f"Wrote {out}: {len(rows)} pair(s)")
    for row in rows:
        graphs = ", ".join(f"{g} {row[g]:.4f}" for g in GRAPHS if row.get(g))
        label = f"{panel_title(row)}\n{row['variant']}"
        print(f"  {label!r}: linear {row['linear']:.4f}, {graphs}")


if __name__ == "__main__":
    app.run(main)
