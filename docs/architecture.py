"""Draws docs/architecture.png, the README's figure of the model and its graphs.

.venv/bin/python docs/architecture.py
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

BOXES = {  # name: (x, y, width, height, text, colour)
    "image": (0.2, 3.0, 1.6, 0.9, "face image\nRGB 0..255\n(B, S, S, 3)", "#eeeeee"),
    "backbone": (
        2.3,
        3.0,
        1.9,
        0.9,
        "backbone G_enc\nResNet-18\n(InputNorm first)",
        "#cfe2f3",
    ),
    "pooled": (4.7, 3.9, 1.7, 0.8, "pooled F\n(B, 8 x width)", "#d9ead3"),
    "embed": (4.7, 2.2, 1.7, 0.8, "embedding e\nLinear + BN", "#d9ead3"),
    "adj": (
        6.9,
        2.2,
        2.0,
        0.8,
        "A = [cos(e_i, e_j) >= tau1]\nÂ = D^-1/2 (A+I) D^-1/2",
        "#fce5cd",
    ),
    "gcn": (9.4, 3.0, 1.7, 0.9, "GCN head\nact(Â F W + b)", "#f4cccc"),
    "logits": (11.6, 3.0, 1.3, 0.9, "logits\n(B, C)", "#eeeeee"),
    "adjloss": (6.9, 0.9, 2.0, 0.7, "Adj_loss(A, y)\n(eq. 5-6)", "#fff2cc"),
    "ce": (
        10.6,
        1.6,
        2.3,
        0.9,
        "loss = CE_isolated\n+ 1/2 CE_graph + Adj_loss\n(docs/DESIGN.md 1.2)",
        "#fff2cc",
    ),
    "disc": (
        2.3,
        0.9,
        1.9,
        0.9,
        "D_m on conv3\n(invariant feature\ngenerator)",
        "#e6d0ea",
    ),
}
ARROWS = [
    ("image", "backbone"),
    ("backbone", "pooled"),
    ("backbone", "embed"),
    ("pooled", "gcn"),
    ("embed", "adj"),
    ("adj", "gcn"),
    ("gcn", "logits"),
    ("adj", "adjloss"),
    ("logits", "ce"),
    ("backbone", "disc"),
]


def _centre(name):
    x, y, w, h, *_ = BOXES[name]
    return x + w / 2, y + h / 2


def draw(path: str) -> None:
    fig, ax = plt.subplots(figsize=(13.5, 5.6))
    for x, y, w, h, text, colour in BOXES.values():
        ax.add_patch(
            FancyBboxPatch(
                (x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555555"
            )
        )
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
    for a, b in ARROWS:
        # shrink by about half the boxes' width along the arrow, in points
        wide = 75 if BOXES[b][2] >= 2 else 38
        ax.add_patch(
            FancyArrowPatch(
                _centre(a),
                _centre(b),
                arrowstyle="-|>",
                mutation_scale=12,
                shrinkA=38,
                shrinkB=wide if abs(_centre(a)[1] - _centre(b)[1]) < 0.1 else 38,
                color="#444444",
            )
        )
    ax.text(
        0.2,
        5.15,
        "Training: the graph is the mini-batch (A = I during the adjacency warm-up).",
        fontsize=10,
    )
    ax.text(
        0.2,
        4.8,
        "Serving (nearest graph): each image is joined to its 4 most similar stored "
        "training images (cos >= tau1); their logits and labels (weight 0.25) "
        "join its answer.",
        fontsize=10,
    )
    ax.set_xlim(0, 13.2)
    ax.set_ylim(0.5, 5.5)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    draw(os.path.join(HERE, "architecture.png"))
    print(os.path.join(HERE, "architecture.png"))
