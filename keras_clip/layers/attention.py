"""Multi-head attention written once for CLIP's towers, the ResNet attention pool and DALL-E."""

import keras
from keras import ops


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


@keras.saving.register_keras_serializable(package="keras_clip")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with separate q/k/v projections.

    The attention core (what the mask or sparse pattern changes) is ``dot_product_attention``;
    callers pass a boolean mask. ``output_dim`` lets the output projection change the width,
    as CLIP's ResNet AttentionPool2d does. ``attention_kernel`` replaces the core for
    self-attention: any Keras-serializable callable ``kernel(q, k, v) -> out`` on
    (B, heads, T, d) tensors (DALL-E's row / column / conv patterns are such kernels).

    Example:
        >>> attn = MultiHeadAttention(num_heads=8)
        >>> y = attn(x)                       # self-attention, x: (B, T, 512)
        >>> y = attn(x[:, :1], context=x)     # single query against all tokens
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
        x = ops.reshape(x, (b, t, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))  # (B, heads, T, d)

    def call(self, query, context=None, attention_mask=None):
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
        y = ops.transpose(y, (0, 2, 1, 3))
        b, t = ops.shape(y)[0], ops.shape(y)[1]
        y = ops.reshape(y, (b, t, self.num_heads * self.head_dim))
        return self.out(y)

    def get_config(self):
        config = super().get_config()
        kernel = self.attention_kernel
        config.update(num_heads=self.num_heads, output_dim=self.output_dim, use_bias=self.use_bias,
                      attention_kernel=None if kernel is None
                      else keras.saving.serialize_keras_object(kernel))
        return config
