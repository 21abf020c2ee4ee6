"""keras_clip.layers.LayerNorm (Keras' forward pass, a hand-written gradient) and the training-time
XLA-fused activation of ResidualAttentionBlock (issue 18's element-wise levers)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import xla_compiled_calls
from keras_clip.layers import LayerNorm, ResidualAttentionBlock, get_activation
from keras_clip.layers.transformer import fused_activation


def _pair(shape, dtype="float32", epsilon=1e-5, seed=0):
    """Our LayerNorm and Keras' with the same (non-trivial) gamma and beta."""
    ours = LayerNorm(epsilon=epsilon, dtype=dtype)
    ref = keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype)
    rng = np.random.default_rng(seed)
    for layer in (ours, ref):
        layer.build(shape)
    for name in ("gamma", "beta"):
        value = rng.standard_normal(shape[-1]).astype("float32")
        getattr(ours, name).assign(value)
        getattr(ref, name).assign(value)
    return ours, ref


def _inputs(shape, seed):
    """An input x (mean 1, std 3) and the loss weights w, float32."""
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal(shape) * 3 + 1, tf.float32),
            tf.constant(rng.standard_normal(shape), tf.float32))


def _grads(layer, x, w, **kwargs):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **kwargs)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))


@pytest.mark.parametrize("shape", [(3, 7, 64), (5, 32), (2, 3, 4, 16)])
def test_layer_norm_forward_is_bit_identical_to_keras_and_gradients_agree(shape):
    ours, ref = _pair(shape)
    x, w = _inputs(shape, seed=1)
    got, want = _grads(ours, x, w), _grads(ref, x, w)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())  # same formula, same rounding
    for g, r, name in zip(got[1:], want[1:], ("x", "gamma", "beta")):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-5, atol=2e-5, err_msg=name)


def test_layer_norm_gradient_matches_finite_differences():
    ours, _ = _pair((2, 8), dtype="float64")
    x = tf.constant(np.random.default_rng(2).standard_normal((2, 8)), tf.float64)
    # float64 input, float32 statistics (as Keras'): finite differences at 1e-3 in float32 terms.
    theoretical, numerical = tf.test.compute_gradient(lambda t: tf.cast(ours(t), tf.float64), [x],
                                                      delta=1e-3)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_layer_norm_under_mixed_bfloat16_keeps_float32_statistics_and_weights():
    ours, ref = _pair((4, 9, 32), dtype="mixed_bfloat16")
    x = tf.cast(tf.random.stateless_normal((4, 9, 32), seed=(3, 4)) * 2, tf.bfloat16)
    w = tf.random.stateless_normal((4, 9, 32), seed=(5, 6))
    got, want = _grads(ours, x, w), _grads(ref, x, w)
    assert got[0].dtype == tf.bfloat16 and got[1].dtype == tf.bfloat16
    assert ours.gamma.dtype == "float32"
    np.testing.assert_array_equal(tf.cast(got[0], tf.float32).numpy(),
                                  tf.cast(want[0], tf.float32).numpy())
    for g, r in zip(got[1:], want[1:]):  # the input gradient is rounded to bfloat16 (8 bits)
        np.testing.assert_allclose(tf.cast(g, tf.float32).numpy(), tf.cast(r, tf.float32).numpy(),
                                   rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(3, 7, 64), (5, 32), (2, 3, 4, 16)])
def test_layer_norm_in_training_runs_xla_kernels_equal_to_keras(shape):
    ours, ref = _pair(shape)
    x, w = _inputs(shape, seed=7)
    want = _grads(ref, x, w)
    eager = _grads(ours, x, w, training=True)
    graph = tf.function(lambda x, w: _grads(ours, x, w, training=True))(x, w)
    for got in (eager, graph):
        for g, r, name in zip(got, want, ("y", "x", "gamma", "beta")):
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-5, atol=2e-5, err_msg=name)
    # the training call really goes through the XLA kernels (an XlaLaunch-compiled call)
    graph_def = tf.function(lambda x: ours(x, training=True)).get_concrete_function(x).graph
    assert xla_compiled_calls(graph_def)


def test_layer_norm_training_kernels_under_mixed_bfloat16():
    ours, ref = _pair((4, 9, 32), dtype="mixed_bfloat16")
    x = tf.cast(tf.random.stateless_normal((4, 9, 32), seed=(3, 4)) * 2, tf.bfloat16)
    w = tf.random.stateless_normal((4, 9, 32), seed=(5, 6))
    got, want = _grads(ours, x, w, training=True), _grads(ref, x, w)
    assert got[0].dtype == tf.bfloat16 and got[1].dtype == tf.bfloat16
    assert got[2].dtype == tf.float32  # gamma's gradient, like the variable
    for g, r in zip(got, want):  # outputs and the input gradient are bfloat16 (8 bits)
        np.testing.assert_allclose(tf.cast(g, tf.float32).numpy(), tf.cast(r, tf.float32).numpy(),
                                   rtol=2e-2, atol=3e-2)


def test_layer_norm_training_gradient_matches_finite_differences():
    ours, _ = _pair((2, 8), dtype="float64")
    x = tf.constant(np.random.default_rng(2).standard_normal((2, 8)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda t: tf.cast(ours(t, training=True), tf.float64), [x], delta=1e-3)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_layer_norm_other_settings_fall_back_to_keras():
    x = tf.random.stateless_normal((3, 5, 6), seed=(7, 8))
    for kwargs in (dict(axis=1), dict(axis=[1, 2]), dict(center=False), dict(scale=False)):
        ours, ref = LayerNorm(**kwargs), keras.layers.LayerNormalization(**kwargs)
        np.testing.assert_array_equal(ours(x).numpy(), ref(x).numpy(), err_msg=str(kwargs))


def test_layer_norm_config_round_trip_and_saved_model_loads(tmp_path):
    layer = LayerNorm(epsilon=1e-5, name="ln")
    clone = LayerNorm.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    inputs = keras.Input((4, 8))
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[-1], LayerNorm)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("name", ["quick_gelu", "gelu"])
def test_fused_activation_equals_the_plain_one_with_its_gradient(name):
    x = tf.random.stateless_normal((2, 5, 48), seed=(9, 10)) * 3
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        plain, fused = get_activation(name)(x), fused_activation(name)(x)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(fused, x).numpy(), tape.gradient(plain, x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_residual_block_uses_the_fused_activation_only_in_training(monkeypatch):
    """Training and inference give the same values; only training calls the XLA function (so an
    export, which runs inference, never contains it)."""
    block = ResidualAttentionBlock(width=32, num_heads=4)
    x = tf.random.stateless_normal((2, 6, 32), seed=(11, 12))
    inference, training = block(x), block(x, training=True)
    np.testing.assert_allclose(training.numpy(), inference.numpy(), rtol=1e-5, atol=1e-5)
    calls = []
    import keras_clip.layers.transformer as T
    real = T.fused_activation
    monkeypatch.setattr(T, "fused_activation", lambda n: calls.append(n) or real(n))
    block(x)
    assert calls == []
    block(x, training=True)
    assert calls == ["quick_gelu"]
