"""The shared attention layers' key/value cache (keras_clip.layers): cached prefill + decoding
steps equal uncached causal attention, configs round-trip, and bad caches / indices are named."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.layers.attention import MultiHeadAttention
from keras_clip.layers.transformer import ResidualAttentionBlock, Transformer
from keras_clip.text.transformer import causal_mask
from keras_dalle.transformer.patterns import PatternAttention

B, T, WIDTH, HEADS = 2, 9, 16, 4


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(B, T, WIDTH)).astype("float32")


def _layer(kind):
    keras.utils.set_random_seed(0)
    if kind == "attention":
        layer = MultiHeadAttention(HEADS)
    elif kind == "block":
        layer = ResidualAttentionBlock(WIDTH, HEADS)
    else:
        layer = Transformer(WIDTH, num_layers=2, num_heads=HEADS)
    layer.build((None, None, WIDTH))
    return layer


def _decode(layer, x, chunks, call=None):
    """Runs ``x`` through ``layer`` with a cache, ``chunks`` positions at a time (prefill
    chunks, then single steps), each call with its causal mask rows; (B, T, width) outputs."""
    call = call or (lambda *args, **kwargs: layer(*args, **kwargs))
    cache = layer.empty_cache(B, T)
    mask = causal_mask(T)  # CLIP text's (T, T) mask
    outputs, start = [], 0
    for length in chunks:
        y, cache = call(x[:, start:start + length], attention_mask=mask[start:start + length],
                        cache=cache, cache_update_index=start)
        outputs.append(y)
        start += length
    assert start == T
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("kind", ["attention", "block", "stack"])
@pytest.mark.parametrize("chunks", [[1] * T, [4] + [1] * 5, [3, 4, 1, 1], [T]])
def test_cached_prefill_and_steps_equal_uncached_causal_attention(x, kind, chunks):
    layer = _layer(kind)
    want = layer(x, attention_mask=causal_mask(T))
    got, cache = _decode(layer, x, chunks)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    caches = cache if kind == "stack" else [cache]
    for keys, values in caches:
        assert keys.shape == values.shape == (B, HEADS, T, WIDTH // HEADS)


def test_the_cached_keys_are_the_layers_projections(x):
    attn = _layer("attention")
    _, (keys, values) = _decode(attn, x, [5, 1, 1, 1, 1])
    split = lambda y: np.transpose(np.reshape(y, (B, T, HEADS, -1)), (0, 2, 1, 3))  # (B, heads, T, d)
    np.testing.assert_allclose(keys, split(attn.key(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values, split(attn.value(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cached_steps_inside_a_compiled_function(x, jit_compile):
    """Symbolic update index (a graph, and XLA, where the write is a scatter)."""
    block = _layer("block")
    step = tf.function(lambda *args, **kwargs: block(*args, **kwargs), jit_compile=jit_compile)
    want = block(x, attention_mask=causal_mask(T))

    def call(chunk, attention_mask, cache, cache_update_index):
        return step(chunk, attention_mask=attention_mask, cache=cache,
                    cache_update_index=tf.constant(cache_update_index))

    got, _ = _decode(block, x, [3, 3] + [1] * 3, call)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_static_cache_is_read_without_writing(x):
    attn = _layer("attention")
    _, cache = _decode(attn, x, [T])
    last = attn(x, attention_mask=causal_mask(T))[:, -1:]
    y, same = attn(x[:, -1:], attention_mask=causal_mask(T)[-1:], cache=cache)
    np.testing.assert_allclose(y, last, rtol=1e-5, atol=1e-5)
    assert same[0] is cache[0] and same[1] is cache[1]


def test_a_pattern_kernel_supplies_its_own_mask_rows():
    """DALL·E's layers: the kernel's mask_rows take the place of the caller's mask."""
    kernel = PatternAttention("conv", text_len=3, grid_height=3, grid_width=4, kernel_size=3)
    seq = kernel.seq_len
    keras.utils.set_random_seed(0)
    block = ResidualAttentionBlock(WIDTH, HEADS, attention_kernel=kernel)
    block.build((None, None, WIDTH))
    x = np.random.default_rng(1).normal(size=(B, seq, WIDTH)).astype("float32")
    want = block(x)
    cache, outputs = block.empty_cache(B, seq), []
    for start, length in [(0, 4)] + [(p, 1) for p in range(4, seq)]:
        y, cache = block(x[:, start:start + length], cache=cache, cache_update_index=start)
        outputs.append(y)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention_mask cannot be combined"):
        block(x[:, :1], attention_mask=causal_mask(seq)[:1], cache=cache, cache_update_index=0)
    with pytest.raises(ValueError, match="needs cache_update_index"):
        block(x[:, :1], cache=cache)


