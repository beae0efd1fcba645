"""`build_model`: the one place a configuration becomes a model."""

from __future__ import annotations

import dataclasses
import inspect

from ean_tf.config import Config, ModelConfig
from ean_tf.models.ean import DEFAULT_GRAPH, EAN

# The ModelConfig fields that are EAN's arguments of the same name (the others,
# `backbone_weights`, `nearest_memory` and `num_classes`, are read below or by
# training).
MODEL_ARGUMENTS = tuple(
    f.name
    for f in dataclasses.fields(ModelConfig)
    if f.name in inspect.signature(EAN.__init__).parameters and f.name != "num_classes"
)


def build_model(
    config: Config, num_classes: int, class_names=None, train_images: int = 0
) -> EAN:
    """An `EAN` (or its linear twin) as `config` describes it, for `num_classes`
    classes (`--num_classes` wins where set); `train_images` is the training
    split's size, of which the nearest graph stores `--nearest_memory` (0: all;
    no training split, no stored images)."""
    m = config.model
    args = {name: getattr(m, name) for name in MODEL_ARGUMENTS}
    if m.inference_graph == "all":  # --mode=eval's; the model serves the default
        args["inference_graph"] = DEFAULT_GRAPH
    return EAN(
        num_classes=m.num_classes or num_classes,
        image_size=config.data.image_size,
        class_names=class_names,
        memory_size=min(m.nearest_memory or train_images, train_images),
        label_smoothing=config.train.label_smoothing,
        gce_q=config.train.gce_q,
        cross_replica_graph=config.train.cross_replica_graph,
        training_data=config.data.dataset,
        name="ean" if m.head == "ean" else "baseline",
        **args,
    )
