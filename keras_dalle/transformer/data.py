"""Token data for the DALL·E transformer: captions → BPE ids, images → frozen dVAE tokens.

`dalle_dataset` reads any image–caption source `keras_clip.data.readers.make_clip_dataset`
reads ("shapes", img2dataset TFRecords, WebDataset tars, TSV) with images in [0, 1], then maps
each batch through the dVAE's XLA-compiled `encode`:

    {"images": float [B, S, S, 3], "token_ids": int32 [B, text_len]}
        → {"text_token_ids": int32 [B, text_len], "image_tokens": int32 [B, h, w]}

Captions are tokenized to `text_len` with the CLIP BPE (pad id 0 after EOT; for files the
in-graph `CLIPTokenizer`, for shapes the same ids computed once up front).

Example:
    >>> vae = keras.saving.load_model("dvae.keras")
    >>> ds = dalle_dataset("shapes", batch_size=16, vae=vae, text_len=16)
    >>> tokens = encode_token_arrays(ds)          # numpy, e.g. to precompute once
"""

import numpy as np
import tensorflow as tf

from keras_clip.data.readers import make_clip_dataset

__all__ = ["dalle_dataset", "encode_token_arrays", "positional_unigram_cross_entropy",
           "shuffled_captions", "token_dataset", "unigram_cross_entropy", "unigram_entropy",
           "vae_encoder_fn"]


def vae_encoder_fn(vae):
    """XLA-compiled `vae.encode` (float [B, S, S, 3] in [0, 1] → int32 [B, h, w]); the dVAE is
    only read (frozen)."""
    vae.trainable = False

    @tf.function(jit_compile=True, reduce_retracing=True)
    def encode(images):
        return vae.encode(images)

    return encode


def dalle_dataset(source, batch_size, vae, text_len, split="train", shuffle=None, seed=0,
                  num_examples=None, drop_remainder=True, tokenizer=None, **reader_kwargs):
    """Batched `{"text_token_ids", "image_tokens"}` from an image–caption source (finite: one
    epoch per iteration; see `make_clip_dataset` for `source`, `split`, `shuffle`, …)."""
    encode = vae_encoder_fn(vae)
    ds = make_clip_dataset(source, batch_size, image_size=vae.image_size, split=split,
                           shuffle=shuffle, seed=seed, drop_remainder=drop_remainder,
                           context_length=text_len, num_examples=num_examples,
                           image_format="unit", tokenizer=tokenizer, **reader_kwargs)
    counter = ds.skip_counter
    # Sequential map: the compiled encoder already uses every core.
    ds = ds.map(lambda x: {"text_token_ids": tf.cast(x["token_ids"], tf.int32),
                           "image_tokens": encode(x["images"])})
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.skip_counter = counter
    return ds


def encode_token_arrays(dataset):
    """Runs a (finite) token dataset once → dict of numpy arrays (all batches concatenated)."""
    parts = {}
    for batch in dataset:
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.numpy())
    if not parts:
        raise ValueError("the dataset yielded no batches")
    return {key: np.concatenate(values) for key, values in parts.items()}


def token_dataset(arrays, batch_size, shuffle=True, seed=0, repeat=True):
    """In-memory token arrays → batched dataset (reshuffled each pass, deterministic per seed)."""
    n = len(arrays["text_token_ids"])
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def unigram_entropy(tokens, vocab_size):
    """Entropy (nats) of the empirical unigram distribution of `tokens`: the cross-entropy of
    the best position- and context-free predictor on that data."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train_tokens, eval_tokens, vocab_size, smoothing=1.0):
    """Cross-entropy (nats) on `eval_tokens` of the training unigram distribution (add-
    `smoothing` counts, so unseen codes get a finite cost)."""
    counts = np.bincount(np.asarray(train_tokens).ravel(), minlength=vocab_size) + smoothing
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(eval_tokens).ravel()].mean())


def positional_unigram_cross_entropy(train_tokens, eval_tokens, vocab_size, smoothing=1.0):
    """Cross-entropy (nats, mean over positions and examples) on `eval_tokens` of a per-position
    unigram: each raster position's own histogram of the training tokens at that position
    (add-`smoothing` counts), with no text and no previous tokens.

    The baseline a text-conditioned model must beat to show it uses more than "what usually
    sits at this spot" (on the shapes data: background in the corners, object codes near the
    middle). train_tokens [N, ...] and eval_tokens [M, ...] int, with the same trailing shape
    (e.g. [N, h, w]); ValueError if they differ.
    """
    train = np.asarray(train_tokens).reshape(len(train_tokens), -1)
    evaluate = np.asarray(eval_tokens).reshape(len(eval_tokens), -1)
    if train.shape[1] != evaluate.shape[1]:
        raise ValueError(f"train and eval tokens have {train.shape[1]} and {evaluate.shape[1]} "
                         "positions per example: they must come from the same grid")
    positions = train.shape[1]
    counts = np.full((positions, vocab_size), float(smoothing))
    np.add.at(counts, (np.broadcast_to(np.arange(positions), train.shape), train), 1.0)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))  # (positions, V)
    return float(-logp[np.arange(positions)[None, :], evaluate].mean())


def shuffled_captions(arrays, seed=0):
    """A copy of token `arrays` whose captions (`text_token_ids` rows) are permuted among the
    examples by a seeded derangement (every example gets another example's caption: a random
    order, each taking the next one's), the images unchanged. Scoring a model on it measures
    how much its image-token loss depends on the text. ValueError for fewer than 2 examples."""
    n = len(arrays["text_token_ids"])
    if n < 2:
        raise ValueError(f"shuffling captions needs at least 2 examples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    source = np.empty(n, np.int64)
    source[order] = np.roll(order, -1)  # example order[i] takes order[i + 1]'s caption
    out = dict(arrays)
    out["text_token_ids"] = np.asarray(arrays["text_token_ids"])[source]
    return out
