"""Pre-LN residual attention block and a stack of them (CLIP text/vision, DALL-E)."""

import functools

import keras
import tensorflow as tf
from keras import ops

from keras_clip.layers.attention import MultiHeadAttention
from keras_clip.layers.layer_normalization import LayerNorm


def quick_gelu(x):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * ops.sigmoid(1.702 * x)


def get_activation(name):
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":  # torch nn.GELU(): the exact erf form
        return lambda x: ops.gelu(x, approximate=False)
    raise ValueError(f"Unknown activation {name!r}; expected 'quick_gelu' or 'gelu'")


@functools.cache
def fused_activation(name):
    """`get_activation(name)` as a ``tf.function(jit_compile=True)``: XLA fuses its element-wise
    ops into one loop forward and one backward. Used in training only (a SavedModel or TFLite
    export never contains it). Kept at module level so no layer tracks it.

    Why: TensorFlow runs each element-wise op of the activation and of its gradient as its own
    pass over the (B, L, 4·width) hidden layer, in bfloat16 through Eigen's scalar conversions.
    Measured on this 2-core machine, the 24 QuickGELUs of a ViT-B/32 CLIP training step at batch
    16 (forward + backward): float32 73 ms vs 88 ms, mixed_bfloat16 89 ms vs 162 ms
    (`benchmarks/clip_elementwise.py`, BENCHMARKS.md)."""
    return tf.function(get_activation(name), jit_compile=True, reduce_retracing=True)


def layer_norm(name, epsilon, dtype_policy=None):
    # torch's default epsilon (1e-5), not Keras' (1e-3).
    return LayerNorm(epsilon=epsilon, name=name, dtype=dtype_policy)


