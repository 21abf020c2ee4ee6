"""The dVAE's encoder, decoder and residual block, layer for layer as OpenAI's `dall_e` package."""

import math

import keras
from keras import ops

from keras_clip.validation import check_positive_int


def _conv(filters, kernel_size, input_channels, name, policy):
    # dall_e's Conv2d init: w ~ N(0, 1 / (n_in · k²)), b = 0. Odd kernel, stride 1 and torch
    # padding (k - 1) // 2 is exactly "same".
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", use_bias=True, name=name, dtype=policy,
        kernel_initializer=keras.initializers.RandomNormal(
            stddev=1.0 / math.sqrt(input_channels * kernel_size ** 2)),
        bias_initializer="zeros")


@keras.saving.register_keras_serializable(package="keras_dalle")
class DVAEResBlock(keras.layers.Layer):
    """dVAE residual block: `id_path(x) + post_gain · res_path(x)`, post_gain = 1 / n_layers².

    Args:
        input_channels: channels of the block input.
        output_channels: channels of the block output (a multiple of 4; the residual path has
            output_channels / 4 hidden channels).
        n_layers: total number of residual blocks in the network (sets post_gain).
        kernel_sizes: kernel sizes of the four residual convs: (3, 3, 3, 1) in the encoder,
            (1, 3, 3, 3) in the decoder.
    """

    def __init__(self, input_channels, output_channels, n_layers, kernel_sizes=(3, 3, 3, 1),
                 **kwargs):
        super().__init__(**kwargs)
        self.input_channels = check_positive_int("input_channels", input_channels)
        self.output_channels = check_positive_int("output_channels", output_channels)
        if self.output_channels % 4:
            raise ValueError(f"output_channels must be a multiple of 4, got {output_channels}")
        self.n_layers = check_positive_int("n_layers", n_layers)
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(kernel_sizes) != 4 or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be 4 odd positive integers, got {kernel_sizes}")
        self.kernel_sizes = kernel_sizes
        self.hidden_channels = self.output_channels // 4
        self.post_gain = 1.0 / (self.n_layers ** 2)

        policy = self.dtype_policy
        self.id_conv = None
        if self.input_channels != self.output_channels:
            self.id_conv = _conv(self.output_channels, 1, self.input_channels, "id_path", policy)
        ins = (self.input_channels,) + (self.hidden_channels,) * 3
        outs = (self.hidden_channels,) * 3 + (self.output_channels,)
        self.res_convs = [
            _conv(n_out, k, n_in, f"res_conv_{i + 1}", policy)
            for i, (n_in, n_out, k) in enumerate(zip(ins, outs, kernel_sizes))]

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] is not None \
                and input_shape[-1] != self.input_channels:
            raise ValueError(f"{self.name}: expected {self.input_channels} input channels, "
                             f"got input shape {tuple(input_shape)}")
        if self.id_conv is not None:
            self.id_conv.build((None, None, None, self.input_channels))
        n_ins = (self.input_channels,) + (self.hidden_channels,) * 3
        for conv, n_in in zip(self.res_convs, n_ins):
            conv.build((None, None, None, n_in))
        self.built = True

    def call(self, x):
        identity = x if self.id_conv is None else self.id_conv(x)
        h = x
        for conv in self.res_convs:
            h = conv(ops.relu(h))
        return identity + self.post_gain * h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(input_channels=self.input_channels, output_channels=self.output_channels,
                      n_layers=self.n_layers, kernel_sizes=list(self.kernel_sizes))
        return config


