"""dVAE metrics: PSNR, code perplexity, codebook usage."""

import math

import keras
from keras import ops

from keras_clip.validation import check_positive_int


def psnr(images, reconstructions, max_value=1.0):
    """Per-image PSNR in dB, 10·log10(max² / MSE), NHWC → [B] (MSE floored at 1e-10)."""
    images = ops.cast(images, "float32")
    reconstructions = ops.cast(reconstructions, "float32")
    mse = ops.mean(ops.square(images - reconstructions), axis=(1, 2, 3))
    return 10.0 * ops.log(max_value ** 2 / ops.maximum(mse, 1e-10)) / math.log(10.0)


def code_perplexity(counts):
    """exp(entropy) of the code distribution `counts / sum(counts)` (counts: [K]); 1 … K."""
    counts = ops.cast(counts, "float32")
    p = counts / ops.maximum(ops.sum(counts), 1e-12)
    return ops.exp(-ops.sum(ops.where(p > 0, p * ops.log(ops.maximum(p, 1e-30)), 0.0)))


class LastValue(keras.metrics.Metric):
    """Reports the most recent value (e.g. the scheduled temperature); replica-safe."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable((), initializer="zeros", name="value",
                                       aggregation="only_first_replica")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.value.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)


class CodebookUsage(keras.metrics.Metric):
    """Fraction of the K codes used at least once in the most recent `window` batches.

    `update_state(counts)` takes one batch's code histogram [K] (under a distribution strategy:
    the histogram of the global batch, i.e. already summed over replicas — every replica then
    holds the same value and the first replica's is kept). A ring buffer of the last `window`
    histograms is kept; `reset_state` (e.g. at the start of each epoch) clears it.
    """

    def __init__(self, vocab_size, window=50, name="codebook_usage", **kwargs):
        super().__init__(name=name, **kwargs)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.window = check_positive_int("window", window)
        self.counts = self.add_variable((self.window, self.vocab_size), initializer="zeros",
                                        name="counts", aggregation="only_first_replica")
        self.position = self.add_variable((), initializer="zeros", dtype="int32",
                                          name="position", aggregation="only_first_replica")

    def update_state(self, counts):
        counts = ops.reshape(ops.cast(counts, self.counts.dtype), (1, self.vocab_size))
        slot = ops.mod(ops.convert_to_tensor(self.position), self.window)
        self.counts.assign(ops.slice_update(self.counts, (slot, 0), counts))
        self.position.assign(self.position + 1)

    def result(self):
        used = ops.cast(ops.sum(self.counts, axis=0) > 0, "float32")
        return ops.mean(used)

    def get_config(self):
        return dict(super().get_config(), vocab_size=self.vocab_size, window=self.window)
