"""The invariant feature generator's models (paper section 2.2, docs/DESIGN.md
section 1.3): the discriminator D_m, the two-player `InvariantFeatureGenerator` and
the `CoTrainer` that trains D_m's view head alongside EAN.

A discriminator D_m reads the backbone's conv3 feature map and has two heads:
identity (M_d + 1 classes, the extra one meaning "a perturbed view") and view
(frontal or perturbed). Each training step runs

- the G step, on the backbone and an expression head: CE_expression(x_e, y_e)
  + lambda_views * CE_expression(views of x_e, y_e)
  + lambda_adv * CE(D^f(G(x_p)), frontal) + lambda_id * CE(D^d(G(x_p)), id);
- the D step, on D_m alone, on the same step's (stopped) conv3 maps:
  CE(D^d(G(x_f)), id) + CE(D^d(G(x_p)), M_d) + CE(D^f(G(x_f)), frontal)
  + CE(D^f(G(x_p)), perturbed).

Without identities (`num_identities=None`: data whose images are not grouped by
person) D_m has the view head only and both identity terms are gone.
`lambda_views=0` is the paper's G loss (expressions of the frontal images only).

Each player has its own optimizer (`compile(g_optimizer=..., d_optimizer=...)`);
losses are averaged over the global batch, so the step runs under the same
`tf.distribute` strategies as EAN training. Images are RGB in 0..255.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ean_tf.data import views

FRONTAL, PERTURBED = 0, 1


def build_discriminator(conv3_shape, num_identities: int | None) -> keras.Model:
    """D_m: two convs on the conv3 map, then identity (M_d + 1) and view heads.
    With `num_identities=None` only the view head (co-training)."""
    inputs = keras.Input(tuple(conv3_shape), name="conv3")
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="d_conv1")(
        inputs
    )
    x = keras.layers.Conv2D(
        128, 3, strides=2, padding="same", activation="relu", name="d_conv2"
    )(x)
    x = keras.layers.GlobalAveragePooling2D(name="d_pool")(x)
    x = keras.layers.Dense(256, activation="relu", name="d_fc")(x)
    view = keras.layers.Dense(2, name="d_view")(x)
    if num_identities is None:
        return keras.Model(inputs, view, name="view_discriminator")
    identity = keras.layers.Dense(num_identities + 1, name="d_identity")(x)
    return keras.Model(inputs, [identity, view], name="discriminator")


class CoTrainer:
    """`--generator_cotrain_weight`: the generator's adversarial term inside EAN
    training. EAN's train step adds `weight * CE(D^f(G(x_p)), frontal)` for
    perturbed views x_p of its batch to its loss, then updates D's view head on the
    step's conv3 maps (frontal vs perturbed) with its own Adam optimizer. The
    identity terms need identity labels and stay in `--mode=pretrain_generator`.

    Kept outside the EAN model (a plain object, so Keras does not save it into
    model.keras or the export); `RunCheckpoint` saves D's weights beside the run.
    """

    def __init__(self, conv3_shape, weight: float, learning_rate: float, kinds, seed):
        self.weight = float(weight)
        self.kinds = tuple(kinds)
        self.seed = int(seed)
        self.discriminator = build_discriminator(conv3_shape, None)
        self.discriminator(tf.zeros((1, *conv3_shape)))
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(self.discriminator.trainable_variables)
        names = ("adv_loss", "d_view_loss", "d_view_accuracy")
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}

    def adversarial_loss(self, backbone, images, step):
        """Per-example CE(D^f(G(x_p)), frontal) and the perturbed conv3 maps."""
        seed = tf.stack([tf.constant(self.seed), tf.cast(step, tf.int32)])
        perturbed = views.make_views(images, seed, self.kinds)
        conv3_p = backbone(perturbed, training=True)[1]
        view_p = self.discriminator(conv3_p, training=False)
        adv = keras.losses.sparse_categorical_crossentropy(
            tf.fill([tf.shape(images)[0]], FRONTAL),
            tf.cast(view_p, tf.float32),
            from_logits=True,
        )
        return adv, conv3_p

    def d_step(self, conv3_f, conv3_p):
        """One update of D's view head; returns its loss and accuracy."""
        x = tf.stop_gradient(tf.concat([conv3_f, conv3_p], 0))
        b = tf.shape(conv3_f)[0]
        labels = tf.concat([tf.fill([b], FRONTAL), tf.fill([b], PERTURBED)], 0)
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.discriminator(x, training=True), tf.float32)
            ce = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            loss = tf.nn.compute_average_loss(ce)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        hits = tf.cast(
            tf.argmax(logits, -1, output_type=tf.int32) == labels, tf.float32
        )
        return tf.reduce_mean(ce), tf.reduce_mean(hits)


