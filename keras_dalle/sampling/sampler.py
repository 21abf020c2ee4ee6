"""DALL·E sampling: the whole autoregressive loop as one XLA-compiled `tf.while_loop`.

Cached path (`use_cache=True`): one *prefill* call of `DALLE.call_with_cache` runs the known
prefix (the text, the start-of-image token and any image prefix) through every block and writes
each layer's keys and values into a preallocated, static-shape cache per layer (a pair of
(B, heads, T, d) tensors, `DALLE.empty_cache`) — every layer type (row, column, conv, full) is
cached. Each later step is one more `call_with_cache` with one token at its stream position:
the layers write its keys and values into their caches and attend with the rows of their own
pattern mask (`PatternAttention.mask_rows`). Nothing is recomputed, and the sampler calls only
the model's public methods (the design of keras-hub's ``CachedMultiHeadAttention`` and
``call_with_cache``).

Uncached path (`use_cache=False`, the reference): every step runs the full model over the whole
stream (future positions hold placeholder tokens, which causality keeps out of the result) and
reads the logits of the current position. Both paths draw step j's sample with Gumbel-max
noise that is a pure function of (seed, j, row, token), so greedy decoding — and, up to float
rounding of the logits, seeded sampling — gives identical tokens, with or without XLA.

Example:
    >>> tokens = sample_image_tokens(model, text_ids, num_samples=4, seed=0)   # [B, 4, h, w]
"""

import weakref

import numpy as np
import tensorflow as tf

from keras_clip.validation import check_positive_int

__all__ = ["sample_image_tokens", "filter_logits"]


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """float32 logits [B, V] → tempered logits with everything outside top-k / top-p at -inf.

    ``temperature == 0`` means greedy: only the arg-max survives.
    """
    logits = tf.cast(logits, tf.float32)
    neg = tf.fill(tf.shape(logits), tf.constant(-np.inf, tf.float32))
    if temperature == 0:
        top = tf.reduce_max(logits, axis=-1, keepdims=True)
        return tf.where(logits >= top, tf.zeros_like(logits), neg)
    logits = logits / temperature
    if top_k is not None:
        kth = tf.math.top_k(logits, k=int(top_k)).values[:, -1:]  # [B, 1]
        logits = tf.where(logits < kth, neg, logits)
    if top_p is not None:
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
        probs = tf.nn.softmax(sorted_logits, axis=-1)
        before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of the better tokens
        kept = tf.where(before < top_p, sorted_logits, tf.fill(tf.shape(logits), np.inf))
        threshold = tf.reduce_min(kept, axis=-1, keepdims=True)  # the worst kept logit
        logits = tf.where(logits < threshold, neg, logits)
    return logits


def _mix32(x):
    """A 32-bit integer hash (lowbias32): uint32 → well-mixed uint32."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _gumbel_noise(shape, seed, step):
    """Gumbel(0, 1) noise [B, V] that is a pure function of (seed, step, position).

    Counter-based integer hashing rather than tf.random's stateless ops: those give different
    numbers under XLA and in plain TF graphs, and the same seed must give the same image in the
    XLA-compiled Python loop and in the (XLA-free) TF Serving export.
    """
    key = _mix32(_mix32(tf.cast(seed, tf.uint32))
                 + tf.cast(step, tf.uint32) * tf.constant(0x9E3779B9, tf.uint32))
    index = tf.reshape(tf.range(tf.reduce_prod(shape)), shape)
    bits = _mix32(_mix32(tf.bitwise.bitwise_xor(tf.cast(index, tf.uint32), key)) + key)
    uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) * 2.0**-24  # (0, 1)
    return -tf.math.log(-tf.math.log(uniform))


def _draw(logits, seed, step, temperature, top_k, top_p):
    """One int32 sample [B] per row of logits (Gumbel-max), determined by (seed, step)."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    noise = _gumbel_noise(tf.shape(filtered), seed, step)
    return tf.argmax(filtered + noise, axis=-1, output_type=tf.int32)