@keras.saving.register_keras_serializable(package="keras_clip")
class ResidualAttentionBlock(keras.layers.Layer):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` with a ``mlp_ratio``-wide hidden layer.

    Args:
        width: int, the residual width; num_heads: int, divides ``width``.
        mlp_ratio: hidden width of the MLP over ``width``; activation: "quick_gelu" or "gelu".
        layer_norm_epsilon: float; attention_kernel: optional, see `MultiHeadAttention`.

    Call arguments:
        x: float (B, L, width).
        attention_mask: bool broadcastable to (B, heads, L, L), or (…, L, S) with a cache.
        cache, cache_update_index: the attention's key/value cache, a pair ``(keys, values)``
            of (B, heads, S, head_dim) tensors (`empty_cache`), and where to write this call's
            L positions; see `MultiHeadAttention` (whose semantics follow keras-hub's
            ``CachedMultiHeadAttention``). Prefill (L > 1) and single-step decoding (L = 1) are
            the same call.

    Returns:
        float (B, L, width); with a cache ``(output, updated_cache)``.

    Raises:
        ValueError: from `MultiHeadAttention` (bad cache shape or index, a mask with a kernel).

    Example:
        >>> block = ResidualAttentionBlock(width=512, num_heads=8)
        >>> y = block(x, attention_mask=causal)   # x: (B, T, 512)
        >>> y, cache = block(x[:, t:t + 1], attention_mask=causal[t:t + 1],
        ...                  cache=cache, cache_update_index=t)   # block.empty_cache(B, T)
    """

    def __init__(self, width, num_heads, mlp_ratio=4.0, activation="quick_gelu",
                 layer_norm_epsilon=1e-5, attention_kernel=None, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self._act = get_activation(activation)
        policy = self.dtype_policy
        self.ln_1 = layer_norm("ln_1", layer_norm_epsilon, policy)
        # The attention layer owns (and serializes) the kernel; see MultiHeadAttention.
        self.attn = MultiHeadAttention(num_heads, attention_kernel=attention_kernel, name="attn",
                                       dtype=policy)
        self.attention_kernel = self.attn.attention_kernel
        self.ln_2 = layer_norm("ln_2", layer_norm_epsilon, policy)
        self.c_fc = keras.layers.Dense(int(width * mlp_ratio), name="c_fc", dtype=policy)
        self.c_proj = keras.layers.Dense(width, name="c_proj", dtype=policy)

    def build(self, input_shape):
        shape = (None, None, self.width)
        self.ln_1.build(shape)
        self.attn.build(shape)
        self.ln_2.build(shape)
        self.c_fc.build(shape)
        self.c_proj.build((None, None, int(self.width * self.mlp_ratio)))
        self.built = True

    def empty_cache(self, batch_size, length):
        """A zeroed ``(keys, values)`` cache for ``length`` positions (see
        `MultiHeadAttention.empty_cache`)."""
        return self.attn.empty_cache(batch_size, length)

    def call(self, x, attention_mask=None, cache=None, cache_update_index=None, training=None):
        if cache is None:
            # Training runs the activation as one XLA kernel (see `fused_activation`).
            act = fused_activation(self.activation) if training else self._act
            x = x + self.attn(self.ln_1(x), attention_mask=attention_mask,
                              cache_update_index=cache_update_index)
            return x + self.c_proj(act(self.c_fc(self.ln_2(x))))
        y, cache = self.attn(self.ln_1(x), attention_mask=attention_mask, cache=cache,
                             cache_update_index=cache_update_index)
        x = x + y
        return x + self.c_proj(self._act(self.c_fc(self.ln_2(x)))), cache

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                      activation=self.activation, layer_norm_epsilon=self.layer_norm_epsilon,
                      attention_kernel=self.attn.get_config()["attention_kernel"])
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class Transformer(keras.layers.Layer):
    """A stack of ``num_layers`` ResidualAttentionBlocks sharing one attention mask.

    Call arguments:
        x: float (B, L, width); attention_mask: as `ResidualAttentionBlock`.
        cache: optional list of ``num_layers`` caches, one ``(keys, values)`` pair of
            (B, heads, S, head_dim) tensors per block (`empty_cache`);
        cache_update_index: where this call's L positions go (see `MultiHeadAttention`).

    Returns:
        float (B, L, width); with caches ``(output, list of updated caches)``.

    Raises:
        ValueError: a cache list whose length is not ``num_layers``; the blocks' errors.

    Example:
        >>> t = Transformer(width=512, num_layers=12, num_heads=8)
        >>> y = t(x, attention_mask=None)
    """

    def __init__(self, width, num_layers, num_heads, mlp_ratio=4.0, activation="quick_gelu",
                 layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.resblocks = [
            ResidualAttentionBlock(width, num_heads, mlp_ratio, activation, layer_norm_epsilon,
                                   name=f"resblocks_{i}", dtype=self.dtype_policy)
            for i in range(num_layers)
        ]

    def build(self, input_shape):
        for block in self.resblocks:
            block.build(input_shape)
        self.built = True

    def empty_cache(self, batch_size, length):
        """One zeroed ``(keys, values)`` cache per block, for ``length`` positions."""
        return [block.empty_cache(batch_size, length) for block in self.resblocks]

    def call(self, x, attention_mask=None, cache=None, cache_update_index=None):
        if cache is None:
            for block in self.resblocks:
                x = block(x, attention_mask=attention_mask, cache_update_index=cache_update_index)
            return x
        if len(cache) != len(self.resblocks):
            raise ValueError(f"{self.name}: cache must be a list of {len(self.resblocks)} "
                             f"per-block caches, got {len(cache)}")
        updated = []
        for block, block_cache in zip(self.resblocks, cache):
            x, block_cache = block(x, attention_mask=attention_mask, cache=block_cache,
                                   cache_update_index=cache_update_index)
            updated.append(block_cache)
        return x, updated

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, num_layers=self.num_layers, num_heads=self.num_heads,
                      mlp_ratio=self.mlp_ratio, activation=self.activation,
                      layer_norm_epsilon=self.layer_norm_epsilon)
        return config
