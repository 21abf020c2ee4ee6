"""DALL·E discrete VAE (OpenAI's dVAE) for Keras 3.

The architecture mirrors OpenAI's `dall_e` package (Ramesh et al. 2021) layer for layer, so the
official `encoder.pkl` / `decoder.pkl` weights load into it (see `keras_dalle.vae.openai_import`):

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
uses them, see `keras_dalle.vae.presets` for why and the measurements):

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

import keras
import numpy as np
from keras import ops

from keras_clip.strategy import all_reduce_sum
from keras_clip.validation import check_positive_int, is_concrete
from keras_dalle.vae.blocks import DVAEDecoder, DVAEEncoder
from keras_dalle.vae.losses import (RECONSTRUCTION_LOSSES, gaussian_nll, gumbel_softmax,
                                    kl_to_uniform, logit_laplace_nll, map_pixels, marginal_kl,
                                    unmap_pixels)
from keras_dalle.vae.metrics import CodebookUsage, LastValue, code_perplexity, psnr
from keras_dalle.vae.schedule import VAETrainingSchedule


@keras.saving.register_keras_serializable(package="keras_dalle")
class DiscreteVAE(keras.Model):
    """DALL·E's discrete VAE: `encode` images to token grids and `decode` token grids to images.

    Args:
        image_size: nominal (square) image size, used by `token_grid_size`; the
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

    The constructor builds the model (creates its weights), as CLIP's and DALLE's do, so a new
    model can be saved, counted (`count_params`) or have weights assigned right away.

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
        self.codebook_usage_window = check_positive_int("codebook_usage_window",
                                                         codebook_usage_window)
        self.image_size = check_positive_int("image_size", image_size)
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.n_hid = check_positive_int("n_hid", n_hid)
        self.group_count = check_positive_int("group_count", group_count)
        self.n_blk_per_group = check_positive_int("n_blk_per_group", n_blk_per_group)
        self.vocab_size = check_positive_int("vocab_size", vocab_size, minimum=2)
        self.n_init = check_positive_int("n_init", n_init)
        self.output_channels = check_positive_int("output_channels", output_channels)
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
        # Training metrics, in the order fit/evaluate report them (see `metrics`).
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.temperature_tracker = LastValue(name="temperature")
        self.kl_weight_tracker = LastValue(name="kl_weight")
        self.psnr_tracker = keras.metrics.Mean(name="psnr")
        self.perplexity_tracker = keras.metrics.Mean(name="perplexity")
        self.codebook_usage_tracker = CodebookUsage(self.vocab_size, self.codebook_usage_window,
                                                    name="codebook_usage")
        # Built here, like CLIP and DALLE: a new model has its weights, so `save()` writes them
        # and `count_params()` works before any call.
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_loss_tracker, self.kl_tracker,
                self.temperature_tracker, self.kl_weight_tracker, self.psnr_tracker,
                self.perplexity_tracker, self.codebook_usage_tracker]

    @property
    def downsample_factor(self):
        """Image pixels per token along each side: 2**(group_count - 1)."""
        return 2 ** (self.group_count - 1)

    @property
    def token_grid_size(self):
        """Tokens per side at `image_size` (32 for OpenAI's 256×256 model)."""
        return self.image_size // self.downsample_factor

    def build(self, input_shape=None):
        # Called by __init__; idempotent, so a later build() (e.g. `build_from_config` when
        # Keras loads a saved model) does not re-create the sub-models' variables.
        if not self.encoder.built:
            self.encoder.build((None, None, None, self.num_channels))
        if not self.decoder.built:
            self.decoder.build((None, None, None, self.vocab_size))
        self.built = True

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
        if is_concrete(images):
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
        if is_concrete(tokens):
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
        images = self._check_images(images)
        return ops.cast(self.encoder(map_pixels(images)), "float32")

    def encode(self, images):
        """float32 NHWC images in [0, 1] → int32 token ids [B, H/f, W/f] (argmax, no noise)."""
        return ops.cast(ops.argmax(self.encoder_logits(images), axis=-1), "int32")

    def decoder_outputs(self, tokens):
        """int32 token ids [B, h, w] → raw decoder maps [B, h·f, w·f, output_channels] (float32)."""
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
        a dict with an "images" entry. uint8 images are scaled by 1/255; float images outside
        [0, 1] fail the step (eagerly a ValueError, in the graph an InvalidArgumentError)."""
        if isinstance(data, (tuple, list)):
            data = data[0]
        if isinstance(data, dict):
            if "images" not in data:
                raise ValueError(f"batch dict must have an 'images' entry, got keys "
                                 f"{sorted(data)}")
            data = data["images"]
        images = ops.convert_to_tensor(data)
        if keras.backend.standardize_dtype(images.dtype) == "uint8":
            return self._check_images(ops.cast(images, "float32") / 255.0)  # in [0, 1]
        return self._assert_unit_range(self._check_images(images))

    @staticmethod
    def _assert_unit_range(images):
        """`images` with an in-graph check that every value is in [0, 1].

        fit / evaluate batches are graph tensors, whose values `_check_images` cannot read:
        fail the step with a named message instead of training to a NaN loss (as
        `DALLE._range_asserts` does for token ids). NaN values fail the check too. (An
        XLA-compiled step, `compile(jit_compile=True)`, drops the assertion.)
        """
        import tensorflow as tf

        lo, hi = tf.reduce_min(images), tf.reduce_max(images)
        check = tf.debugging.Assert(
            tf.logical_and(lo >= 0.0, hi <= 1.0),
            ["images must be float in [0, 1] (uint8 images are scaled by 1/255; divide float "
             "0..255 images by 255), got min", lo, "max", hi])
        with tf.control_dependencies([check]):
            return tf.identity(images)

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
        counts = all_reduce_sum(counts)  # the global batch's histogram on every replica
        recon = unmap_pixels(ops.sigmoid(ops.cast(hard_maps[..., :self.num_channels],
                                                  "float32")))
        batch = ops.shape(images)[0]
        self.loss_tracker.update_state(unscaled_loss, sample_weight=batch)
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