class _Sampler:
    """The compiled prefill + decode loop for one model and one (batch, prefix) shape."""

    def __init__(self, model):
        self.model = model
        self.compiled = {}  # (use_cache, xla, temperature, top_k, top_p) → tf.function

    # --- cached ---------------------------------------------------------------------------
    def run_cached(self, text, image_prefix, seed, temperature, top_k, top_p):
        """int32 image tokens [B, N] for text [B, n] and a raster prefix [B, P] (P static)."""
        m = self.model
        batch, prefix_len, total = tf.shape(text)[0], image_prefix.shape[1], m.num_image_tokens
        # Prefill: the text, the start-of-image token and the prefix, written at position 0.
        prompt = m.stream_token_ids(text, image_prefix)  # [B, n + 1 + P]
        logits, _, cache = m.call_with_cache(prompt, m.empty_cache(batch), 0)
        first = _draw(logits[:, -1], seed, tf.constant(prefix_len), temperature, top_k, top_p)
        tokens = tf.concat([image_prefix, first[:, None],
                            tf.zeros([batch, total - prefix_len - 1], tf.int32)], axis=1)

        def body(j, tokens, cache):
            # Image token j is predicted at stream position n + j, whose input is token j − 1.
            previous = tf.gather(tokens, tf.reshape(j - 1, [1]), axis=1)  # [B, 1]
            logits, _, cache = m.call_with_cache(previous, cache, m.text_len + j)
            token = _draw(logits[:, 0], seed, j, temperature, top_k, top_p)
            tokens = tf.where(tf.range(total)[None] == j, token[:, None], tokens)
            return j + 1, tokens, cache

        _, tokens, _ = tf.while_loop(lambda j, *_: j < total, body,
                                     (tf.constant(prefix_len + 1), tokens, cache))
        return tokens

    # --- uncached (reference) ---------------------------------------------------------------
    def run_uncached(self, text, image_prefix, seed, temperature, top_k, top_p):
        m = self.model
        batch, prefix_len, total = tf.shape(text)[0], image_prefix.shape[1], m.num_image_tokens
        tokens = tf.concat([image_prefix, tf.zeros([batch, total - prefix_len], tf.int32)], axis=1)

        def body(j, tokens):
            _, image_logits = m.logits(text, tokens)  # the whole stream, every step
            token = _draw(image_logits[:, j], seed, j, temperature, top_k, top_p)
            tokens = tf.where(tf.range(total)[None] == j, token[:, None], tokens)
            return j + 1, tokens

        _, tokens = tf.while_loop(lambda j, *_: j < total, body,
                                  (tf.constant(prefix_len), tokens))
        return tokens


# What the sampler calls on the model. Checked by interface: keras_dalle.transformer.model imports
# this package (DALLE.generate), so importing DALLE here would be an import cycle.
_DALLE_INTERFACE = ("text_len", "text_vocab_size", "image_vocab_size", "num_image_tokens",
                    "grid_height", "grid_width", "check_inputs", "logits", "call_with_cache",
                    "stream_token_ids", "empty_cache")


def describe(value):
    """A short description of ``value`` for error messages: its type (and a path's text)."""
    kind = type(value).__name__
    return f"{kind} ({value!r})" if isinstance(value, str) else kind


def check_model(model):
    """``model`` if it is a `keras_dalle.DALLE` (has its sampling interface); else TypeError."""
    if not all(hasattr(model, name) for name in _DALLE_INTERFACE):
        raise TypeError(f"model must be a keras_dalle.DALLE, got {describe(model)}")
    return model