@keras.saving.register_keras_serializable(package="keras_dalle")
class DVAEEncoder(keras.Model):
    """dVAE encoder: images (already `map_pixels`-ed, NHWC) → token logits [B, H/f, W/f, vocab].

    f = 2**(group_count - 1). Mirrors `dall_e.Encoder` (OpenAI: n_hid 256, 4 groups × 2 blocks,
    vocab 8192 → 53,786,240 parameters).
    """

    def __init__(self, num_channels=3, n_hid=256, group_count=4, n_blk_per_group=2,
                 vocab_size=8192, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.n_hid = check_positive_int("n_hid", n_hid)
        self.group_count = check_positive_int("group_count", group_count)
        self.n_blk_per_group = check_positive_int("n_blk_per_group", n_blk_per_group)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        if self.n_hid % 4:
            raise ValueError(f"n_hid must be a multiple of 4, got {n_hid}")

        policy = self.dtype_policy
        n_layers = self.group_count * self.n_blk_per_group
        self.input_conv = _conv(self.n_hid, 7, self.num_channels, "input", policy)
        self.groups = []
        n_in = self.n_hid
        for g in range(self.group_count):
            n_out = self.n_hid * 2 ** g
            blocks = []
            for b in range(self.n_blk_per_group):
                blocks.append(DVAEResBlock(n_in, n_out, n_layers, kernel_sizes=(3, 3, 3, 1),
                                           name=f"group_{g + 1}_block_{b + 1}", dtype=policy))
                n_in = n_out
            self.groups.append(blocks)
        self.output_conv = _conv(self.vocab_size, 1, n_in, "output", policy)

    @property
    def downsample_factor(self):
        return 2 ** (self.group_count - 1)

    def build(self, input_shape=None):
        self.input_conv.build((None, None, None, self.num_channels))
        for blocks in self.groups:
            for block in blocks:
                block.build((None, None, None, block.input_channels))
        self.output_conv.build((None, None, None, self.n_hid * 2 ** (self.group_count - 1)))
        self.built = True

    def call(self, x):
        x = self.input_conv(x)
        for g, blocks in enumerate(self.groups):
            for block in blocks:
                x = block(x)
            if g < self.group_count - 1:
                x = ops.max_pool(x, pool_size=2, strides=2, padding="valid")
        return self.output_conv(ops.relu(x))

    def get_config(self):
        config = super().get_config()
        config.update(num_channels=self.num_channels, n_hid=self.n_hid,
                      group_count=self.group_count, n_blk_per_group=self.n_blk_per_group,
                      vocab_size=self.vocab_size)
        return config

    def dall_e_conv_layers(self):
        """{dall_e state-dict prefix: Conv2D}, e.g. "blocks.group_2.block_1.id_path"."""
        return dall_e_conv_layers(self)


@keras.saving.register_keras_serializable(package="keras_dalle")
class DVAEDecoder(keras.Model):
    """dVAE decoder: one-hot (or relaxed) tokens [B, h, w, vocab] → [B, h·f, w·f, output_channels].

    Mirrors `dall_e.Decoder` (OpenAI: vocab 8192, n_init 128, n_hid 256, 4 groups × 2 blocks,
    6 output maps → 43,829,766 parameters). Note: `output_channels` here is the total number of
    output maps (dall_e's `output_channels` argument is half of it).
    """

    def __init__(self, vocab_size=8192, n_init=128, n_hid=256, group_count=4, n_blk_per_group=2,
                 output_channels=6, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.n_init = check_positive_int("n_init", n_init)
        self.n_hid = check_positive_int("n_hid", n_hid)
        self.group_count = check_positive_int("group_count", group_count)
        self.n_blk_per_group = check_positive_int("n_blk_per_group", n_blk_per_group)
        self.output_channels = check_positive_int("output_channels", output_channels)
        if self.n_hid % 4:
            raise ValueError(f"n_hid must be a multiple of 4, got {n_hid}")

        policy = self.dtype_policy
        n_layers = self.group_count * self.n_blk_per_group
        self.input_conv = _conv(self.n_init, 1, self.vocab_size, "input", policy)
        self.groups = []
        n_in = self.n_init
        for g in range(self.group_count):
            n_out = self.n_hid * 2 ** (self.group_count - 1 - g)
            blocks = []
            for b in range(self.n_blk_per_group):
                blocks.append(DVAEResBlock(n_in, n_out, n_layers, kernel_sizes=(1, 3, 3, 3),
                                           name=f"group_{g + 1}_block_{b + 1}", dtype=policy))
                n_in = n_out
            self.groups.append(blocks)
        self.output_conv = _conv(self.output_channels, 1, self.n_hid, "output", policy)

    @property
    def upsample_factor(self):
        return 2 ** (self.group_count - 1)

    def build(self, input_shape=None):
        self.input_conv.build((None, None, None, self.vocab_size))
        for blocks in self.groups:
            for block in blocks:
                block.build((None, None, None, block.input_channels))
        self.output_conv.build((None, None, None, self.n_hid))
        self.built = True

    def call(self, x):
        x = self.input_conv(x)
        for g, blocks in enumerate(self.groups):
            for block in blocks:
                x = block(x)
            if g < self.group_count - 1:  # nearest-neighbour ×2
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
        return self.output_conv(ops.relu(x))

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, n_init=self.n_init, n_hid=self.n_hid,
                      group_count=self.group_count, n_blk_per_group=self.n_blk_per_group,
                      output_channels=self.output_channels)
        return config

    def dall_e_conv_layers(self):
        """{dall_e state-dict prefix: Conv2D}, e.g. "blocks.group_1.block_1.res_path.conv_2"."""
        return dall_e_conv_layers(self)


def dall_e_conv_layers(net):
    layers = {"blocks.input": net.input_conv}
    for g, blocks in enumerate(net.groups):
        for b, block in enumerate(blocks):
            prefix = f"blocks.group_{g + 1}.block_{b + 1}"
            if block.id_conv is not None:
                layers[f"{prefix}.id_path"] = block.id_conv
            for i, conv in enumerate(block.res_convs):
                layers[f"{prefix}.res_path.conv_{i + 1}"] = conv
    layers["blocks.output.conv"] = net.output_conv
    return layers
