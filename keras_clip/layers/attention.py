"""Multi-head attention written once for CLIP's towers, the ResNet attention pool and DALL-E,
with an optional key/value cache for autoregressive decoding (the design of keras-hub's
``CachedMultiHeadAttention``)."""

import keras
import numpy as np
from keras import ops

from keras_clip.validation import is_concrete


def dot_product_attention(q, k, v, mask=None):
    """Scaled dot-product attention core: ``softmax(q kᵀ / √d) v``.

    Args:
        q: (B, heads, Tq, d); k, v: (B, heads, Tk, d).
        mask: optional boolean, broadcastable to (B, heads, Tq, Tk); True = may attend.

    Returns:
        (B, heads, Tq, d).
    """
    head_dim = q.shape[-1]
    # Scale q before the product, as torch's multi_head_attention_forward does.
    q = q * ops.cast(head_dim**-0.5, q.dtype)
    logits = ops.einsum("bhqd,bhkd->bhqk", q, k)  # (B, heads, Tq, Tk)
    # The softmax runs in float32 even under mixed precision (as OpenAI's fp16 CLIP does).
    logits = ops.cast(logits, "float32")
    if mask is not None:
        logits = ops.where(mask, logits, ops.full_like(logits, -1e30))
    weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
    return ops.einsum("bhqk,bhkd->bhqd", weights, v)


def _length(x, axis):
    """The static size of ``x`` along ``axis``, or its dynamic size when unknown."""
    size = x.shape[axis]
    return ops.shape(x)[axis] if size is None else size


def write_cache(cache, update, index):
    """``cache`` with its positions [index, index + L) replaced by ``update``.

    Args:
        cache: (B, heads, S, d), the keys or the values of a cache.
        update: (B, heads, L, d), L ≤ S (cast to the cache's dtype).
        index: int or int32 scalar tensor, 0 ≤ index ≤ S − L (not checked here: see
            `MultiHeadAttention`).

    Returns:
        (B, heads, S, d).

    keras-hub writes its cache with ``dynamic_update_slice``; on TensorFlow, Keras'
    ``ops.slice_update`` is the XLA-only ``XlaDynamicUpdateSlice`` op, which graphs run without
    XLA (the TF Serving export) cannot hold. A scatter of the L rows is a core op and, under
    XLA, updates the loop's buffer in place like ``dynamic_update_slice``.
    """
    heads, length = cache.shape[1], _length(update, 2)
    positions = ops.cast(index, "int32") + ops.arange(length, dtype="int32")  # (L,)
    grid = ops.meshgrid(ops.arange(ops.shape(cache)[0], dtype="int32"),
                        ops.arange(heads, dtype="int32"), positions, indexing="ij")
    indices = ops.stack(grid, axis=-1)  # (B, heads, L, 3): (batch, head, position) of each row
    return ops.scatter_update(cache, indices, ops.cast(update, cache.dtype))


