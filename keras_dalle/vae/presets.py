"""dVAE presets: name → `DiscreteVAE` constructor arguments (plain dicts), plus the training
hyper-parameters that go with each (`TRAINING_PRESETS`, used by `keras_dalle.vae.train`).

* "openai": OpenAI's released dVAE (Ramesh et al. 2021): 256×256 → 32×32 tokens, K = 8192,
  n_hid 256, 4 groups × 2 blocks, n_init 128 (53,786,240 + 43,829,766 parameters), with the
  paper's τ / β schedules. Training hyper-parameters from the paper's appendix A.2 (AdamW
  β = (0.9, 0.999), ε = 1e-8, weight decay 1e-4, step size 1e-4 cosine-annealed to 1.25e-6,
  batch 512, 3M updates) — this is what the paper says, it is not runnable on a CPU.
* "dvae-shapes": a small model for the built-in shapes data (`keras_clip.data.shapes`):
  64×64 → 16×16 tokens, K = 512, n_hid 16 (~93k parameters), trained for 1,100 updates of
  batch 8 (minutes on a CPU). It departs from the paper in two ways, because the paper's recipe
  does not get there in that budget on this data (the measurements: README, "Discrete VAE"):
    - the logit-Laplace loss learns these flat-colour images slowly — an L1 in logit space
      predicts the background (the median) until it is sure of an object pixel — so it uses
      `reconstruction_loss="gaussian"` (σ = 0.03 in mapped-pixel units);
    - the codebook collapses to a few tens of the 512 codes whatever β (1 to 6.6, warm-up or
      not): the decoder reconstructs edges from the spatial layout of a handful of codes. The
      usage part of the KL term gets extra weight (`marginal_kl_weight` 150), which keeps q
      spread early.
  β is the paper's 6.6 scaled by tokens per pixel (48 values per token here, 192 in the paper:
  6.6 · 48 / 192 = 1.65), warmed up over 100 updates; τ 1 → 1/16 over the whole run.
  Targets: held-out PSNR ≥ 25 dB of the argmax-token reconstructions and ≥ 50% of the codes
  used; results and timings of `make demo-dvae`: README, "Discrete VAE".
* "dvae-shapes-8x8": "dvae-shapes" with a fourth group (one more 2× downsampling): 64×64 →
  8×8 tokens, the same training. The DALL·E demo's dVAE (`make demo-dvae`): a transformer on
  64 image tokens learns to draw within the demo's minutes, on 256 it does not (README,
  "Prompt fidelity"); its reconstructions are less exact (25.1 dB, 163 of 512 codes used, and
  small stars come back as blobs).
* "dvae-tiny": for tests (16×16 → 8×8 tokens, K = 16).

Example:
    vae = dvae_from_preset("dvae-shapes")
    vae.compile(optimizer=keras.optimizers.AdamW(**TRAINING_PRESETS["dvae-shapes"]["optimizer"]))
"""

from keras_clip.validation import lookup_preset
from keras_dalle.vae.model import DiscreteVAE
from keras_dalle.vae.schedule import VAETrainingSchedule

__all__ = ["PRESETS", "TRAINING_PRESETS", "get_preset", "get_training_preset",
           "dvae_from_preset"]

PAPER_SCHEDULE = dict(temperature_start=1.0, temperature_end=1.0 / 16.0,
                      temperature_steps=150_000, kl_weight_start=0.0, kl_weight_end=6.6,
                      kl_warmup_steps=5_000)

PRESETS = {
    "openai": dict(image_size=256, num_channels=3, n_hid=256, group_count=4, n_blk_per_group=2,
                   vocab_size=8192, n_init=128, output_channels=6,
                   training_schedule=dict(PAPER_SCHEDULE)),
    "dvae-shapes": dict(image_size=64, num_channels=3, n_hid=16, group_count=3,
                        n_blk_per_group=1, vocab_size=512, n_init=32, output_channels=6,
                        training_schedule=dict(temperature_start=1.0, temperature_end=1.0 / 16.0,
                                               temperature_steps=1_100, kl_weight_start=0.0,
                                               kl_weight_end=1.65, kl_warmup_steps=100,
                                               marginal_kl_weight=150.0),
                        codebook_usage_window=50, reconstruction_loss="gaussian",
                        reconstruction_sigma=0.03),
    # dvae-shapes with one more downsampling group: 64×64 → 8×8 tokens (the DALL·E demo's).
    "dvae-shapes-8x8": dict(image_size=64, num_channels=3, n_hid=16, group_count=4,
                            n_blk_per_group=1, vocab_size=512, n_init=32, output_channels=6,
                            training_schedule=dict(temperature_start=1.0,
                                                   temperature_end=1.0 / 16.0,
                                                   temperature_steps=1_100, kl_weight_start=0.0,
                                                   kl_weight_end=1.65, kl_warmup_steps=100,
                                                   marginal_kl_weight=150.0),
                            codebook_usage_window=50, reconstruction_loss="gaussian",
                            reconstruction_sigma=0.03),
    "dvae-tiny": dict(image_size=16, num_channels=3, n_hid=8, group_count=2, n_blk_per_group=1,
                      vocab_size=16, n_init=4, output_channels=6,
                      training_schedule=dict(temperature_steps=20, kl_warmup_steps=10),
                      codebook_usage_window=5),
}

# Optimiser (keras.optimizers.AdamW arguments; `learning_rate` is the peak of a cosine decay
# to `learning_rate · final_learning_rate_fraction` over the whole run) and run length.
TRAINING_PRESETS = {
    "openai": dict(optimizer=dict(learning_rate=1e-4, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                  weight_decay=1e-4),
                   final_learning_rate_fraction=1.25e-6 / 1e-4, batch_size=512,
                   steps_per_epoch=10_000, epochs=300),
    "dvae-shapes": dict(optimizer=dict(learning_rate=2e-3, beta_1=0.9, beta_2=0.999,
                                       epsilon=1e-8, weight_decay=1e-4),
                        final_learning_rate_fraction=0.1, batch_size=8, steps_per_epoch=220,
                        epochs=5),
    "dvae-shapes-8x8": dict(optimizer=dict(learning_rate=2e-3, beta_1=0.9, beta_2=0.999,
                                           epsilon=1e-8, weight_decay=1e-4),
                            final_learning_rate_fraction=0.1, batch_size=8, steps_per_epoch=220,
                            epochs=5),
    "dvae-tiny": dict(optimizer=dict(learning_rate=1e-3, weight_decay=1e-4),
                      final_learning_rate_fraction=1.0, batch_size=8, steps_per_epoch=5,
                      epochs=1),
}



def get_preset(name):
    """A (deep) copy of preset `name`'s `DiscreteVAE` config; ValueError naming the presets."""
    return lookup_preset(PRESETS, name, "dVAE")


def get_training_preset(name):
    """A (deep) copy of preset `name`'s training hyper-parameters."""
    return lookup_preset(TRAINING_PRESETS, name, "dVAE")


def dvae_from_preset(name, **overrides):
    """`DiscreteVAE(**get_preset(name), **overrides)`; a `training_schedule` override may be a
    partial dict (merged into the preset's schedule)."""
    config = get_preset(name)
    schedule = overrides.pop("training_schedule", None)
    if schedule is not None:
        if isinstance(schedule, VAETrainingSchedule):
            schedule = schedule.get_config()
        config["training_schedule"] = dict(config.get("training_schedule") or {}, **schedule)
    config.update(overrides)
    return DiscreteVAE(**config)
