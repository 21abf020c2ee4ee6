"""Held-out evaluation and TensorBoard extras for dVAE training.

* `evaluate_reconstruction(vae, images)` — PSNR of `decode(encode(x))` (the argmax tokens, i.e.
  what the transformer will see) and codebook usage over a whole (held-out) image set.
* `VAEReconstructionCallback` — after every epoch writes to TensorBoard an image grid of a fixed
  batch (originals above their reconstructions) and the held-out PSNR / codebook usage /
  perplexity, and adds the latter to the epoch logs (`heldout_psnr`, `heldout_codebook_usage`,
  `heldout_perplexity`) so History, early stopping and checkpoints can use them.

Example:
    cb = VAEReconstructionCallback("logs/dvae", images=heldout[:8], heldout=heldout)
    vae.fit(train_ds, epochs=5, callbacks=[keras.callbacks.TensorBoard("logs/dvae"), cb])
"""

import os
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_dalle.vae.losses import map_pixels, unmap_pixels

__all__ = ["as_unit_images", "evaluate_reconstruction", "image_grid", "VAEReconstructionCallback"]


def as_unit_images(images):
    """uint8 (0..255) or float (0..1) NHWC → float32 in [0, 1] (tf ops; works in tf.data)."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _batches(images, batch_size):
    """Batches of float [0, 1] images from an array, a tensor or a (batched) tf.data.Dataset of
    tensors / dicts with "images" / tuples (images first)."""
    if isinstance(images, tf.data.Dataset):
        for batch in images:
            if isinstance(batch, dict):
                batch = batch["images"]
            elif isinstance(batch, (tuple, list)):
                batch = batch[0]
            yield as_unit_images(batch)
        return
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC [N, H, W, C], got shape {images.shape}")
    for start in range(0, len(images), batch_size):
        yield as_unit_images(images[start:start + batch_size])


_RECONSTRUCT_FNS = weakref.WeakKeyDictionary()  # dVAE → its compiled reconstruction


def _reconstruct_fn(vae):
    """A cached tf.function: images → (argmax tokens, unmap(sigmoid(μ)) reconstructions)."""
    fn = _RECONSTRUCT_FNS.get(vae)
    if fn is None:
        vae.build()  # idempotent

        @tf.function(reduce_retracing=True)
        def fn(x):
            logits = vae.encoder(map_pixels(x))
            tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            maps = vae.decoder(tf.one_hot(tokens, vae.vocab_size,
                                          dtype=vae.decoder.compute_dtype))
            mu = tf.cast(maps[..., :vae.num_channels], tf.float32)
            return tokens, unmap_pixels(tf.sigmoid(mu))

        _RECONSTRUCT_FNS[vae] = fn
    return fn


def evaluate_reconstruction(vae, images, batch_size=64):
    """PSNR and codebook usage of `vae.decode(vae.encode(x))` over an image set.

    Args:
        vae: a `DiscreteVAE`.
        images: uint8 or float [0, 1] NHWC array, or a batched tf.data.Dataset (tensors, dicts
            with "images", or tuples).
        batch_size: batch size when `images` is an array.

    Returns a dict of floats: `psnr` (dB, mean over images of the per-image PSNR, max value 1),
    `psnr_of_mean_mse` (dB, from the MSE over all pixels), `codebook_usage` (fraction of the K
    codes that occur at least once), `codes_used` (their number), `perplexity` (exp-entropy of
    the code histogram over all tokens; K would be perfectly uniform) and `num_images`.
    """
    fn = _reconstruct_fn(vae)
    counts = np.zeros(vae.vocab_size, np.int64)
    psnrs, sq_err, n_values = [], 0.0, 0
    for x in _batches(images, batch_size):
        tokens, recon = fn(x)
        counts += np.bincount(tokens.numpy().ravel(), minlength=vae.vocab_size)
        err = np.square(recon.numpy() - x.numpy()).astype(np.float64)
        mse = err.reshape(len(err), -1).mean(axis=1)
        psnrs.append(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10)))
        sq_err += float(err.sum())
        n_values += err.size
    if not psnrs:
        raise ValueError("evaluate_reconstruction: no images")
    psnrs = np.concatenate(psnrs)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "psnr": float(psnrs.mean()),
        "psnr_of_mean_mse": float(10.0 * np.log10(1.0 / max(sq_err / n_values, 1e-10))),
        "codebook_usage": float(np.mean(counts > 0)),
        "codes_used": int(np.sum(counts > 0)),
        "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
        "num_images": int(len(psnrs)),
    }


def image_grid(originals, reconstructions, columns=8):
    """[N, H, W, C] originals and reconstructions → one [1, R·2H, cols·W, C] grid image in
    [0, 1]: each band of two rows shows `columns` originals above their reconstructions."""
    originals = np.clip(np.asarray(originals, np.float32), 0.0, 1.0)
    reconstructions = np.clip(np.asarray(reconstructions, np.float32), 0.0, 1.0)
    n, h, w, c = originals.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    pad = rows * columns - n
    if pad:
        blank = np.ones((pad, h, w, c), np.float32)
        originals = np.concatenate([originals, blank])
        reconstructions = np.concatenate([reconstructions, blank])
    pairs = np.stack([originals.reshape(rows, columns, h, w, c),
                      reconstructions.reshape(rows, columns, h, w, c)], axis=1)
    # (rows, 2, columns, h, w, c) → (rows, 2, h, columns, w, c) → (rows·2·h, columns·w, c)
    grid = pairs.transpose(0, 1, 3, 2, 4, 5).reshape(rows * 2 * h, columns * w, c)
    return grid[None]


class VAEReconstructionCallback(keras.callbacks.Callback):
    """Each epoch: TensorBoard image grid (originals vs reconstructions) and held-out usage.

    Args:
        logdir: TensorBoard log directory; summaries go to `logdir/<subdir>` (next to the
            `train` / `validation` runs of `keras.callbacks.TensorBoard`).
        images: a fixed batch (uint8 or float [0, 1], NHWC) to reconstruct every epoch; at most
            `max_images` are used.
        heldout: optional held-out images (array or batched dataset) for
            `evaluate_reconstruction`: PSNR, codebook usage and perplexity are written as
            scalars `heldout/psnr`, `heldout/codebook_usage`, `heldout/perplexity` and added to
            the epoch logs as `heldout_psnr`, … (put this callback before TensorBoard / History
            consumers that should see them; History always does).
        batch_size: batch size for evaluating `heldout` arrays.
        every_n_epochs: write every n epochs (and always after the last epoch of fit).
        subdir: run name under `logdir` ("reconstructions").
        max_images, columns: grid size.

    The reconstructions are `decode(encode(x))`: argmax tokens, no gumbel noise.
    """

    def __init__(self, logdir, images, heldout=None, batch_size=64, every_n_epochs=1,
                 subdir="reconstructions", max_images=16, columns=8):
        super().__init__()
        self.logdir = os.fspath(logdir)
        self.images = np.asarray(images)[:max_images]
        if self.images.ndim != 4 or len(self.images) == 0:
            raise ValueError(f"images must be a non-empty NHWC batch, got shape "
                             f"{self.images.shape}")
        self.heldout = heldout
        self.batch_size = int(batch_size)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.subdir = subdir
        self.columns = int(columns)
        self._writer = None
        self._last_epoch_written = None
        self.last_stats = None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.logdir, self.subdir))
        return self._writer

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs") if self.params else None

    def on_epoch_end(self, epoch, logs=None):
        last = self._epochs is not None and epoch + 1 >= self._epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        self.write(epoch, logs)

    def write(self, step, logs=None):
        """Writes the grid (and held-out stats) at `step`; returns the held-out stats or None."""
        originals = as_unit_images(self.images)
        _, recon = _reconstruct_fn(self.model)(originals)
        grid = image_grid(originals.numpy(), recon.numpy(), columns=self.columns)
        stats = None
        if self.heldout is not None:
            stats = evaluate_reconstruction(self.model, self.heldout, self.batch_size)
        with self.writer.as_default():
            tf.summary.image("reconstructions", grid, step=step,
                             description="top: originals, bottom: decode(encode(x))")
            if stats is not None:
                for key in ("psnr", "codebook_usage", "perplexity"):
                    tf.summary.scalar(f"heldout/{key}", stats[key], step=step)
        self.writer.flush()
        if stats is not None and logs is not None:
            for key in ("psnr", "codebook_usage", "perplexity"):
                logs[f"heldout_{key}"] = stats[key]
        self.last_stats = stats
        self._last_epoch_written = step
        return stats

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