class InvariantFeatureGenerator(keras.Model):
    """G_enc (the backbone) + an expression head, against the discriminator D_m.

    Data: `((x_frontal, x_perturbed, identity), targets)` when the expression
    images are x_frontal and their views x_perturbed, or `((x_frontal,
    x_perturbed, identity), (x_expression, x_expression_views, targets))`; images
    float 0..255, identity int in [0, M_d) (ignored without identities), targets
    (B, C) label distributions.
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_identities: int | None,
        num_classes: int,
        label_smoothing: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_identities = None if num_identities is None else int(num_identities)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.expression_head = keras.layers.Dense(num_classes, name="expression_head")
        self.discriminator = build_discriminator(
            backbone.outputs[1].shape[1:], self.num_identities
        )
        names = [
            "g_loss",
            "expression_loss",
            "expression_views_loss",
            "adv_loss",
            "expression_accuracy",
            "expression_views_accuracy",
            "d_loss",
            "d_view_loss",
            "d_view_accuracy",
        ]
        if self.identities:
            names += ["id_loss", "d_id_loss", "d_id_accuracy"]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}

    @property
    def identities(self) -> bool:
        """Whether D_m has the identity head (the data has identities)."""
        return self.num_identities is not None

    def compile(
        self,
        g_optimizer,
        d_optimizer,
        lambda_adv=0.1,
        lambda_id=0.1,
        lambda_views=0.0,
        **kw,
    ):
        # Keras's own `optimizer` is G's (else it builds an unused RMSprop).
        super().compile(optimizer=g_optimizer, **kw)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.lambda_adv, self.lambda_id = float(lambda_adv), float(lambda_id)
        self.lambda_views = float(lambda_views)
        # built now, so that save_weights/load_weights carry their state (resume)
        g_optimizer.build(self.g_variables)
        d_optimizer.build(self.d_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def g_variables(self):
        return (
            self.backbone.trainable_variables + self.expression_head.trainable_variables
        )

    @property
    def d_variables(self):
        return self.discriminator.trainable_variables

    def build(self, input_shape=None):
        size = self.backbone.inputs[0].shape[1]
        pooled, _ = self.backbone(tf.zeros((1, size, size, 3)))
        self.expression_head(pooled)
        self.built = True

    def call(self, images, training=False):
        pooled, _ = self.backbone(images, training=training)
        return self.expression_head(pooled)

    def features(self, images, training=False):
        """The conv3 feature map of images (float 0..255)."""
        return self.backbone(images, training=training)[1]

    def _discriminate(self, conv3, training):
        """(identity logits or None, view logits) of D_m."""
        out = self.discriminator(conv3, training=training)
        return tuple(out) if self.identities else (None, out)

    @staticmethod
    def _ce(labels, logits):
        return keras.losses.sparse_categorical_crossentropy(
            labels, tf.cast(logits, tf.float32), from_logits=True
        )

    def _expression(self, pooled, targets):
        """Per-example expression CE and hits of the head on pooled features."""
        logits = tf.cast(self.expression_head(pooled, training=True), tf.float32)
        ce = keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=self.label_smoothing
        )
        hits = tf.equal(tf.argmax(logits, -1), tf.argmax(targets, -1))
        return ce, tf.cast(hits, tf.float32)

    def g_step(self, x_f, x_p, ids, targets, x_e=None, x_ev=None):
        """One G update; returns (logs, conv3 of x_f, conv3 of x_p).
        `x_e=None`: the expression images are x_f and their views x_p (one
        backbone pass); else x_e and their views x_ev (read when lambda_views > 0).
        """
        batch = tf.shape(x_f)[0]
        with tf.GradientTape() as tape:
            pooled, conv3 = self.backbone(tf.concat([x_f, x_p], 0), training=True)
            if x_e is None:
                pooled_e, pooled_ev = pooled[:batch], pooled[batch:]
            elif self.lambda_views:
                both, _ = self.backbone(tf.concat([x_e, x_ev], 0), training=True)
                pooled_e, pooled_ev = both[: tf.shape(x_e)[0]], both[tf.shape(x_e)[0] :]
            else:
                pooled_e, pooled_ev = self.backbone(x_e, training=True)[0], None
            expression, hits = self._expression(pooled_e, targets)
            if pooled_ev is not None and self.lambda_views:
                expression_views, hits_views = self._expression(pooled_ev, targets)
            else:
                expression_views = hits_views = tf.zeros_like(expression)
            conv3_f, conv3_p = conv3[:batch], conv3[batch:]
            id_p, view_p = self._discriminate(conv3_p, training=False)
            adv = self._ce(tf.fill([batch], FRONTAL), view_p)  # fool D: "frontal"
            total = (
                expression
                + self.lambda_views * expression_views
                + self.lambda_adv * adv
            )
            logs = {}
            if self.identities:
                ident = self._ce(ids, id_p)  # the perturbed view keeps its identity
                total += self.lambda_id * ident
                logs["id_loss"] = tf.reduce_mean(ident)
            loss = tf.nn.compute_average_loss(total)
        grads = tape.gradient(loss, self.g_variables)
        self.g_optimizer.apply_gradients(zip(grads, self.g_variables, strict=True))
        logs.update(
            {
                "g_loss": tf.reduce_mean(total),
                "expression_loss": tf.reduce_mean(expression),
                "expression_views_loss": tf.reduce_mean(expression_views),
                "adv_loss": tf.reduce_mean(adv),
                "expression_accuracy": tf.reduce_mean(hits),
                "expression_views_accuracy": tf.reduce_mean(hits_views),
            }
        )
        return logs, conv3_f, conv3_p

    def d_losses(self, conv3_f, conv3_p, ids):
        """Per-example view loss of D and its hits; with identities also the
        identity loss and hits (else None, None)."""
        batch = tf.shape(conv3_f)[0]
        id_f, view_f = self._discriminate(conv3_f, training=True)
        id_p, view_p = self._discriminate(conv3_p, training=True)
        d_view = self._ce(tf.fill([batch], FRONTAL), view_f) + self._ce(
            tf.fill([batch], PERTURBED), view_p
        )
        view_hits = tf.concat(
            [tf.argmax(view_f, -1) == FRONTAL, tf.argmax(view_p, -1) == PERTURBED], 0
        )
        if not self.identities:
            return d_view, view_hits, None, None
        perturbed_id = tf.fill([batch], self.num_identities)
        d_id = self._ce(ids, id_f) + self._ce(perturbed_id, id_p)
        id_hits = tf.argmax(id_f, -1) == tf.cast(ids, tf.int64)
        return d_view, view_hits, d_id, id_hits

    def d_step(self, conv3_f, conv3_p, ids):
        """One D update on fixed conv3 maps; G is not touched."""
        conv3_f, conv3_p = tf.stop_gradient(conv3_f), tf.stop_gradient(conv3_p)
        with tf.GradientTape() as tape:
            d_view, view_hits, d_id, id_hits = self.d_losses(conv3_f, conv3_p, ids)
            total = d_view if d_id is None else d_view + d_id
            loss = tf.nn.compute_average_loss(total)
        grads = tape.gradient(loss, self.d_variables)
        self.d_optimizer.apply_gradients(zip(grads, self.d_variables, strict=True))
        logs = {
            "d_loss": tf.reduce_mean(total),
            "d_view_loss": tf.reduce_mean(d_view),
            "d_view_accuracy": tf.reduce_mean(tf.cast(view_hits, tf.float32)),
        }
        if d_id is not None:
            logs["d_id_loss"] = tf.reduce_mean(d_id)
            logs["d_id_accuracy"] = tf.reduce_mean(tf.cast(id_hits, tf.float32))
        return logs

    def train_step(self, data):
        (x_f, x_p, ids), expression = data
        # (x_e, x_ev, targets), or targets alone when the expression images are x_f
        if isinstance(expression, tuple):
            x_e, x_ev, targets = expression
        else:
            x_e, x_ev, targets = None, None, expression
        ids = tf.cast(ids, tf.int32)
        logs, conv3_f, conv3_p = self.g_step(x_f, x_p, ids, targets, x_e, x_ev)
        logs.update(self.d_step(conv3_f, conv3_p, ids))
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {n: t.result() for n, t in self.trackers.items()}
