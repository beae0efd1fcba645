"""EAN's objective: the named loss terms, and the variables each one trains.

The terms, each a scalar over the batch (docs/DESIGN.md section 1.2):

    ce_isolated  cross-entropy of the head on each image alone (A = I); for a
                 linear head, of the classifier on the pooled features
    ce_graph     cross-entropy of the same GCN head on the batch graph (eq. 7-8)
    adj_loss     alpha * Adj_loss (eq. 5) on the relaxed similar edges

The model's parts: `backbone` (G_enc), `embedding` (the Dense layer the graph's
cosines are taken on, and its batch norm: the edges) and `head` (the GCN, or the
linear classifier). `OBJECTIVES` says, for each objective, each term's weight in
the loss and the parts it trains; `train_step` takes each part's gradient from the
weighted sum of its terms only, so the logged `loss` (the sum of every weighted
term) is exactly what is minimised, each part along its own terms:

    split (default)  loss = ce_isolated + 1/2 ce_graph + adj_loss
                     ce_isolated trains the backbone and the head, as a plain
                     classifier's loss does; ce_graph and adj_loss train the
                     embedding, so the graph learns which images to join
    paper            loss = ce_graph + adj_loss (eq. 6), every part
    linear head      loss = ce_isolated, the backbone and the head
"""

from __future__ import annotations

PARTS = ("backbone", "embedding", "head")

# objective -> term -> (weight in the loss, the parts it trains).
OBJECTIVES = {
    "split": {
        "ce_isolated": (1.0, ("backbone", "head")),
        "ce_graph": (0.5, ("embedding",)),
        "adj_loss": (1.0, ("embedding",)),
    },
    "paper": {
        "ce_graph": (1.0, PARTS),
        "adj_loss": (1.0, ("backbone", "embedding")),
    },
    "linear": {"ce_isolated": (1.0, ("backbone", "head"))},
}
TERMS = ("ce_isolated", "ce_graph", "adj_loss")


def routing(objective: str) -> dict[str, tuple[float, tuple[str, ...]]]:
    """term -> (weight, parts) of `objective` (`linear` for a linear head)."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"Expected objective in {tuple(OBJECTIVES)}. Received: {objective!r}"
        )
    return OBJECTIVES[objective]


def groups(route: dict) -> list[tuple[dict[str, float], tuple[str, ...]]]:
    """[(term -> weight, parts)]: the parts trained by the same weighted terms,
    together, so that one gradient is taken for each group. `route`: term ->
    (weight, parts), as `routing` gives."""
    by_terms: dict[tuple, list[str]] = {}
    for part in PARTS:
        key = tuple((n, w) for n, (w, parts) in route.items() if part in parts)
        if key:
            by_terms.setdefault(key, []).append(part)
    return [(dict(key), tuple(parts)) for key, parts in by_terms.items()]


def weighted_sum(weights: dict[str, float], terms: dict):
    """sum of weight * term over `weights` (term -> weight)."""
    items = [w * terms[name] for name, w in weights.items()]
    return sum(items[1:], items[0])


def total_loss(route: dict, terms: dict):
    """The loss the step minimises: every term of `route`, weighted."""
    return weighted_sum({n: w for n, (w, _) in route.items()}, terms)