def check_seed(seed):
    """``int(seed)`` for an integer seed that fits int32; else ValueError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
            not -2**31 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [-2**31, 2**31), got {seed!r}")
    return int(seed)


def _check_prefix(image_prefix_tokens, batch, width):
    """int32 [batch, P] raster prefix from [batch, P] or [batch, rows, width] integer tokens."""
    prefix = np.asarray(image_prefix_tokens)
    shape = prefix.shape
    if not (len(shape) == 2 and shape[0] == batch) and \
            not (len(shape) == 3 and shape[0] == batch and shape[2] == width):
        raise ValueError(f"image_prefix_tokens must have shape [B, P] or [B, rows, {width}] with "
                         f"B = {batch} (the number of prompts; each prompt's samples share its "
                         f"prefix) and {width} the grid width, got shape {shape}")
    if prefix.size and (prefix.dtype == bool or not np.issubdtype(prefix.dtype, np.integer)):
        raise ValueError(f"image_prefix_tokens must be integer token ids, got dtype "
                         f"{prefix.dtype}")
    return prefix.reshape(batch, -1).astype(np.int32)


def sample_image_tokens(model, text_token_ids, num_samples=1, temperature=1.0, top_k=None,
                        top_p=None, seed=0, image_prefix_tokens=None, use_cache=True, xla=True):
    """Sample image tokens [B, num_samples, h, w] (int32) for text ids [B, text_len].

    Args:
        model: a `keras_dalle.DALLE`.
        text_token_ids: int [B, text_len] (e.g. `keras_clip.tokenize(texts, model.text_len)`).
        num_samples: samples per prompt; the batch is prompts × samples.
        temperature: softmax temperature; 0 = greedy.
        top_k, top_p: optional nucleus / top-k filtering.
        seed: int (int32 range); the same seed gives the same tokens.
        image_prefix_tokens: optional int [B, P] or [B, rows, w] raster tokens that prime the
            image (completion), one prefix per prompt (B = the number of prompts, w the grid
            width; any other shape is a ValueError); the rest is sampled.
        use_cache: the cached loop (default) or the recompute-everything reference path.
        xla: compile the loop with XLA (`tf.function(jit_compile=True)`).
    """
    check_model(model)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= int(top_k) <= model.image_vocab_size:
        raise ValueError(f"top_k must be in [1, {model.image_vocab_size}], got {top_k}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    num_samples = check_positive_int("num_samples", num_samples)
    seed = check_seed(seed)
    text = np.asarray(text_token_ids)
    text, _ = model.check_inputs({"text_token_ids": text, "image_tokens": np.zeros(
        (len(text), model.num_image_tokens), np.int32)})
    batch = int(text.shape[0])
    if image_prefix_tokens is None:
        prefix = np.zeros((batch, 0), np.int32)
    else:
        prefix = _check_prefix(image_prefix_tokens, batch, model.grid_width)
        if prefix.shape[1] >= model.num_image_tokens:
            raise ValueError(f"image_prefix_tokens must hold fewer than {model.num_image_tokens} "
                             f"tokens, got {prefix.shape[1]}")
        if prefix.size and (prefix.min() < 0 or prefix.max() >= model.image_vocab_size):
            raise ValueError(f"image_prefix_tokens must be in [0, {model.image_vocab_size}), got "
                             f"min {prefix.min()} max {prefix.max()}")
    # prompts × samples: sample s of prompt b is row b·num_samples + s
    text = tf.repeat(text, num_samples, axis=0)
    prefix = tf.repeat(tf.constant(prefix), num_samples, axis=0)
    sampler = get_sampler(model)
    fn = sampler.run_cached if use_cache else sampler.run_uncached
    key = (use_cache, xla, float(temperature), top_k, top_p)
    compiled = sampler.compiled
    if key not in compiled:
        compiled[key] = tf.function(
            lambda t, p, s: fn(t, p, s, float(temperature), top_k, top_p), jit_compile=xla)
    tokens = compiled[key](text, prefix, tf.constant(int(seed), tf.int32))
    return tf.reshape(tokens, (batch, num_samples, model.grid_height, model.grid_width)).numpy()


_SAMPLERS = weakref.WeakKeyDictionary()  # model → its sampler (and compiled loops)


def get_sampler(model):
    """The sampler of ``model`` (created once per model and kept while the model lives)."""
    sampler = _SAMPLERS.get(model)
    if sampler is None:
        sampler = _SAMPLERS[model] = _Sampler(model)
    return sampler
