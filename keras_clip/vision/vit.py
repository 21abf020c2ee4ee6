"""CLIP's VisionTransformer image tower."""

import keras
from keras import ops

from keras_clip.layers.transformer import Transformer, layer_norm


@keras.saving.register_keras_serializable(package="keras_clip")
class VisionTransformer(keras.layers.Layer):
    """ViT image encoder: patch conv, class token, ``ln_pre``, transformer, ``ln_post``, ``proj``.

    Input: float NHWC images of ``image_size`` (already normalised); output (B, output_dim).

    Example:
        >>> vit = VisionTransformer(image_size=224, patch_size=32, width=768, num_layers=12,
        ...                         num_heads=12, output_dim=512)
        >>> feats = vit(images)   # (B, 512)
    """

    def __init__(self, image_size, patch_size, width, num_layers, num_heads, output_dim,
                 mlp_ratio=4.0, activation="quick_gelu", layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.output_dim = output_dim
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.grid_size = image_size // patch_size
        policy = self.dtype_policy
        self.conv1 = keras.layers.Conv2D(width, patch_size, strides=patch_size, use_bias=False,
                                         name="conv1", dtype=policy)
        self.ln_pre = layer_norm("ln_pre", layer_norm_epsilon, policy)
        self.transformer = Transformer(width, num_layers, num_heads, mlp_ratio, activation,
                                       layer_norm_epsilon, name="transformer", dtype=policy)
        self.ln_post = layer_norm("ln_post", layer_norm_epsilon, policy)

    def build(self, input_shape=None):
        scale = self.width**-0.5
        init = keras.initializers.RandomNormal(stddev=scale)
        self.class_embedding = self.add_weight(
            name="class_embedding", shape=(self.width,), initializer=init)
        self.positional_embedding = self.add_weight(
            name="positional_embedding", shape=(self.grid_size**2 + 1, self.width), initializer=init)
        self.proj = self.add_weight(name="proj", shape=(self.width, self.output_dim), initializer=init)
        self.conv1.build((None, self.image_size, self.image_size, 3))
        seq = (None, self.grid_size**2 + 1, self.width)
        self.ln_pre.build(seq)
        self.transformer.build(seq)
        self.ln_post.build((None, self.width))
        self.built = True

    def call(self, images):
        x = self.embed_patches(images)  # (B, grid², width), row-major patches, as torch
        b = ops.shape(x)[0]
        cls = ops.broadcast_to(ops.cast(self.class_embedding, x.dtype), (b, 1, self.width))
        x = ops.concatenate([cls, x], axis=1) + ops.cast(self.positional_embedding, x.dtype)
        x = self.transformer(self.ln_pre(x))
        return ops.matmul(self.ln_post(x[:, 0]), ops.cast(self.proj, x.dtype))

    def embed_patches(self, images):
        """``conv1`` (a ``patch_size``-strided, unpadded, bias-free convolution) computed as one
        matmul of the flattened patches with its kernel: the same numbers (up to summation
        order), and a backward pass that is two matmuls — oneDNN's Conv2DBackpropFilter for a
        32×32 stride-32 kernel took 332 ms of a 1.9 s ViT-B/32 batch-16 mixed_bfloat16 step
        (BENCHMARKS.md "Where the training step's time goes").

        Args:
            images: (B, image_size, image_size, 3) float.

        Returns:
            (B, grid_size², width) in the compute dtype, patches in row-major order.
        """
        g, p = self.grid_size, self.patch_size
        x = ops.cast(images, self.compute_dtype)[:, :g * p, :g * p, :]  # as VALID padding
        b = ops.shape(x)[0]
        x = ops.reshape(x, (b * g, p, g, p * 3))  # (B·row, y, col, x·3 + channel)
        x = ops.transpose(x, (0, 2, 1, 3))  # (B·row, col, y, x·3 + channel)
        x = ops.reshape(x, (b, g * g, p * p * 3))  # (B, patches, y·p·3 + x·3 + channel)
        kernel = ops.reshape(ops.cast(self.conv1.kernel, self.compute_dtype),
                             (p * p * 3, self.width))  # (p, p, 3, width) flattened alike
        return ops.matmul(x, kernel)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                      num_layers=self.num_layers, num_heads=self.num_heads,
                      output_dim=self.output_dim, mlp_ratio=self.mlp_ratio,
                      activation=self.activation, layer_norm_epsilon=self.layer_norm_epsilon)
        return config