@keras.saving.register_keras_serializable(package="keras_clip")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with separate q/k/v projections and an optional key/value cache.

    The attention core (what the mask or sparse pattern changes) is ``dot_product_attention``;
    callers pass a boolean mask. ``output_dim`` lets the output projection change the width,
    as CLIP's ResNet AttentionPool2d does. ``attention_kernel`` replaces the core for
    self-attention: any Keras-serializable callable ``kernel(q, k, v) -> out`` on
    (B, heads, T, d) tensors (DALL-E's row / column / conv patterns are such kernels). A kernel
    that is to be used with a cache also provides ``kernel.mask_rows(start, length)``: a bool
    (length, S) tensor, the rows of its mask for the query positions start … start+length−1.

    Args:
        num_heads: int, heads; the input width must be divisible by it (ValueError in build).
        output_dim: width of the output projection (default: the input width).
        use_bias: bias in the four projections.
        attention_kernel: optional kernel as above (or its serialized config).

    Call arguments:
        query: float (B, L, width).
        context: float (B, Lk, context_width) keys/values source; default ``query``.
        attention_mask: bool broadcastable to (B, heads, L, Tk), True = may attend; Tk = Lk
            without a cache, S with one (the mask rows of the query positions over every cache
            position). Not allowed together with ``attention_kernel`` (ValueError).
        cache: optional pair ``(keys, values)`` of (B, heads, S, head_dim) tensors in the
            compute dtype (`empty_cache`), S static. keras-hub keeps one (B, 2, S, heads,
            head_dim) tensor; here keys and values are two tensors in the attention core's
            layout because under XLA on CPU reading them out of one tensor costs a copy of
            both per layer and step (BENCHMARKS.md, "Key/value cache layout").
        cache_update_index: int or int32 scalar tensor, with a cache only. The keys/values of
            ``context`` are written at positions [index, index + Lk) (prefill: many positions,
            decoding: one; the same call) and the queries attend to all S cached positions
            under the mask, which must hide the positions not written yet. None with a cache:
            the cache is read as it is and ``context`` is not projected (keras-hub's static
            cache; not with a kernel, whose mask rows need the positions).

    Returns:
        float (B, L, output_dim or width) without a cache; with one ``(output, (keys,
        values))``, the updated cache.

    Raises:
        ValueError: a mask with a kernel; ``cache_update_index`` without a cache; a cache that
            is not a pair of (B, num_heads, S, head_dim) tensors; an index that is not an
            integer, or outside [0, S − Lk] (checked when its value is known: a Python int or
            an eager tensor; inside a compiled function it is the caller's contract); a mask
            whose last axis is not S; a kernel without ``mask_rows`` used with a cache.

    Cached decoding follows keras-hub's ``CachedMultiHeadAttention`` (the argument names, the
    write-then-attend semantics, ``(output, cache)`` returned); without a cache the layer
    computes exactly what it did before caches existed.

    Example:
        >>> attn = MultiHeadAttention(num_heads=8)
        >>> y = attn(x)                       # self-attention, x: (B, T, 512)
        >>> y = attn(x[:, :1], context=x)     # single query against all tokens
        >>> cache = attn.empty_cache(B, T)    # (keys, values), each (B, 8, T, 64)
        >>> y, cache = attn(x[:, :4], attention_mask=causal[:4], cache=cache,
        ...                 cache_update_index=0)                       # prefill 4 positions
        >>> y, cache = attn(x[:, 4:5], attention_mask=causal[4:5], cache=cache,
        ...                 cache_update_index=4)                       # one decoding step
    """

    def __init__(self, num_heads, output_dim=None, use_bias=True, attention_kernel=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.output_dim = output_dim
        self.use_bias = use_bias
        if isinstance(attention_kernel, dict):
            attention_kernel = keras.saving.deserialize_keras_object(attention_kernel)
        self.attention_kernel = attention_kernel

    def build(self, query_shape, context_shape=None):
        width = query_shape[-1]
        context_width = width if context_shape is None else context_shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        self.head_dim = width // self.num_heads

        def dense(name, units, in_dim):
            layer = keras.layers.Dense(units, use_bias=self.use_bias, name=name, dtype=self.dtype_policy)
            layer.build((None, in_dim))
            return layer

        self.query = dense("query", width, width)
        self.key = dense("key", width, context_width)
        self.value = dense("value", width, context_width)
        self.out = dense("out", self.output_dim or width, width)
        self.built = True

    def _split_heads(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (b, t, self.num_heads, self.head_dim))  # (B, T, heads, d)
        return ops.transpose(x, (0, 2, 1, 3))  # (B, heads, T, d)

    def call(self, query, context=None, attention_mask=None, cache=None,
             cache_update_index=None):
        if cache is not None:
            return self._call_cached(query, context, attention_mask, cache, cache_update_index)
        if cache_update_index is not None:
            raise ValueError("cache_update_index is set but cache is None: pass both or neither "
                             f"(got cache_update_index={cache_update_index!r})")
        context = query if context is None else context
        q = self._split_heads(self.query(query))
        k = self._split_heads(self.key(context))
        v = self._split_heads(self.value(context))
        if self.attention_kernel is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask cannot be combined with an attention_kernel; "
                                 "the kernel defines which positions attend")
            y = self.attention_kernel(q, k, v)  # (B, heads, Tq, d)
        else:
            y = dot_product_attention(q, k, v, attention_mask)  # (B, heads, Tq, d)
        y = ops.transpose(y, (0, 2, 1, 3))  # (B, Tq, heads, d)
        b, t = ops.shape(y)[0], ops.shape(y)[1]
        y = ops.reshape(y, (b, t, self.num_heads * self.head_dim))  # (B, Tq, width)
        return self.out(y)

    def empty_cache(self, batch_size, length):
        """A zeroed cache ``(keys, values)`` for ``length`` positions: two (batch_size, heads,
        length, head_dim) tensors in the compute dtype. ``batch_size``: int or int32 scalar
        tensor. Raises ValueError before the layer is built (head_dim is not known)."""
        if not self.built:
            raise ValueError(f"{self.name}: build the layer before asking for its cache")
        shape = (batch_size, self.num_heads, length, self.head_dim)
        return ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype)

    def _check_cache(self, cache, batch, length, index):
        """S of a valid ``cache``; ValueError unless it is a (keys, values) pair of
        (B, heads, S, head_dim) tensors and ``index`` is an integer that fits L positions."""
        expected = (batch, self.num_heads, None, self.head_dim)
        shapes = [tuple(c.shape) if hasattr(c, "shape") else None for c in cache] \
            if isinstance(cache, (tuple, list)) else None
        if not shapes or len(shapes) != 2 or None in shapes or shapes[0] != shapes[1] \
                or len(shapes[0]) != 4 or shapes[0][2] is None \
                or any(e is not None and s is not None and s != e
                       for s, e in zip(shapes[0], expected)):
            got = shapes if shapes else type(cache).__name__ + (
                f" of shape {tuple(cache.shape)}" if hasattr(cache, "shape") else "")
            raise ValueError(
                f"{self.name}: cache must be a pair (keys, values) of two tensors of shape "
                f"(B, heads, S, head_dim) = ({batch or 'B'}, {self.num_heads}, S, "
                f"{self.head_dim}) with a static S (see empty_cache), got {got}")
        size = shapes[0][2]
        if index is None:
            return size
        if is_concrete(index):
            value = np.asarray(index)
            if value.ndim or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{self.name}: cache_update_index must be an integer scalar, "
                                 f"got {index!r}")
            if isinstance(length, int) and not 0 <= int(value) <= size - length:
                raise ValueError(
                    f"{self.name}: cache_update_index must be in [0, {size - length}] to write "
                    f"{length} position(s) into a cache of S = {size} positions, got {int(value)}")
        elif "int" not in keras.backend.standardize_dtype(index.dtype):
            raise ValueError(f"{self.name}: cache_update_index must be an integer scalar, got "
                             f"dtype {index.dtype}")
        return size

    def _call_cached(self, query, context, attention_mask, cache, index):
        source = query if context is None else context
        length = _length(query, 1)
        size = self._check_cache(cache, query.shape[0], _length(source, 1), index)
        kernel = self.attention_kernel
        if kernel is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask cannot be combined with an attention_kernel; "
                                 "the kernel defines which positions attend")
            if index is None:
                raise ValueError(f"{self.name}: an attention_kernel needs cache_update_index "
                                 "(its mask rows depend on the query positions)")
            if not callable(getattr(kernel, "mask_rows", None)):
                raise ValueError(f"{self.name}: attention_kernel {kernel!r} has no "
                                 "mask_rows(start, length), so it cannot be used with a cache")
            attention_mask = kernel.mask_rows(index, length)  # (L, S)
        if attention_mask is not None and attention_mask.shape[-1] not in (None, size):
            raise ValueError(f"{self.name}: with a cache, attention_mask must have one column per "
                             f"cache position (S = {size}), got shape {tuple(attention_mask.shape)}")
        keys, values = cache
        if index is not None:
            keys = write_cache(keys, self._split_heads(self.key(source)), index)  # (B, heads, S, d)
            values = write_cache(values, self._split_heads(self.value(source)), index)
        q = self._split_heads(self.query(query))  # (B, heads, L, d)
        y = dot_product_attention(q, keys, values, attention_mask)  # (B, heads, L, d)
        y = ops.transpose(y, (0, 2, 1, 3))  # (B, L, heads, d)
        y = ops.reshape(y, (ops.shape(y)[0], length, self.num_heads * self.head_dim))  # (B, L, width)
        return self.out(y), (keys, values)

    def get_config(self):
        config = super().get_config()
        kernel = self.attention_kernel
        config.update(num_heads=self.num_heads, output_dim=self.output_dim, use_bias=self.use_bias,
                      attention_kernel=None if kernel is None
                      else keras.saving.serialize_keras_object(kernel))
        return config