def test_without_a_cache_the_output_is_a_plain_tensor(x):
    block = _layer("block")
    y = block(x, attention_mask=causal_mask(T))
    assert tf.is_tensor(y) and y.shape == (B, T, WIDTH)


@pytest.mark.parametrize("kind", ["attention", "block", "stack", "kernel"])
def test_get_config_round_trip(x, kind):
    if kind == "kernel":
        keras.utils.set_random_seed(0)
        layer = MultiHeadAttention(2, output_dim=8, use_bias=False, name="pattern_attention",
                                   attention_kernel=PatternAttention("row", 1, 2, 4))
        layer.build((None, None, WIDTH))
        inputs = x[:, :9]
    else:
        layer, inputs = _layer(kind), x
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    clone.build((None, None, WIDTH))
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    for name, value in config.items():  # every constructor argument under its own name
        if name not in ("name", "trainable", "dtype", "attention_kernel"):
            assert getattr(clone, name) == value, name
    np.testing.assert_array_equal(clone(inputs), layer(inputs))
    if kind == "kernel":
        assert clone.attention_kernel.get_config() == layer.attention_kernel.get_config()
        assert (clone.num_heads, clone.output_dim, clone.use_bias) == (2, 8, False)


def test_empty_cache_needs_a_built_layer_and_uses_the_compute_dtype():
    with pytest.raises(ValueError, match="build the layer"):
        MultiHeadAttention(2).empty_cache(1, 4)
    attn = MultiHeadAttention(2, dtype="mixed_bfloat16")
    attn.build((None, None, 8))
    keys, values = attn.empty_cache(3, 5)
    assert keys.shape == values.shape == (3, 2, 5, 4) and keys.dtype == "bfloat16"
    y, (keys, _) = attn(np.ones((3, 2, 8), "float32"), attention_mask=causal_mask(5)[:2],
                        cache=(keys, values), cache_update_index=0)
    assert keys.dtype == "bfloat16" and y.shape == (3, 2, 8)


@pytest.mark.parametrize("cache, message", [
    (lambda k: k, "pair \\(keys, values\\)"),                            # one tensor
    (lambda k: (k,), "pair \\(keys, values\\)"),                         # one element
    (lambda k: (k, k, k), "pair \\(keys, values\\)"),
    (lambda k: (k[:, :2], k[:, :2]), "\\(B, heads, S, head_dim\\)"),     # 2 heads, not 4
    (lambda k: (k[..., :2], k[..., :2]), "head_dim"),                    # head_dim 2, not 4
    (lambda k: (k[0], k[0]), "\\(B, heads, S, head_dim\\)"),              # rank 3
    (lambda k: (k, k[:, :, :5]), "pair \\(keys, values\\)"),             # keys ≠ values
    (lambda k: (k[:1], k[:1]), "\\(2, 4, S, 4\\)"),                      # batch 1, queries 2
])
def test_a_bad_cache_shape_is_named(x, cache, message):
    attn = _layer("attention")
    keys, values = attn.empty_cache(B, T)
    with pytest.raises(ValueError, match=message):
        attn(x[:, :1], attention_mask=causal_mask(T)[:1], cache=cache(keys),
             cache_update_index=0)


@pytest.mark.parametrize("index, length, message", [
    (T, 1, f"in \\[0, {T - 1}\\]"), (-1, 1, f"in \\[0, {T - 1}\\]"), (6, 4, "in \\[0, 5\\]"),
    (tf.constant(T), 1, f"got {T}"), (np.int64(7), 3, "in \\[0, 6\\]"),
    (1.0, 1, "integer scalar"), (np.array([0, 1]), 1, "integer scalar"),
])
def test_a_bad_cache_update_index_is_named(x, index, length, message):
    attn = _layer("attention")
    with pytest.raises(ValueError, match="cache_update_index must be .*" + message):
        attn(x[:, :length], attention_mask=causal_mask(T)[:length],
             cache=attn.empty_cache(B, T), cache_update_index=index)


def test_other_cache_misuse_is_named(x):
    attn = _layer("attention")
    with pytest.raises(ValueError, match="cache_update_index is set but cache is None"):
        attn(x, cache_update_index=0)
    with pytest.raises(ValueError, match="one column per cache position \\(S = 9\\)"):
        attn(x[:, :2], attention_mask=causal_mask(4)[:2], cache=attn.empty_cache(B, T),
             cache_update_index=0)
    with pytest.raises(ValueError, match="2 per-block caches"):
        _layer("stack")(x, cache=[attn.empty_cache(B, T)], cache_update_index=0)

    class Kernel:  # a kernel without mask rows
        def __call__(self, q, k, v):
            return v

    custom = MultiHeadAttention(HEADS, attention_kernel=Kernel())
    custom.build((None, None, WIDTH))
    with pytest.raises(ValueError, match="no mask_rows"):
        custom(x[:, :1], cache=custom.empty_cache(B, T), cache_update_index=0)
