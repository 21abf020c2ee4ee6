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

Training (the paper's recipe, via `model.fit`; TensorFlow backend): see "Training" below and
`DiscreteVAE.train_step`.

Example:
    vae = DiscreteVAE()                          # OpenAI's configuration, random weights
    tokens = vae.encode(images)                  # float32 [B, 256, 256, 3] in [0, 1] → int32 [B, 32, 32]
    recon = vae.decode(tokens)                   # → float32 [B, 256, 256, 3] in [0, 1]

    vae.compile(optimizer=keras.optimizers.AdamW(1e-3))   # no loss: the model computes its own
    vae.fit(dataset_of_images, epochs=...)       # float [0, 1] or uint8 NHWC, or {"images": ...}

Training
--------
Each `train_step` (Ramesh et al. 2021, §2.1 and appendix A):

* q(z | x) = softmax(logits) of the encoder on `map_pixels(x)`, one categorical per token.
* Gumbel-softmax relaxation: z = softmax((logits + g) / τ), g ~ Gumbel(0, 1), fed to the decoder
  (a soft "one-hot"). τ is annealed from 1 to 1/16 on a cosine schedule (`VAETrainingSchedule`).
* Reconstruction: logit-Laplace negative log-likelihood of the mapped pixels
  x' = (1 − 2ε)x + ε ∈ [ε, 1 − ε] under the decoder's μ (first C maps) and ln b (next C maps):
  −ln f(x'|μ, b) = ln 2 + ln b + ln x' + ln(1 − x') + |logit(x') − μ| / b.
* KL(q(z|x) ‖ uniform prior over the K codes) = ln K − H(q), per token.
* loss = reconstruction + β·KL, β warmed up 0 → 6.6 on a cosine schedule.

Two optional departures from the paper (both off by default; the small "dvae-shapes" preset
uses them, see `keras_dalle.presets` for why and the measurements):

* `marginal_kl_weight` γ (in `VAETrainingSchedule`): adds γ·h·w·KL(q̄ ‖ uniform), q̄ the
  batch-mean posterior. The paper's per-token KL decomposes exactly into this codebook-usage
  part plus the information the tokens carry (`marginal_kl`); γ puts extra weight on usage only.
* `reconstruction_loss="gaussian"`: a fixed-σ Gaussian NLL of the mapped pixels around
  sigmoid(μ) instead of the logit-Laplace (a scaled squared error; same reconstruction
  `unmap(sigmoid(μ))`, the ln b maps unused).

Normalisation: both terms are totals *per image* — the reconstruction NLL is summed over all
H·W·C pixel values and the KL over all h·w token positions, then each is averaged over the batch.
So `loss` is the (β-weighted) negative ELBO of one image in nats, exactly the paper's objective;
with β = 1 it is an upper bound on −ln p(x'). (Adam(W) is invariant to the overall scale, so
dividing by H·W·C would not change training; the logs keep the per-image units.) Under a
`tf.distribute` strategy each replica's loss is divided by the number of replicas before the
gradient, so the summed gradients equal the gradient of the global-batch mean.

The schedules are functions of `optimizer.iterations`, so they resume correctly from a
checkpoint that includes the optimizer (e.g. a `.keras` file of a compiled model).
"""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

LOGIT_LAPLACE_EPS = 0.1
RECONSTRUCTION_LOSSES = ("logit_laplace", "gaussian")

__all__ = [
    "LOGIT_LAPLACE_EPS",
    "map_pixels",
    "unmap_pixels",
    "VAETrainingSchedule",
    "cosine_schedule",
    "gumbel_softmax",
    "kl_to_uniform",
    "marginal_kl",
    "logit_laplace_nll",
    "gaussian_nll",
    "psnr",
    "code_perplexity",
    "CodebookUsage",
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


# --------------------------------------------------------------------------- training pieces
def cosine_schedule(step, start, end, steps):
    """Cosine interpolation from `start` (step 0) to `end` (step >= `steps`), then constant.

    value(t) = end + (start − end) · ½ · (1 + cos(π · min(t / steps, 1))). `steps` <= 0 means
    `end` from the start. `step` may be a Python number or a (symbolic) tensor; returns float32.
    """
    step = ops.cast(step, "float32")
    if steps <= 0:
        return ops.zeros_like(step) + float(end)
    frac = ops.minimum(ops.maximum(step / float(steps), 0.0), 1.0)
    return float(end) + (float(start) - float(end)) * 0.5 * (1.0 + ops.cos(math.pi * frac))


@keras.saving.register_keras_serializable(package="keras_dalle")
@dataclasses.dataclass
class VAETrainingSchedule:
    """Temperature and KL-weight schedules of dVAE training (defaults: the DALL·E paper).

    τ(t) goes `temperature_start` → `temperature_end` over `temperature_steps` updates and β(t)
    goes `kl_weight_start` → `kl_weight_end` over `kl_warmup_steps` updates, both on a cosine
    schedule (`cosine_schedule`), then stay constant. t is the optimizer's iteration counter.

    Paper: τ 1 → 1/16 over the first 150,000 updates, β 0 → 6.6 over the first 5,000.

    `marginal_kl_weight` γ (constant; 0 in the paper) adds γ·`marginal_kl(logits)`, extra
    weight on the codebook-usage part of the KL term (see `marginal_kl`).
    """

    temperature_start: float = 1.0
    temperature_end: float = 1.0 / 16.0
    temperature_steps: int = 150_000
    kl_weight_start: float = 0.0
    kl_weight_end: float = 6.6
    kl_warmup_steps: int = 5_000
    marginal_kl_weight: float = 0.0

    def __post_init__(self):
        for name in ("temperature_start", "temperature_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            setattr(self, name, float(value))
        for name in ("kl_weight_start", "kl_weight_end", "marginal_kl_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
        for name in ("temperature_steps", "kl_warmup_steps"):
            setattr(self, name, _check_positive_int(name, getattr(self, name), minimum=0))

    def temperature(self, step):
        """Gumbel-softmax temperature τ at optimizer step `step` (float32)."""
        return cosine_schedule(step, self.temperature_start, self.temperature_end,
                               self.temperature_steps)

    def kl_weight(self, step):
        """KL weight β at optimizer step `step` (float32)."""
        return cosine_schedule(step, self.kl_weight_start, self.kl_weight_end,
                               self.kl_warmup_steps)

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def coerce(cls, value):
        """None → the paper's schedule; a dict → `cls(**dict)`; an instance → itself."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"Unknown training_schedule keys {unknown}; expected a subset "
                                 f"of {[f.name for f in dataclasses.fields(cls)]}")
            return cls(**value)
        raise TypeError("training_schedule must be None, a dict or a VAETrainingSchedule, got "
                        f"{type(value).__name__}")


def gumbel_softmax(logits, temperature, noise=None, seed=None):
    """Relaxed one-hot sample softmax((logits + g) / τ) over the last axis, g ~ Gumbel(0, 1).

    `noise`: optional pre-drawn Gumbel noise (same shape as `logits`, for tests); otherwise it is
    drawn as g = −ln(−ln u), u ~ U[0, 1) (`seed`: optional op-level seed).
    """
    logits = ops.cast(logits, "float32")
    if noise is None:
        noise = sample_gumbel(ops.shape(logits), seed=seed)
    return ops.softmax((logits + ops.cast(noise, "float32")) / temperature, axis=-1)


def sample_gumbel(shape, seed=None):
    """Standard Gumbel noise −ln(−ln u), u ~ U[0, 1), float32 (TensorFlow RNG, replica-safe)."""
    import tensorflow as tf

    u = tf.random.uniform(shape, 0.0, 1.0, dtype=tf.float32, seed=seed)
    tiny = 1e-20
    return -tf.math.log(-tf.math.log(u + tiny) + tiny)


def kl_to_uniform(logits):
    """KL(softmax(logits) ‖ uniform over the K codes) per position: Σ q ln q + ln K = ln K − H(q).

    logits [..., K] → KL [...] in nats (float32).
    """
    logits = ops.cast(logits, "float32")
    log_q = ops.log_softmax(logits, axis=-1)
    k = ops.shape(logits)[-1]
    return ops.sum(ops.exp(log_q) * log_q, axis=-1) + ops.log(ops.cast(k, "float32"))


def marginal_kl(logits):
    """h·w · KL(q̄ ‖ uniform), q̄ = the batch's mean posterior over all token positions.

    The paper's KL term decomposes as Σ_t KL(q_t ‖ u) = h·w · KL(q̄ ‖ u) + Σ_t KL(q_t ‖ q̄): a
    codebook-usage part (this function, in the same per-image units) and the information the
    tokens carry. `VAETrainingSchedule.marginal_kl_weight` adds extra weight on the usage part
    only (0 in the paper's recipe). Returned as a scalar (it is a batch statistic; under a
    distribution strategy, of the replica's batch).
    """
    logits = ops.cast(logits, "float32")
    q = ops.softmax(logits, axis=-1)
    k = ops.shape(logits)[-1]
    q_bar = ops.mean(ops.reshape(q, (-1, k)), axis=0)
    kl = ops.sum(q_bar * ops.log(ops.maximum(q_bar, 1e-30))) + ops.log(ops.cast(k, "float32"))
    tokens_per_image = ops.cast(ops.shape(logits)[1] * ops.shape(logits)[2], "float32")
    return tokens_per_image * kl


def logit_laplace_nll(x, mu, log_b):
    """Elementwise −ln f(x | μ, b) of the logit-Laplace density (Ramesh et al. 2021, eq. 2).

    f(x | μ, b) = 1 / (2 b x (1 − x)) · exp(−|logit(x) − μ| / b) for x in (0, 1); here x are
    mapped pixels in [ε, 1 − ε] (`map_pixels`), μ the decoder's location maps and `log_b` = ln b
    its log-scale maps. Returns ln 2 + ln b + ln x + ln(1 − x) + |logit(x) − μ| · exp(−ln b).
    """
    x = ops.cast(x, "float32")
    mu = ops.cast(mu, "float32")
    log_b = ops.cast(log_b, "float32")
    log_x, log_1mx = ops.log(x), ops.log(1.0 - x)
    return (math.log(2.0) + log_b + log_x + log_1mx
            + ops.abs(log_x - log_1mx - mu) * ops.exp(-log_b))


def gaussian_nll(x, mean, sigma):
    """Elementwise −ln N(x | mean, σ²) = (x − mean)² / (2σ²) + ln(σ·√(2π)) (fixed σ).

    The `reconstruction_loss="gaussian"` alternative to the paper's logit-Laplace: x are mapped
    pixels and mean = sigmoid(μ), so it is a (scaled) squared error in pixel space with the same
    reconstruction `unmap(sigmoid(μ))`; the ln b maps are unused.
    """
    x = ops.cast(x, "float32")
    mean = ops.cast(mean, "float32")
    return ops.square(x - mean) / (2.0 * sigma ** 2) + math.log(sigma * math.sqrt(2.0 * math.pi))


def psnr(images, reconstructions, max_value=1.0):
    """Per-image PSNR in dB, 10·log10(max² / MSE), NHWC → [B] (MSE floored at 1e-10)."""
    images = ops.cast(images, "float32")
    reconstructions = ops.cast(reconstructions, "float32")
    mse = ops.mean(ops.square(images - reconstructions), axis=(1, 2, 3))
    return 10.0 * ops.log(max_value ** 2 / ops.maximum(mse, 1e-10)) / math.log(10.0)


def code_perplexity(counts):
    """exp(entropy) of the code distribution `counts / sum(counts)` (counts: [K]); 1 … K."""
    counts = ops.cast(counts, "float32")
    p = counts / ops.maximum(ops.sum(counts), 1e-12)
    return ops.exp(-ops.sum(ops.where(p > 0, p * ops.log(ops.maximum(p, 1e-30)), 0.0)))


class _LastValue(keras.metrics.Metric):
    """Reports the most recent value (e.g. the scheduled temperature); replica-safe."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable((), initializer="zeros", name="value",
                                       aggregation="only_first_replica")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.value.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)


class CodebookUsage(keras.metrics.Metric):
    """Fraction of the K codes used at least once in the most recent `window` batches.

    `update_state(counts)` takes one batch's code histogram [K] (under a distribution strategy:
    the histogram of the global batch, i.e. already summed over replicas — every replica then
    holds the same value and the first replica's is kept). A ring buffer of the last `window`
    histograms is kept; `reset_state` (e.g. at the start of each epoch) clears it.
    """

    def __init__(self, vocab_size, window=50, name="codebook_usage", **kwargs):
        super().__init__(name=name, **kwargs)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.window = _check_positive_int("window", window)
        self.counts = self.add_variable((self.window, self.vocab_size), initializer="zeros",
                                        name="counts", aggregation="only_first_replica")
        self.position = self.add_variable((), initializer="zeros", dtype="int32",
                                          name="position", aggregation="only_first_replica")

    def update_state(self, counts):
        counts = ops.reshape(ops.cast(counts, self.counts.dtype), (1, self.vocab_size))
        slot = ops.mod(ops.convert_to_tensor(self.position), self.window)
        self.counts.assign(ops.slice_update(self.counts, (slot, 0), counts))
        self.position.assign(self.position + 1)

    def result(self):
        used = ops.cast(ops.sum(self.counts, axis=0) > 0, "float32")
        return ops.mean(used)

    def get_config(self):
        return dict(super().get_config(), vocab_size=self.vocab_size, window=self.window)


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
            `decode` uses the first `num_channels`; training needs 2·num_channels).
        training_schedule: `VAETrainingSchedule` (or its dict) of the gumbel-softmax temperature
            and KL weight; None → the paper's (τ 1 → 1/16 over 150k updates, β 0 → 6.6 over 5k).
        codebook_usage_window: number of recent batches over which the `codebook_usage` metric
            counts the codes used.
        reconstruction_loss: "logit_laplace" (the paper) or "gaussian" (fixed σ, see
            `gaussian_nll`).
        reconstruction_sigma: σ of the "gaussian" reconstruction loss, in mapped-pixel units.

    `call(images)` returns the decoder's raw output maps for the argmax tokens of `images`
    (the deterministic reconstruction pass). Training: `compile(optimizer=...)` (no loss) and
    `fit(images)`; see the module docstring and `train_step`.

    Metrics logged by `fit` / `evaluate`: `loss` (reconstruction + β·KL [+ γ·marginal KL],
    nats per image),
    `reconstruction_loss` (NLL summed over pixels and channels, nats per image), `kl` (KL to the
    uniform prior summed over token positions, nats per image), `temperature` (τ), `kl_weight`
    (β), `psnr` (dB, mean over images, of the *argmax-token* reconstruction `decode(encode(x))`
    against the input — what the tokens actually reproduce, not the relaxed training pass),
    `perplexity` (exp-entropy of the batch's argmax-code histogram, averaged over batches) and
    `codebook_usage` (fraction of codes used in the last `codebook_usage_window` batches).
    `train_step` optimises the gumbel-softmax relaxation; `test_step` (validation / `evaluate`)
    reports the same quantities for the argmax tokens (no noise), so its reconstruction loss is
    that of the hard codes.
    """

    def __init__(self, image_size=256, num_channels=3, n_hid=256, group_count=4,
                 n_blk_per_group=2, vocab_size=8192, n_init=128, output_channels=6,
                 training_schedule=None, codebook_usage_window=50,
                 reconstruction_loss="logit_laplace", reconstruction_sigma=0.05, **kwargs):
        super().__init__(**kwargs)
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got "
                             f"{reconstruction_loss!r}")
        self.reconstruction_loss = reconstruction_loss
        if isinstance(reconstruction_sigma, bool) or not isinstance(
                reconstruction_sigma, (int, float)) or not reconstruction_sigma > 0:
            raise ValueError(f"reconstruction_sigma must be a positive number, got "
                             f"{reconstruction_sigma!r}")
        self.reconstruction_sigma = float(reconstruction_sigma)
        self.training_schedule = VAETrainingSchedule.coerce(training_schedule)
        self.codebook_usage_window = _check_positive_int("codebook_usage_window",
                                                         codebook_usage_window)
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
        # Training metrics (reported by fit/evaluate after the compiled "loss").
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.temperature_tracker = _LastValue(name="temperature")
        self.kl_weight_tracker = _LastValue(name="kl_weight")
        self.psnr_tracker = keras.metrics.Mean(name="psnr")
        self.perplexity_tracker = keras.metrics.Mean(name="perplexity")
        self.codebook_usage_tracker = CodebookUsage(self.vocab_size, self.codebook_usage_window,
                                                    name="codebook_usage")

    @property
    def downsample_factor(self):
        """Image pixels per token along each side: 2**(group_count - 1)."""
        return 2 ** (self.group_count - 1)

    @property
    def token_grid_size(self):
        """Tokens per side at `image_size` (32 for OpenAI's 256×256 model)."""
        return self.image_size // self.downsample_factor

    def build(self, input_shape=None):
        # Idempotent: compile() builds the model, and a later explicit build() must not try to
        # re-create the sub-models' variables.
        if not self.encoder.built:
            self.encoder.build((None, None, None, self.num_channels))
        if not self.decoder.built:
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

    # ---------------------------------------------------------------- training
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training. The model computes its own loss: pass only the optimizer (and
        e.g. `jit_compile`, `steps_per_execution`); `loss` / `metrics` must be None."""
        if loss is not None:
            raise ValueError("DiscreteVAE computes its own loss (reconstruction NLL + β·KL to "
                             "the uniform prior); call compile(optimizer=...) without `loss`")
        if metrics:
            raise ValueError("DiscreteVAE tracks its own metrics (reconstruction_loss, kl, "
                             "temperature, kl_weight, psnr, perplexity, codebook_usage); "
                             "call compile(optimizer=...) without `metrics`")
        for name in ("loss_weights", "weighted_metrics"):
            if kwargs.get(name):
                raise ValueError(f"DiscreteVAE.compile does not take `{name}`")
        if self.reconstruction_loss == "logit_laplace" and \
                self.output_channels < 2 * self.num_channels:
            raise ValueError(f"logit-Laplace training needs output_channels >= 2·num_channels "
                             f"({2 * self.num_channels}: μ and ln b per image channel), got "
                             f"{self.output_channels}")
        self._ensure_built()  # so the optimizer sees every variable (fit never calls build)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded model (so a `.keras` checkpoint resumes with its optimizer state
        and iteration counter, which drives the τ / β schedules)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _images_from_data(self, data):
        """Images (float32 in [0, 1]) from a fit/evaluate batch: a tensor, a tuple (x, ...) or
        a dict with an "images" entry. uint8 images are scaled by 1/255."""
        if isinstance(data, (tuple, list)):
            data = data[0]
        if isinstance(data, dict):
            if "images" not in data:
                raise ValueError(f"batch dict must have an 'images' entry, got keys "
                                 f"{sorted(data)}")
            data = data["images"]
        images = ops.convert_to_tensor(data)
        if keras.backend.standardize_dtype(images.dtype) == "uint8":
            images = ops.cast(images, "float32") / 255.0
        return self._check_images(images)

    def _schedule_step(self):
        if getattr(self, "optimizer", None) is None:
            return ops.zeros((), "int64")
        return ops.convert_to_tensor(self.optimizer.iterations)

    def _reconstruction_nll(self, images, maps):
        """Reconstruction NLL per image [B] (nats): summed over pixels and channels."""
        c = self.num_channels
        maps = ops.cast(maps, "float32")
        if self.reconstruction_loss == "gaussian":
            nll = gaussian_nll(map_pixels(images), ops.sigmoid(maps[..., :c]),
                               self.reconstruction_sigma)
        else:
            nll = logit_laplace_nll(map_pixels(images), maps[..., :c], maps[..., c:2 * c])
        return ops.sum(nll, axis=(1, 2, 3))

    def compute_loss_terms(self, images, temperature, kl_weight, relaxed=True, noise=None):
        """Loss terms of one batch (differentiable; used by train_step / test_step).

        relaxed=True: decoder input is the gumbel-softmax sample at `temperature` (training);
        False: the one-hot argmax tokens (no noise). Returns a dict of per-image [B] tensors
        `loss`, `reconstruction_loss`, `kl` plus `logits` and `maps` (decoder output).
        """
        logits = ops.cast(self.encoder(map_pixels(images)), "float32")
        if relaxed:
            z = gumbel_softmax(logits, temperature, noise=noise)
        else:
            z = ops.one_hot(ops.argmax(logits, axis=-1), self.vocab_size, dtype="float32")
        maps = self.decoder(ops.cast(z, self.decoder.compute_dtype))
        recon = self._reconstruction_nll(images, maps)
        kl = ops.sum(kl_to_uniform(logits), axis=(1, 2))
        loss = recon + kl_weight * kl
        gamma = self.training_schedule.marginal_kl_weight
        if gamma:
            loss = loss + gamma * marginal_kl(logits)
        return dict(loss=loss, reconstruction_loss=recon, kl=kl, logits=logits, maps=maps)

    def _update_metrics(self, images, terms, hard_maps, temperature, kl_weight, unscaled_loss):
        import tensorflow as tf

        tokens = ops.argmax(terms["logits"], axis=-1)
        ids = tf.reshape(tf.cast(tokens, tf.int32), [-1])  # (segment sum: XLA-compatible)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(ids, tf.float32), ids,
                                              self.vocab_size)
        counts = _all_reduce_sum(counts)  # the global batch's histogram on every replica
        recon = unmap_pixels(ops.sigmoid(ops.cast(hard_maps[..., :self.num_channels],
                                                  "float32")))
        batch = ops.shape(images)[0]
        self._loss_tracker.update_state(unscaled_loss, sample_weight=batch)
        self.reconstruction_loss_tracker.update_state(terms["reconstruction_loss"])
        self.kl_tracker.update_state(terms["kl"])
        self.temperature_tracker.update_state(temperature)
        self.kl_weight_tracker.update_state(kl_weight)
        self.psnr_tracker.update_state(psnr(images, recon))
        self.perplexity_tracker.update_state(code_perplexity(counts))
        self.codebook_usage_tracker.update_state(counts)
        return self.get_metrics_result()

    def train_step(self, data):
        """One optimisation step of the gumbel-softmax ELBO (TensorFlow backend).

        The per-replica loss is the mean over the replica's batch divided by the number of
        replicas (the optimizer sums the replicas' gradients), then `optimizer.scale_loss`
        (mixed-precision loss scaling); gradients are applied with `optimizer.apply_gradients`.
        """
        import tensorflow as tf

        images = self._images_from_data(data)
        step = self._schedule_step()
        temperature = self.training_schedule.temperature(step)
        kl_weight = self.training_schedule.kl_weight(step)
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.compute_loss_terms(images, temperature, kl_weight, relaxed=True)
            loss = ops.mean(terms["loss"])
            scaled = loss / float(num_replicas) if num_replicas > 1 else loss
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))

        # PSNR of the argmax tokens (an extra decoder pass, no gradient).
        hard = ops.one_hot(ops.argmax(ops.stop_gradient(terms["logits"]), axis=-1),
                           self.vocab_size, dtype=self.decoder.compute_dtype)
        hard_maps = self.decoder(hard)
        return self._update_metrics(images, terms, hard_maps, temperature, kl_weight, loss)

    def test_step(self, data):
        """Validation: loss terms of the argmax tokens (no gumbel noise) at the current β."""
        images = self._images_from_data(data)
        step = self._schedule_step()
        temperature = self.training_schedule.temperature(step)
        kl_weight = self.training_schedule.kl_weight(step)
        terms = self.compute_loss_terms(images, temperature, kl_weight, relaxed=False)
        return self._update_metrics(images, terms, terms["maps"], temperature, kl_weight,
                                    ops.mean(terms["loss"]))

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, num_channels=self.num_channels,
                      n_hid=self.n_hid, group_count=self.group_count,
                      n_blk_per_group=self.n_blk_per_group, vocab_size=self.vocab_size,
                      n_init=self.n_init, output_channels=self.output_channels,
                      training_schedule=self.training_schedule.get_config(),
                      codebook_usage_window=self.codebook_usage_window,
                      reconstruction_loss=self.reconstruction_loss,
                      reconstruction_sigma=self.reconstruction_sigma)
        return config


def _all_reduce_sum(x):
    """Sum `x` over the replicas of the current tf.distribute strategy (identity with one)."""
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync <= 1:
        return x
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: nothing to reduce
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)
