"""Named presets (`--config`): deltas of the configuration's defaults, keyed by
field (= flag) name. A flag set on the command line wins over its preset."""

from __future__ import annotations

from typing import Any

_PAPER_224 = {
    "image_size": 224,
    "width": 64,
    "stem": "imagenet",
    "epochs": 70,
    "adj_warmup_epochs": 50,
    "lr_decay_epochs": 20,
    "random_crop_pad": 16,
}

_FERPLUS48 = {
    "dataset": "ferplus",
    "grayscale": True,
    "image_size": 48,
    "width": 64,
    "epochs": 6,
    "batch_size": 64,
    "lr_schedule": "cosine",
    "lr_warmup_epochs": 1,
    "nesterov": True,
    "label_smoothing": 0.1,
    "adj_warmup_epochs": 2,
}

# Presets are deltas of the default, keyed by field (= flag) name.
PRESETS: dict[str, dict[str, Any]] = {
    # The main job: built-in data, a narrow ResNet-18, minutes on a 2-core CPU.
    # The field defaults hold the paper's step schedule (lr 0.1 divided by 10 every
    # 20 epochs) with a 3-epoch adjacency warm-up (the paper presets below set its
    # 50); from scratch on the built-in data lr 0.1 does not train
    # (bench/LOG.md), so the main job uses 0.01.
    "default": {"learning_rate": 0.01},
    # Tests: the smallest network and data that still exercise every path.
    "tiny": {
        "image_size": 32,
        "width": 8,
        "embedding_dim": 16,
        "default_train_size": 96,
        "default_val_size": 32,
        "default_identities": 8,
        "epochs": 2,
        "batch_size": 16,
        "adj_warmup_epochs": 1,
        "validate_images": False,
        "learning_rate": 0.05,
    },
    # FERPlus CPU protocol: 48 px, full ResNet-18 with a 3x3/2 stem, short schedule.
    "ferplus48": _FERPLUS48,
    # Label noise where a plain network memorises it: a class-stratified 5,000 of
    # FERPlus's training images for 30 epochs (about one ferplus48 run of compute),
    # the warm-ups in the same proportion of the schedule as ferplus48's, without
    # the random crop and the label smoothing (with them the linear twin at 40%
    # noise predicts only 13.8% of its flipped images as their wrong label;
    # bench/LOG.md, 2026-12-07).
    "ferplus48_memorise": {
        **_FERPLUS48,
        "train_size": 5000,
        "epochs": 30,
        "lr_warmup_epochs": 5,
        "adj_warmup_epochs": 10,
        "random_crop_pad": 0,
        "label_smoothing": 0.0,
    },
    # The same at full scale, for a GPU: the stride-1 stem, the paper's 70 epochs
    # (50 of adjacency warm-up, lr / 10 every 20), images cached in memory, mixed
    # precision and XLA (both slower on a CPU).
    "ferplus48_gpu": {
        **_FERPLUS48,
        "stem": "small",
        "epochs": 70,
        "adj_warmup_epochs": 50,
        "lr_schedule": "step",
        "lr_decay_epochs": 20,
        "cache": True,
        "mixed_precision": True,
        "jit_compile": True,
    },
    # The paper's protocol (section 3): 224 px, 50 warm-up epochs, step decay.
    "ferplus": {**_PAPER_224, "dataset": "ferplus", "grayscale": True},
    "rafdb": {**_PAPER_224, "dataset": "rafdb"},
    "affectnet": {
        "dataset": "affectnet",
        "image_size": 224,
        "width": 64,
        "stem": "imagenet",
        "epochs": 30,
        "adj_warmup_epochs": 10,
        "lr_decay_epochs": 10,
        "balanced_sampling": True,
        "random_crop_pad": 16,
    },
}
