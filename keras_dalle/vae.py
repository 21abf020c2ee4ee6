"""DALL·E discrete VAE (OpenAI's dVAE) for Keras 3.

The architecture mirrors OpenAI's `dall_e` package (Ramesh et al. 2021) layer for layer, so the
official `encoder.pkl` / `decoder.pkl` weights load into it (see `keras_dalle.vae_import`):

* Encoder: 7×7 input conv (num_channels → n_hid), then `group_count` groups of
  `n_blk_per_group` residual blocks with n_hid·2**g channels (g = 0, 1, …), 2×2 max-pool after
  every group but the last, then ReLU → 1×1 conv to `vocab_size` logits.
* Decoder: 1×1 input conv from the one-hot tokens (vocab_size → n_init, i.e. an embedding), then
  groups with n_hid·2**(group_count-1-g) channels, nearest ×2 upsampling after every group but
  the last, then ReLU → 1×1 conv to `output_channels` maps (μ for each image channel, then ln b).
* Residual block: `id_path(x) + post_gain · res_path(x)`, id_path a 1×1 conv when the channel
  count changes (else identity), post_gain = 1 / n_layers² with
  n_layers = group_count · n_blk_per_group, res_path = 4 × (ReLU → conv) with n_out / 4 hidden
  channels; kernels 3, 3, 3, 1 in the encoder and 1, 3, 3, 3 in the decoder.
* All convs are stride 1 with odd kernels and torch padding (k − 1) // 2, which is exactly
  Keras "same".

Pixels are mapped into [ε, 1 − ε] (ε = 0.1) before the encoder (`map_pixels`) and
reconstructions are `unmap_pixels(sigmoid(μ))` (the logit-Laplace parameterisation).

Example:
    vae = DiscreteVAE()                          # OpenAI's configuration, random weights
    tokens = vae.encode(images)                  # float32 [B, 256, 256, 3] in [0, 1] → int32 [B, 32, 32]
    recon = vae.decode(tokens)                   # → float32 [B, 256, 256, 3] in [0, 1]
"""

import math

import keras
import numpy as np
from keras import ops

LOGIT_LAPLACE_EPS = 0.1

__all__ = [
    "LOGIT_LAPLACE_EPS",
    "map_pixels",
    "unmap_pixels",
    "DVAEResBlock",
    "DVAEEncoder",
    "DVAEDecoder",
    "DiscreteVAE",
]


def map_pixels(x, eps=LOGIT_LAPLACE_EPS):
    """Maps pixels in [0, 1] to [eps, 1 - eps]: `(1 - 2·eps)·x + eps` (the dVAE encoder input)."""
    x = ops.convert_to_tensor(x, dtype="float32")
    return (1.0 - 2.0 * eps) * x + eps


def unmap_pixels(x, eps=LOGIT_LAPLACE_EPS):
    """Inverse of `map_pixels`, clipped to [0, 1]: `clip((x - eps) / (1 - 2·eps), 0, 1)`."""
    x = ops.convert_to_tensor(x, dtype="float32")
    return ops.clip((x - eps) / (1.0 - 2.0 * eps), 0.0, 1.0)


