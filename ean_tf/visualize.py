"""The figures: the paper's and the confusion matrices.

Figure 1 (`batch_graph_figure`), one batch: faces as nodes, the graph's edges.
Similar edges (C_s >= tau1) are blue, opposite edges (C_s <= tau2) red, each
labelled with its cosine coefficient; each face is captioned with its label and
the model's prediction in the batch graph. Figure 4 (`feature_figure`): conv3
maps of a face and its perturbed views, before and after generator pre-training.
`plot_confusion`: a confusion matrix as counts and row shares.
"""

from __future__ import annotations

import math

import numpy as np

from ean_tf.data import views
from ean_tf.data.base import Examples
from ean_tf.data.pipeline import make_dataset
from ean_tf.files import atomic_path


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return {"nodes": b, "similar_edges": len(similar), "opposite_edges": len(opposite)}


def feature_figure(
    before, after, examples: Examples, image_size: int, kinds, path: str, seed: int
) -> dict:
    """Figure 4: a face and its perturbed views, with the mean |conv3| map of the
    backbone before and after pre-training. Returns the mean cosine similarity of
    frontal and perturbed conv3 maps over up to 64 validation faces, both ways."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, _ = next(iter(make_dataset(examples, image_size, 64, training=False)))
    perturbed = [views.make_views(images, [seed, i], [k]) for i, k in enumerate(kinds)]

    def maps(backbone, x):
        return backbone(x, training=False)[1].numpy()

    def similarity(backbone):
        f = maps(backbone, images).reshape(len(images), -1)
        sims = []
        for p in perturbed:
            q = maps(backbone, p).reshape(len(images), -1)
            num = (f * q).sum(1)
            den = np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + 1e-8
            sims.append(float(np.mean(num / den)))
        return dict(zip(kinds, sims, strict=True))

    result = {"before": similarity(before), "after": similarity(after)}
    columns = [images] + perturbed
    titles = ["frontal"] + list(kinds)
    fig, axes = plt.subplots(3, len(columns), figsize=(2.2 * len(columns), 6.6))
    for j, (x, title) in enumerate(zip(columns, titles, strict=True)):
        axes[0, j].imshow(np.clip(x[0].numpy(), 0, 255).astype("uint8"))
        axes[0, j].set_title(title)
        for i, (name, backbone) in enumerate((("before", before), ("after", after))):
            axes[i + 1, j].imshow(np.abs(maps(backbone, x[:1])[0]).mean(-1), cmap="jet")
            sim = "" if j == 0 else f" cos {result[name][title]:.2f}"
            axes[i + 1, j].set_title(f"conv3 {name}{sim}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("conv3 maps without (before) and with (after) the generator")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return result


# --- robustness ----------------------------------------------------------------------


def plot_confusion(cm: np.ndarray, class_names, path: str, title: str = "") -> None:
    """The confusion matrix `cm` (row = true class) as counts and row shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(class_names),) * 2)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
