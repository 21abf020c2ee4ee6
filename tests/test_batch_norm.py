"""keras_clip.layers.BatchNorm: training through FusedBatchNormV3 equals Keras' BatchNormalization
(outputs, gradients, moving statistics), in float32, mixed bfloat16 and under XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.layers import BatchNorm


def _pair(channels, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    gamma = rng.normal(size=channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    mean = rng.normal(size=channels).astype("float32")
    var = rng.uniform(0.5, 2.0, size=channels).astype("float32")
    layers = []
    for cls in (BatchNorm, keras.layers.BatchNormalization):
        layer = cls(epsilon=1e-5, momentum=0.9, dtype=dtype)
        layer.build((None, None, None, channels))
        layer.set_weights([gamma, beta, mean, var])
        layers.append(layer)
    return layers


def _train_step(layer, x, w, jit=False):
    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
        dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
        return y, dx, dgamma, dbeta
    return [t.numpy().astype("float32") for t in step(x)]


@pytest.mark.parametrize("jit", [False, True])
def test_batch_norm_training_equals_keras_outputs_gradients_and_moving_statistics(jit):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(1.5, 2.0, size=(4, 5, 6, 8)).astype("float32"))
    w = tf.constant(rng.normal(size=(4, 5, 6, 8)).astype("float32"))
    ours, keras_bn = _pair(8)
    got, want = _train_step(ours, x, w, jit), _train_step(keras_bn, x, w, jit)
    for name, g, e in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)
    # The moving variance follows Keras' biased batch variance, not the kernel's n/(n-1) one.
    np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), keras_bn.moving_variance.numpy(),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(ours.moving_variance.numpy(), _pair(8)[0].moving_variance.numpy())


def test_batch_norm_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 3, 2))
    w = tf.constant(rng.normal(size=(2, 3, 3, 2)).astype("float32"))
    ours, _ = _pair(2)

    def loss(xv):
        return float(tf.reduce_sum(ours(tf.constant(xv, tf.float32), training=True) * w))

    _, dx, _, _ = _train_step(ours, tf.constant(x, tf.float32), w)
    eps, (i, j, k, c) = 1e-2, (1, 2, 0, 1)
    xp, xm = x.copy(), x.copy()
    xp[i, j, k, c] += eps
    xm[i, j, k, c] -= eps
    numeric = (loss(xp) - loss(xm)) / (2 * eps)
    assert abs(dx[i, j, k, c] - numeric) < 2e-2 * max(1.0, abs(numeric))


def test_batch_norm_under_mixed_bfloat16_stays_bfloat16_with_float32_statistics():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(4, 5, 6, 8)).astype("float32"))
    w = tf.constant(rng.normal(size=(4, 5, 6, 8)).astype("float32"))
    ours, keras_bn = _pair(8, dtype="mixed_bfloat16")
    assert ours.gamma.dtype == "float32" and ours.moving_variance.dtype == "float32"
    xb = tf.cast(x, tf.bfloat16)
    got, want = _train_step(ours, xb, w), _train_step(keras_bn, xb, w)
    for name, g, e in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        scale = np.abs(e).max()
        assert np.abs(g - e).max() <= 2e-2 * scale, name  # bf16 rounding of y and dx
    np.testing.assert_allclose(ours.moving_variance.numpy(), keras_bn.moving_variance.numpy(),
                               rtol=1e-5)
    assert _pair(8, dtype="mixed_bfloat16")[0](xb, training=True).dtype == tf.bfloat16


def test_batch_norm_inference_frozen_and_other_settings_are_keras_unchanged(monkeypatch):
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    ours, keras_bn = _pair(4)
    np.testing.assert_array_equal(ours(x, training=False).numpy(),
                                  keras_bn(x, training=False).numpy())
    calls = []
    monkeypatch.setattr(tf.raw_ops, "FusedBatchNormV3",
                        lambda **kw: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    ours(x, training=False)
    ours.trainable = False
    ours(x, training=True)  # a frozen BN normalises with its moving statistics (Keras' rule)
    ours.trainable = True
    flat = BatchNorm(axis=-1)
    flat(tf.ones((3, 4)), training=True)  # rank 2: Keras' layer
    assert calls == []
    with pytest.raises(AssertionError):
        ours(x, training=True)
    assert calls == [1]


def test_batch_norm_config_round_trip_and_resnet_uses_it():
    layer = BatchNorm(epsilon=1e-5, momentum=0.9, gamma_initializer="zeros", name="bn3")
    clone = BatchNorm.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is BatchNorm
    from keras_clip.vision.resnet import ModifiedResNet
    rn = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=8, num_heads=2, image_size=64, width=8)
    rn.build()
    bns = [l for l in rn._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(type(l) is BatchNorm for l in bns)
