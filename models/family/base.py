"""The autoencoder interface every model of the family implements, and the dense builders they share.

Every autoencoder is a Keras 3 model built from a frozen, typed config and exposes the same methods:
``encode``, ``decode``, ``reconstruct``, ``per_sample_error``, ``scores`` and ``anomaly_score``. The
registry in ``models.family.registry`` builds them by name; the batch pipelines and benchmarks only
ever go through it.

Errors are absolute differences (the tutorial's mean absolute error). The anomaly score of a beat is
built on its mean absolute reconstruction error (``score_error="mae"``), on the root mean square of
its absolute errors (``"rms"``, which weighs a short, large deviation such as a malformed complex more
than the same error spread thinly) or on its worst window (``"window"``: the largest mean absolute
error over ``SCORE_WINDOW_SAMPLES`` consecutive samples, about a QRS complex and its surroundings;
`heartwatch train` exports that by default), unless a model defines its own score on top
(``score_from_error``, e.g. the VAE's negative ELBO). ``scores`` is the one definition the exported
detector calls.

Every model also declares its ``domain``: ``"ecg"`` for models that map flat beats [batch, 140] to
flat beats (these can be wrapped by ``models.detection.detector.DetectorModule`` and exported),
``"image"`` for image models. Regularised models (sparse, contractive, variational) add their penalty
to the training loss with ``add_loss`` inside ``call`` when ``training`` is true, so a plain
``model.compile(loss="mae"); model.fit(x, x)`` trains them; ``penalty(inputs)`` returns the same term
for inspection and tests.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from models.detection import SCORE_ERRORS, SCORE_WINDOW_SAMPLES
from models.family.configs import config_from_dict

ECG_DOMAIN = "ecg"
IMAGE_DOMAIN = "image"
DOMAINS = (ECG_DOMAIN, IMAGE_DOMAIN)


def worst_window_error(flat_errors, window: int):
    """Per example, the largest mean of ``window`` consecutive values of ``flat_errors`` [batch, samples].

    A window longer than the example is the whole example (its mean). The window sums are differences
    of running sums, not a stride-1 ``average_pool``: on a CPU the pool cost 34 µs a beat for [1024, 140]
    errors against 2.8 µs (most of the stream's scoring time); both agree to float32 rounding.
    """
    samples = flat_errors.shape[-1]
    window = max(1, int(window) if samples is None else min(int(window), int(samples)))
    sums = keras.ops.cumsum(keras.ops.pad(flat_errors, [[0, 0], [1, 0]]), axis=-1)
    return keras.ops.max((sums[:, window:] - sums[:, :-window]) / window, axis=-1)


class Autoencoder(keras.Model):
    """Base class: subclasses set ``self.encoder`` and ``self.decoder`` and define ``config_class``.

    ``domain`` says what the model reconstructs (``ECG_DOMAIN`` or ``IMAGE_DOMAIN``); ``regularized``
    says whether ``penalty`` is added to the training loss.
    """

    config_class = None
    domain = None
    regularized = False

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs, training=False):
        latent = self.encoder(inputs, training=training)
        if training and self.regularized:
            self.add_loss(self.penalty(inputs, latent))
        return self.decoder(latent, training=training)

    def penalty(self, inputs, latent=None):
        """The regularisation term added to the training loss (a scalar; zero for plain autoencoders).

        ``latent`` may pass the already computed code of ``inputs`` to avoid encoding twice.
        """
        return keras.ops.zeros((), dtype=self.compute_dtype)

    def encode(self, inputs, training=False):
        """Maps inputs to their latent code."""
        return self.encoder(inputs, training=training)

    def decode(self, latent, training=False):
        """Maps latent codes back to input space."""
        return self.decoder(latent, training=training)

    def reconstruct(self, inputs):
        """Reconstruction of ``inputs`` in inference mode."""
        return self(inputs, training=False)

    def per_sample_error(self, inputs):
        """Absolute reconstruction error, same shape as the inputs."""
        return keras.ops.abs(inputs - self.reconstruct(inputs))

    def scores(self, inputs, score_error: str = "mae") -> dict:
        """The one definition of what a model scores, used by training, evaluation and the export.

        Returns ``per_sample_error`` (absolute error, shaped like the inputs), ``reconstruction_error``
        (its mean per example) and ``anomaly_score`` (higher = more anomalous): ``score_error`` of the
        absolute errors (``"mae"``: the reconstruction error; ``"rms"``: their root mean square;
        ``"window"``: ``worst_window_error``) unless the model defines its own score on it
        (``score_from_error``), e.g. the VAE's negative ELBO.
        """
        if score_error not in SCORE_ERRORS:
            raise ValueError(f"score_error must be one of {SCORE_ERRORS}, got {score_error!r}")
        per_sample_error = self.per_sample_error(inputs)
        values = per_sample_error.shape[1:]
        width = math.prod(values) if all(size is not None for size in values) else -1
        flat = keras.ops.reshape(per_sample_error, (keras.ops.shape(per_sample_error)[0], width))
        reconstruction_error = keras.ops.mean(flat, axis=-1)
        error = reconstruction_error
        if score_error == "rms":
            error = keras.ops.sqrt(keras.ops.mean(keras.ops.square(flat), axis=-1))
        elif score_error == "window":
            error = worst_window_error(flat, SCORE_WINDOW_SAMPLES)
        return {"per_sample_error": per_sample_error, "reconstruction_error": reconstruction_error,
                "anomaly_score": self.score_from_error(inputs, error)}

    def score_from_error(self, inputs, reconstruction_error):
        """The anomaly score given the error ``scores`` measured; subclasses with their own score override this."""
        return reconstruction_error

    def anomaly_score(self, inputs, score_error: str = "mae"):
        """Anomaly score per example (see ``scores``)."""
        return self.scores(inputs, score_error)["anomaly_score"]

    def get_config(self):
        return {"config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        return cls(config_from_dict(cls.config_class, config["config"]))


def dense_encoder(input_shape: tuple, hidden_units: tuple, latent_dim: int, activation: str,
                  latent_activation: str | None) -> keras.Sequential:
    """Flatten (for multi-dimensional inputs) -> hidden Dense layers -> latent Dense layer."""
    layers = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation=activation) for units in hidden_units]
    layers.append(keras.layers.Dense(latent_dim, activation=latent_activation))
    return keras.Sequential(layers, name="encoder")


def dense_decoder(latent_dim: int, hidden_units: tuple, output_shape: tuple, activation: str,
                  output_activation: str) -> keras.Sequential:
    """Mirrored hidden Dense layers -> Dense to the flat output size -> Reshape (multi-dimensional)."""
    layers = [keras.Input((latent_dim,))]
    layers += [keras.layers.Dense(units, activation=activation) for units in reversed(hidden_units)]
    layers.append(keras.layers.Dense(math.prod(output_shape), activation=output_activation))
    if len(output_shape) > 1:
        layers.append(keras.layers.Reshape(output_shape))
    return keras.Sequential(layers, name="decoder")
