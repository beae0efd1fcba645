"""The learning-rate schedule, registered with Keras so that a saved model's
optimizer loads wherever `ean_tf` is imported."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ean_tf")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then step decay (the paper) or cosine to zero."""

    def __init__(
        self,
        peak: float,
        steps_per_epoch: int,
        epochs: int,
        schedule: str = "step",
        decay_epochs: int = 20,
        decay_factor: float = 0.1,
        warmup_epochs: int = 0,
    ):
        self.peak, self.steps_per_epoch, self.epochs = peak, steps_per_epoch, epochs
        self.schedule, self.decay_epochs = schedule, decay_epochs
        self.decay_factor, self.warmup_epochs = decay_factor, warmup_epochs

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = step / self.steps_per_epoch
        warm = float(self.warmup_epochs)
        if self.schedule == "cosine":
            span = max(self.epochs - warm, 1e-6)
            progress = tf.clip_by_value((epoch - warm) / span, 0.0, 1.0)
            lr = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        else:
            lr = self.peak * tf.pow(
                self.decay_factor, tf.floor(epoch / self.decay_epochs)
            )
        if self.warmup_epochs > 0:
            lr = tf.where(
                epoch < warm, self.peak * (step + 1) / (warm * self.steps_per_epoch), lr
            )
        return lr

    def get_config(self):
        return dict(
            peak=self.peak,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.epochs,
            schedule=self.schedule,
            decay_epochs=self.decay_epochs,
            decay_factor=self.decay_factor,
            warmup_epochs=self.warmup_epochs,
        )