def _conv(filters, kernel_size, input_channels, name, policy):
    # dall_e's Conv2d init: w ~ N(0, 1 / (n_in · k²)), b = 0. Odd kernel, stride 1 and torch
    # padding (k - 1) // 2 is exactly "same".
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", use_bias=True, name=name, dtype=policy,
        kernel_initializer=keras.initializers.RandomNormal(
            stddev=1.0 / math.sqrt(input_channels * kernel_size ** 2)),
        bias_initializer="zeros")


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_concrete(x):
    """True when the values of `x` can be read now (numpy, or an eager tensor)."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return True
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - the project runs on the TF backend
        return False
    return tf.is_tensor(x) and tf.executing_eagerly() and hasattr(x, "numpy")


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
        self.input_channels = _check_positive_int("input_channels", input_channels)
        self.output_channels = _check_positive_int("output_channels", output_channels)
        if self.output_channels % 4:
            raise ValueError(f"output_channels must be a multiple of 4, got {output_channels}")
        self.n_layers = _check_positive_int("n_layers", n_layers)
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
        self.num_channels = _check_positive_int("num_channels", num_channels)
        self.n_hid = _check_positive_int("n_hid", n_hid)
        self.group_count = _check_positive_int("group_count", group_count)
        self.n_blk_per_group = _check_positive_int("n_blk_per_group", n_blk_per_group)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
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
        return _dall_e_conv_layers(self)


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
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.n_init = _check_positive_int("n_init", n_init)
        self.n_hid = _check_positive_int("n_hid", n_hid)
        self.group_count = _check_positive_int("group_count", group_count)
        self.n_blk_per_group = _check_positive_int("n_blk_per_group", n_blk_per_group)
        self.output_channels = _check_positive_int("output_channels", output_channels)
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
        return _dall_e_conv_layers(self)


def _dall_e_conv_layers(net):
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


@keras.saving.register_keras_serializable(package="keras_dalle")
class DiscreteVAE(keras.Model):
    """DALL·E's discrete VAE: `encode` images to token grids and `decode` token grids to images.

    Args:
        image_size: nominal (square) image size, used by `build()` and `token_grid_size`; the
            model is fully convolutional and accepts any size divisible by
            2**(group_count - 1).
        num_channels: image channels (3).
        n_hid: base width of the encoder and decoder (256).
        group_count: number of resolution groups (4 → 8× down/up-sampling).
        n_blk_per_group: residual blocks per group (2).
        vocab_size: codebook size K (8192).
        n_init: decoder token-embedding width (128).
        output_channels: decoder output maps (6 = μ and ln b for each of the 3 image channels;
            `decode` uses the first `num_channels`).

    `call(images)` returns the decoder's raw output maps for the argmax tokens of `images`
    (a deterministic reconstruction pass; the gumbel-softmax training pass comes later).
    """

    def __init__(self, image_size=256, num_channels=3, n_hid=256, group_count=4,
                 n_blk_per_group=2, vocab_size=8192, n_init=128, output_channels=6, **kwargs):
        super().__init__(**kwargs)
        self.image_size = _check_positive_int("image_size", image_size)
        self.num_channels = _check_positive_int("num_channels", num_channels)
        self.n_hid = _check_positive_int("n_hid", n_hid)
        self.group_count = _check_positive_int("group_count", group_count)
        self.n_blk_per_group = _check_positive_int("n_blk_per_group", n_blk_per_group)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size, minimum=2)
        self.n_init = _check_positive_int("n_init", n_init)
        self.output_channels = _check_positive_int("output_channels", output_channels)
        if self.output_channels < self.num_channels:
            raise ValueError(f"output_channels ({output_channels}) must be >= num_channels "
                             f"({num_channels}): the first num_channels maps are the means")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size must be divisible by 2**(group_count - 1) = "
                             f"{self.downsample_factor}, got {image_size}")
        policy = self.dtype_policy
        self.encoder = DVAEEncoder(
            num_channels=self.num_channels, n_hid=self.n_hid, group_count=self.group_count,
            n_blk_per_group=self.n_blk_per_group, vocab_size=self.vocab_size, name="encoder",
            dtype=policy)
        self.decoder = DVAEDecoder(
            vocab_size=self.vocab_size, n_init=self.n_init, n_hid=self.n_hid,
            group_count=self.group_count, n_blk_per_group=self.n_blk_per_group,
            output_channels=self.output_channels, name="decoder", dtype=policy)

    @property
    def downsample_factor(self):
        """Image pixels per token along each side: 2**(group_count - 1)."""
        return 2 ** (self.group_count - 1)

    @property
    def token_grid_size(self):
        """Tokens per side at `image_size` (32 for OpenAI's 256×256 model)."""
        return self.image_size // self.downsample_factor

    def build(self, input_shape=None):
        self.encoder.build((None, None, None, self.num_channels))
        self.decoder.build((None, None, None, self.vocab_size))
        self.built = True

    def _ensure_built(self):
        if not self.built:
            self.build()

    # ---------------------------------------------------------------- input checks
    def _check_images(self, images):
        if images is None:
            raise ValueError("images must be a float [batch, height, width, channels] array, "
                             "got None")
        shape = tuple(getattr(images, "shape", np.shape(images)))
        if len(shape) != 4:
            raise ValueError("images must have rank 4 [batch, height, width, channels], got "
                             f"shape {shape} (rank {len(shape)})")
        if shape[-1] is not None and shape[-1] != self.num_channels:
            raise ValueError(f"images must have {self.num_channels} channels (NHWC), got shape "
                             f"{shape}")
        f = self.downsample_factor
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if size is not None and (size % f or size == 0):
                raise ValueError(f"images {axis} must be a positive multiple of "
                                 f"2**(group_count - 1) = {f}, got shape {shape}")
        if _is_concrete(images):
            values = np.asarray(images if isinstance(images, (np.ndarray, list, tuple))
                                else ops.convert_to_numpy(images))
            if values.dtype == bool or not np.issubdtype(values.dtype, np.number) or \
                    np.issubdtype(values.dtype, np.complexfloating):
                raise ValueError(f"images must be real numbers in [0, 1], got dtype "
                                 f"{values.dtype}")
            if values.size:
                lo, hi = float(np.min(values)), float(np.max(values))
                if not (lo >= 0.0 and hi <= 1.0):
                    raise ValueError(f"images must be in [0, 1], got min {lo:g} max {hi:g}")
        return ops.cast(images, "float32")

    def _check_tokens(self, tokens):
        if tokens is None:
            raise ValueError("tokens must be an int [batch, height, width] array, got None")
        shape = tuple(getattr(tokens, "shape", np.shape(tokens)))
        if len(shape) != 3:
            raise ValueError("tokens must have rank 3 [batch, height, width], got shape "
                             f"{shape} (rank {len(shape)})")
        dtype = getattr(tokens, "dtype", None)
        if dtype is None:
            tokens = np.asarray(tokens)
            dtype = tokens.dtype
        dtype = keras.backend.standardize_dtype(dtype)
        if "int" not in dtype:
            raise ValueError(f"tokens must be integer ids, got dtype {dtype}")
        if _is_concrete(tokens):
            values = np.asarray(tokens if isinstance(tokens, np.ndarray)
                                else ops.convert_to_numpy(tokens))
            if values.size:
                lo, hi = int(np.min(values)), int(np.max(values))
                if lo < 0 or hi >= self.vocab_size:
                    raise ValueError(f"token ids must be in [0, {self.vocab_size}), got min "
                                     f"{lo} max {hi}")
        return ops.cast(tokens, "int32")

    # ---------------------------------------------------------------- public API
    def encoder_logits(self, images):
        """float32 NHWC images in [0, 1] → float32 logits [B, H/f, W/f, vocab_size]."""
        self._ensure_built()
        images = self._check_images(images)
        return ops.cast(self.encoder(map_pixels(images)), "float32")

    def encode(self, images):
        """float32 NHWC images in [0, 1] → int32 token ids [B, H/f, W/f] (argmax, no noise)."""
        return ops.cast(ops.argmax(self.encoder_logits(images), axis=-1), "int32")

    def decoder_outputs(self, tokens):
        """int32 token ids [B, h, w] → raw decoder maps [B, h·f, w·f, output_channels] (float32)."""
        self._ensure_built()
        tokens = self._check_tokens(tokens)
        one_hot = ops.one_hot(tokens, self.vocab_size, dtype=self.decoder.compute_dtype)
        return ops.cast(self.decoder(one_hot), "float32")

    def decode(self, tokens):
        """int32 token ids [B, h, w] → float32 NHWC images in [0, 1] (unmap(sigmoid(μ)))."""
        maps = self.decoder_outputs(tokens)
        return unmap_pixels(ops.sigmoid(maps[..., :self.num_channels]))

    def call(self, images):
        logits = self.encoder(map_pixels(images))
        tokens = ops.argmax(logits, axis=-1)
        return self.decoder(ops.one_hot(tokens, self.vocab_size, dtype=logits.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, num_channels=self.num_channels,
                      n_hid=self.n_hid, group_count=self.group_count,
                      n_blk_per_group=self.n_blk_per_group, vocab_size=self.vocab_size,
                      n_init=self.n_init, output_channels=self.output_channels)
        return config
