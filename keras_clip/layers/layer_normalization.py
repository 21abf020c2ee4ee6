"""Layer normalisation with a hand-written backward pass (every LayerNorm of CLIP's towers and
DALL·E's transformer)."""

import functools

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_clip")
class LayerNorm(keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` over the last axis with the same forward pass, weights
    (``gamma``, ``beta``) and config, and a hand-written gradient.

    Forward: Keras' own formula, in float32 (float64 for float64 inputs) (``mean`` and ``variance``
    over the last axis; ``inv = rsqrt(variance + epsilon) · gamma``; ``y = x · inv + (beta −
    mean · inv)``), cast to the layer's compute dtype — outputs bit-identical to Keras' layer.

    Backward (Ba et al. 2016, "Layer Normalization"; with ``x̂ = (x − mean) · rsqrt(variance +
    epsilon)`` and ``g = dy · gamma``): ``dx = rsqrt(variance + epsilon) · (g − mean(g) − x̂ ·
    mean(g · x̂))``, ``dgamma = Σ dy · x̂``, ``dbeta = Σ dy`` (sums over every axis but the last).
    TensorFlow differentiating Keras' composed ops emits ~20 element-wise ops and reductions per
    layer; this is ~10. Measured on this 2-core machine, the 50 LayerNorms of a ViT-B/32 CLIP
    training step at batch 16 (forward + backward): float32 103 ms vs 132 ms, mixed_bfloat16
    115 ms vs 140 ms (`benchmarks/clip_elementwise.py`, BENCHMARKS.md).

    In training (``training=True``, as `fit` calls it) the forward pass and the backward pass
    each run as one XLA kernel (`_xla_kernels`; the same formulas, equal to the graph ops
    within float rounding, since XLA may contract multiply-adds): TensorFlow otherwise runs
    every element-wise op and reduction as its own pass with its own dispatch. Inference,
    SavedModel and TFLite exports keep the plain ops (bit-identical to Keras).

    Other settings (``axis`` not the last axis alone, ``center``/``scale`` off, ``rms_scaling``)
    and other backends fall back to Keras' layer unchanged.

    Input: float (..., features); output: the same shape in the layer's compute dtype.
    """

    def call(self, inputs, training=None):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        last_axis_only = len(axes) == 1 and axes[0] in (-1, len(inputs.shape) - 1)
        if not (keras.backend.backend() == "tensorflow" and last_axis_only and self.center
                and self.scale and not self.rms_scaling):
            return super().call(inputs)
        stats = tf.float64 if inputs.dtype == tf.float64 else tf.float32  # as Keras': ≥ float32
        return _layer_norm_last_axis(inputs, tf.cast(self.gamma, stats), tf.cast(self.beta, stats),
                                     float(self.epsilon), self.compute_dtype, xla=bool(training))


def _ln_forward(x, gamma, beta, epsilon, out_dtype):
    """(y in ``out_dtype``, mean, rstd) of a last-axis layer norm: Keras' formula, with the
    statistics in gamma's dtype."""
    xf = tf.cast(x, gamma.dtype)
    mean = tf.reduce_mean(xf, axis=-1, keepdims=True)  # (..., 1)
    variance = tf.reduce_mean(tf.math.squared_difference(xf, mean), axis=-1, keepdims=True)
    rstd = tf.math.rsqrt(variance + epsilon)  # (..., 1)
    inv = rstd * gamma  # (..., D)
    return tf.cast(xf * inv + (beta - mean * inv), out_dtype), mean, rstd


def _ln_backward(x, dy, mean, rstd, gamma):
    """(dx in x's dtype, dgamma, dbeta) for `_ln_forward` (the formulas of `LayerNorm`)."""
    xf, dyf = tf.cast(x, gamma.dtype), tf.cast(dy, gamma.dtype)
    x_hat = (xf - mean) * rstd
    g = dyf * gamma
    dx = rstd * (g - tf.reduce_mean(g, axis=-1, keepdims=True)
                 - x_hat * tf.reduce_mean(g * x_hat, axis=-1, keepdims=True))
    features = tf.shape(x)[-1]  # the sums run over every axis but the features: (N, D) rows
    return (tf.cast(dx, x.dtype), tf.reduce_sum(tf.reshape(dyf * x_hat, (-1, features)), axis=0),
            tf.reduce_sum(tf.reshape(dyf, (-1, features)), axis=0))


@functools.cache
def _xla_kernels():
    """`_ln_forward` and `_ln_backward` as ``tf.function(jit_compile=True)``: XLA fuses each into
    one loop over the tensor. Kept at module level so no layer tracks them."""
    return (tf.function(_ln_forward, jit_compile=True, reduce_retracing=True),
            tf.function(_ln_backward, jit_compile=True, reduce_retracing=True))


def _layer_norm_last_axis(x, gamma, beta, epsilon, out_dtype, xla=False):
    """Layer norm of ``x`` (..., D) over its last axis with ``gamma``, ``beta`` (D,) of the
    statistics' dtype (float32, or float64 for float64 inputs); returns (..., D) in
    ``out_dtype``. Differentiable in all three (see `LayerNorm`). With ``xla`` the forward and
    backward passes run as one XLA kernel each (`_xla_kernels`), otherwise as graph ops."""
    forward_pass, backward_pass = _xla_kernels() if xla else (_ln_forward, _ln_backward)

    @tf.custom_gradient
    def forward(x, gamma, beta):
        y, mean, rstd = forward_pass(x, gamma, beta, epsilon, out_dtype)

        def grad(dy):
            return backward_pass(x, dy, mean, rstd, gamma)

        return y, grad

    return forward(x, gamma, beta)
