"""Training callbacks for the DALL·E transformer."""

import time

import keras


class TokensPerSecond(keras.callbacks.Callback):
    """Adds `tokens_per_second` (global batch × sequence length per second of training steps)
    to the epoch logs, so `keras.callbacks.TensorBoard` placed *after* it writes it next to the
    losses (as `epoch_tokens_per_second`).

    Example:
        >>> model.fit(ds, callbacks=[TokensPerSecond(batch_size * model.sequence_length),
        ...                          keras.callbacks.TensorBoard(logdir)])
    """

    def __init__(self, tokens_per_step):
        super().__init__()
        self.tokens_per_step = int(tokens_per_step)

    def on_epoch_begin(self, epoch, logs=None):
        self._steps, self._seconds, self._start = 0, 0.0, None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._start is not None:
            self._seconds += time.perf_counter() - self._start
            self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        # The first epoch includes tracing and XLA compilation of the step.
        if logs is not None and self._seconds > 0:
            logs["tokens_per_second"] = self._steps * self.tokens_per_step / self._seconds
