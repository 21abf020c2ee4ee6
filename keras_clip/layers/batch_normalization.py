"""Batch normalisation that trains through TensorFlow's fused kernel (CLIP's ResNet towers)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_clip")
class BatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with the same weights (``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``), config and inference pass, whose training pass over
    NHWC feature maps is TensorFlow's fused kernel (``FusedBatchNormV3``, oneDNN on CPU; its
    gradient ``FusedBatchNormGradV3``; XLA compiles both).

    Training (``training=True`` on a trainable layer, input (B, H, W, C), ``axis`` the last):
    ``y = (x − mean) · rsqrt(variance + epsilon) · gamma + beta`` with the batch's mean and biased
    variance over (B, H, W), as Keras' layer; the moving statistics move by ``momentum`` towards
    the same biased batch variance Keras uses (the kernel returns the Bessel-corrected one,
    ``n / (n − 1)`` times larger, n = B·H·W; it is scaled back). float32 statistics whatever the
    input dtype: a bfloat16 input stays bfloat16 in memory (Keras' layer casts it to float32 and
    back). Keras differentiating its composed ops (``tf.nn.moments``, ``tf.nn.batch_normalization``)
    runs ~12 element-wise passes and reductions per layer; the fused kernels run ~4. Measured on
    this 2-core machine at RN50's widest map (16 × 56 × 56 × 256, forward + backward): 63 ms vs
    153–229 ms; in an RN50 training step at batch 16 (BENCHMARKS.md).

    Anything else — inference, a frozen layer, other ranks or axes, a mask, ``synchronized``,
    ``renorm``, ``center``/``scale`` off, another backend — is Keras' layer unchanged.

    Input: float (B, H, W, C); output: the same shape in the layer's compute dtype.
    Source of the rule: Ioffe & Szegedy 2015, "Batch Normalization"; torch's ``BatchNorm2d``
    (OpenAI's ModifiedResNet) normalises with the same biased variance.
    """

    def call(self, inputs, training=None, mask=None):
        axis = self.axis if not isinstance(self.axis, (list, tuple)) else self.axis[0]
        fused = (keras.backend.backend() == "tensorflow" and training and self.trainable
                 and mask is None and len(inputs.shape) == 4 and axis in (-1, 3)
                 and not self.synchronized and not self.renorm and self.center and self.scale
                 and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16))
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        empty = tf.constant([], tf.float32)
        y, mean, bessel_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32),
            mean=empty, variance=empty, epsilon=float(self.epsilon), exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)
        shape = tf.shape(inputs)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = bessel_variance * (n - 1.0) / tf.maximum(n, 1.0)  # biased, as Keras' update
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.stop_gradient(variance) * (1.0 - m))
        return tf.cast(y, self.compute_dtype)
