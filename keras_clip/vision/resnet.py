"""CLIP's ModifiedResNet image tower: 3-conv stem, anti-aliased strides, attention pooling."""

import keras
from keras import ops

from keras_clip.layers.attention import MultiHeadAttention
from keras_clip.layers.batch_normalization import BatchNorm


def _conv(filters, kernel_size, name, policy, strides=1):
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, use_bias=False, name=name,
                               dtype=policy)


def _bn(name, policy, zero_gamma=False):
    # torch BatchNorm2d: eps 1e-5, momentum 0.1 (Keras momentum = 1 - 0.1); trains through
    # TensorFlow's fused kernel (BatchNorm).
    return BatchNorm(
        epsilon=1e-5, momentum=0.9, name=name, dtype=policy,
        gamma_initializer="zeros" if zero_gamma else "ones")


def _pad1(x):
    # torch padding=1 on both sides; TF "same" pads (0, 1) on a stride-2 conv.
    return ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _avg_pool(x, size):
    return x if size == 1 else ops.average_pool(x, size, strides=size, padding="valid")


@keras.saving.register_keras_serializable(package="keras_clip")
class Bottleneck(keras.layers.Layer):
    """1×1 → 3×3 → avg-pool(stride) → 1×1 (×4 channels), with an avg-pool + 1×1 downsample."""

    def __init__(self, inplanes, planes, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.inplanes = inplanes
        self.planes = planes
        self.stride = stride
        p = self.dtype_policy
        self.conv1, self.bn1 = _conv(planes, 1, "conv1", p), _bn("bn1", p)
        self.conv2, self.bn2 = _conv(planes, 3, "conv2", p), _bn("bn2", p)
        # OpenAI zero-initialises the last BN gain so each block starts as the identity.
        self.conv3, self.bn3 = _conv(planes * 4, 1, "conv3", p), _bn("bn3", p, zero_gamma=True)
        self.has_downsample = stride > 1 or inplanes != planes * 4
        if self.has_downsample:
            self.downsample_conv = _conv(planes * 4, 1, "downsample_conv", p)
            self.downsample_bn = _bn("downsample_bn", p)

    def build(self, input_shape=None):
        for conv, bn, cin in ((self.conv1, self.bn1, self.inplanes), (self.conv2, self.bn2, self.planes),
                              (self.conv3, self.bn3, self.planes)):
            conv.build((None, None, None, cin))
            bn.build((None, None, None, conv.filters))
        if self.has_downsample:
            self.downsample_conv.build((None, None, None, self.inplanes))
            self.downsample_bn.build((None, None, None, self.planes * 4))
        self.built = True

    def call(self, x, training=None):
        out = ops.relu(self.bn1(self.conv1(x), training=training))
        out = ops.relu(self.bn2(self.conv2(_pad1(out)), training=training))
        out = _avg_pool(out, self.stride)
        out = self.bn3(self.conv3(out), training=training)
        identity = x
        if self.has_downsample:
            identity = _avg_pool(identity, self.stride)
            identity = self.downsample_bn(self.downsample_conv(identity), training=training)
        return ops.relu(out + identity)

    def get_config(self):
        config = super().get_config()
        config.update(inplanes=self.inplanes, planes=self.planes, stride=self.stride)
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class AttentionPool2d(keras.layers.Layer):
    """Pools a feature map with one attention query: the mean token, attending to all positions.

    Example:
        >>> pool = AttentionPool2d(spatial_dim=7, embed_dim=2048, num_heads=32, output_dim=1024)
        >>> y = pool(feature_map)   # (B, 7, 7, 2048) -> (B, 1024)
    """

    def __init__(self, spatial_dim, embed_dim, num_heads, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.spatial_dim = spatial_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.output_dim = output_dim
        self.attn = MultiHeadAttention(num_heads, output_dim=output_dim or embed_dim, name="attn",
                                       dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.positional_embedding = self.add_weight(
            name="positional_embedding", shape=(self.spatial_dim**2 + 1, self.embed_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.embed_dim**-0.5))
        self.attn.build((None, 1, self.embed_dim), (None, None, self.embed_dim))
        self.built = True

    def call(self, x):
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        x = ops.reshape(x, (b, h * w, self.embed_dim))  # (B, HW, C), row-major as torch flatten
        x = ops.concatenate([ops.mean(x, axis=1, keepdims=True), x], axis=1)  # (B, HW+1, C)
        x = x + ops.cast(self.positional_embedding, x.dtype)
        return self.attn(x[:, :1], context=x)[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update(spatial_dim=self.spatial_dim, embed_dim=self.embed_dim,
                      num_heads=self.num_heads, output_dim=self.output_dim)
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class ModifiedResNet(keras.layers.Layer):
    """CLIP's ResNet: 3-conv stem + avg-pool, four Bottleneck stages, AttentionPool2d head.

    Example:
        >>> rn50 = ModifiedResNet(layers=(3, 4, 6, 3), output_dim=1024, num_heads=32,
        ...                       image_size=224, width=64)
        >>> feats = rn50(images)   # (B, 1024)
    """

    def __init__(self, layers, output_dim, num_heads, image_size=224, width=64, **kwargs):
        super().__init__(**kwargs)
        self.layers_config = list(layers)
        self.output_dim = output_dim
        self.num_heads = num_heads
        self.image_size = image_size
        self.width = width
        p = self.dtype_policy
        self.stem_convs = [_conv(width // 2, 3, "conv1", p, strides=2),
                           _conv(width // 2, 3, "conv2", p), _conv(width, 3, "conv3", p)]
        self.stem_bns = [_bn("bn1", p), _bn("bn2", p), _bn("bn3", p)]
        # Bottlenecks of all four stages in order; block j of stage i is named layer{i+1}_{j}.
        self.blocks = []
        inplanes = width
        for i, num_blocks in enumerate(self.layers_config):
            planes = width * 2**i
            for j in range(num_blocks):
                stride = 1 if (i == 0 or j > 0) else 2
                self.blocks.append(
                    Bottleneck(inplanes, planes, stride, name=f"layer{i + 1}_{j}", dtype=p))
                inplanes = planes * 4
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, num_heads, output_dim,
                                        name="attnpool", dtype=p)

    def build(self, input_shape=None):
        cin = 3
        for conv, bn in zip(self.stem_convs, self.stem_bns):
            conv.build((None, None, None, cin))
            bn.build((None, None, None, conv.filters))
            cin = conv.filters
        for block in self.blocks:
            block.build()
        self.attnpool.build()
        self.built = True

    def call(self, images, training=None):
        x = images
        for conv, bn in zip(self.stem_convs, self.stem_bns):
            x = ops.relu(bn(conv(_pad1(x)), training=training))
        x = _avg_pool(x, 2)
        for block in self.blocks:
            x = block(x, training=training)
        return self.attnpool(x)

    def get_config(self):
        config = super().get_config()
        config.update(layers=self.layers_config, output_dim=self.output_dim,
                      num_heads=self.num_heads, image_size=self.image_size, width=self.width)
        return config
