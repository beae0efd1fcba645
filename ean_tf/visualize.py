"""The paper's figure 1 for one batch: faces as nodes, the graph's edges.

Similar edges (C_s >= tau1) are blue, opposite edges (C_s <= tau2) red, each
labelled with its cosine coefficient; each face is captioned with its label and
the model's prediction in the batch graph.
"""

from __future__ import annotations

import math

import numpy as np


def batch_graph_figure(
    model, images, labels, class_names, path: str, max_edges: int = 40
) -> dict:
    """Draws the batch graph of `images` (B, S, S, 3) 0..255 to `path` (PNG).

    Returns {"similar_edges": n, "opposite_edges": n, "nodes": B}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from ean_tf.models import adjacency as adj

    images = np.asarray(images, np.float32)
    _, raw, _ = model.encode(images, training=False)
    embeddings = model.graph_embeddings(raw)  # as the batch graph builds them
    cs = adj.cosine_similarity(embeddings).numpy()
    preds = model(images, graph="batch").numpy().argmax(1)
    b = len(images)
    angle = np.linspace(0, 2 * math.pi, b, endpoint=False)
    pos = np.stack([np.cos(angle), np.sin(angle)], 1)
    fig, ax = plt.subplots(figsize=(8, 8))
    edges = [(cs[i, j], i, j) for i in range(b) for j in range(i + 1, b)]
    similar = [(c, i, j) for c, i, j in edges if c >= model.tau1]
    opposite = [(c, i, j) for c, i, j in edges if c <= model.tau2]
    similar.sort(reverse=True)
    opposite.sort()
    for group, colour in (
        (similar[:max_edges], "tab:blue"),
        (opposite[:max_edges], "tab:red"),
    ):
        for c, i, j in group:
            ax.plot(
                *zip(pos[i], pos[j], strict=True),
                color=colour,
                alpha=0.6,
                lw=1 + 2 * abs(c),
                zorder=1,
            )
            mid = (pos[i] + pos[j]) / 2
            ax.text(
                mid[0],
                mid[1],
                f"{c:.2f}",
                color=colour,
                fontsize=7,
                ha="center",
                va="center",
                zorder=2,
                bbox=dict(fc="white", ec="none", alpha=0.7, pad=0.5),
            )
    zoom = 56 / images.shape[1]
    for i in range(b):
        box = OffsetImage(images[i].astype(np.uint8), zoom=zoom)
        ax.add_artist(AnnotationBbox(box, pos[i], frameon=True, zorder=3))
        ax.text(
            pos[i][0] * 1.28,
            pos[i][1] * 1.28,
            f"{class_names[labels[i]]}\n-> {class_names[preds[i]]}",
            ha="center",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    red = (
        "no opposite threshold"
        if math.isinf(model.tau2)
        else f"red C_s <= {model.tau2:g} ({len(opposite)} edges)"
    )
    ax.set_title(
        f"Batch graph: blue C_s >= {model.tau1:g} ({len(similar)} edges), {red}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"nodes": b, "similar_edges": len(similar), "opposite_edges": len(opposite)}
