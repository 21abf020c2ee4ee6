"""dVAE presets: name → `DiscreteVAE` constructor arguments (plain dicts), plus the training
hyper-parameters that go with each (`TRAINING_PRESETS`, used by `keras_dalle.train_vae`).

* "openai": OpenAI's released dVAE (Ramesh et al. 2021): 256×256 → 32×32 tokens, K = 8192,
  n_hid 256, 4 groups × 2 blocks, n_init 128 (53,786,240 + 43,829,766 parameters), with the
  paper's τ / β schedules. Training hyper-parameters from the paper's appendix A.2 (AdamW
  β = (0.9, 0.999), ε = 1e-8, weight decay 1e-4, step size 1e-4 cosine-annealed to 1.25e-6,
  batch 512, 3M updates) — this is what the paper says, it is not runnable on a CPU.
* "dvae-shapes": a small model for the built-in shapes data (`keras_clip.data.shapes`),
  64×64 → 16×16 tokens, K = 512, trained in a few minutes on a CPU. The schedules are the
  paper's compressed to a short run (see the comments in the table for the measurements).
* "dvae-tiny": for tests (16×16 → 8×8 tokens, K = 16).

Example:
    vae = dvae_from_preset("dvae-shapes")
    vae.compile(optimizer=keras.optimizers.AdamW(**TRAINING_PRESETS["dvae-shapes"]["optimizer"]))
"""

import copy

from keras_dalle.vae import DiscreteVAE, VAETrainingSchedule

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
                                               temperature_steps=300, kl_weight_start=0.0,
                                               kl_weight_end=1.0, kl_warmup_steps=150),
                        codebook_usage_window=20),
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
                        final_learning_rate_fraction=0.1, batch_size=16, steps_per_epoch=100,
                        epochs=3),
    "dvae-tiny": dict(optimizer=dict(learning_rate=1e-3, weight_decay=1e-4),
                      final_learning_rate_fraction=1.0, batch_size=8, steps_per_epoch=5,
                      epochs=1),
}


def get_preset(name):
    """A (deep) copy of preset `name`'s `DiscreteVAE` config; ValueError naming the presets."""
    if name not in PRESETS:
        raise ValueError(f"Unknown dVAE preset {name!r}. Available presets: "
                         f"{', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def get_training_preset(name):
    """A (deep) copy of preset `name`'s training hyper-parameters."""
    if name not in TRAINING_PRESETS:
        raise ValueError(f"Unknown dVAE preset {name!r}. Available presets: "
                         f"{', '.join(TRAINING_PRESETS)}")
    return copy.deepcopy(TRAINING_PRESETS[name])


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
