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


class SampleGrid(keras.callbacks.Callback):
    """Writes a TensorBoard image grid of samples for fixed prompts every ``every`` epochs.

    One image per prompt: its ``num_samples`` samples side by side (cached XLA sampling with a
    fixed seed, so epochs are comparable), decoded by the frozen ``vae``.

    Example:
        >>> model.fit(ds, callbacks=[SampleGrid(["a large red circle"], vae, "runs/dalle")])
    """

    def __init__(self, prompts, vae, logdir, num_samples=4, every=1, seed=0, temperature=1.0):
        super().__init__()
        self.prompts = list(prompts)
        self.vae = vae
        self.logdir = logdir
        self.num_samples = int(num_samples)
        self.every = int(every)
        self.seed = int(seed)
        self.temperature = float(temperature)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        import numpy as np
        import tensorflow as tf

        from keras_dalle.sampling.pipeline import generate

        images = generate(self.model, self.prompts, vae=self.vae, num_samples=self.num_samples,
                          seed=self.seed, temperature=self.temperature)["images"]
        rows = np.concatenate(list(np.moveaxis(images, 1, 0)), axis=2)  # [P, H, S·W, 3]
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.logdir}/samples")
        with self._writer.as_default():
            for prompt, row in zip(self.prompts, rows):
                tf.summary.image(f"samples/{prompt}", np.clip(row, 0, 1)[None], step=epoch)
            self._writer.flush()
