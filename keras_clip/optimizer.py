"""open_clip's optimiser recipe: AdamW, no decay on gains/biases/embeddings/logit_scale,
linear warmup then cosine decay."""

import keras


def no_decay_variables(model):
    """Variables trained without weight decay: every 0-D/1-D weight (gains, biases, class
    embedding, logit_scale) and the token/position embeddings."""
    return [v for v in model.trainable_variables
            if len(v.shape) < 2 or "embedding" in v.path.split("/")[-1]
            or "/token_embedding/" in v.path]


def warmup_cosine(learning_rate, total_steps, warmup_steps):
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay to 0."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total_steps - warmup_steps, 1), alpha=0.0,
        warmup_target=learning_rate, warmup_steps=warmup_steps)


def clip_optimizer(model, total_steps, learning_rate=5e-4, warmup_steps=None, weight_decay=0.2,
                   beta_1=0.9, beta_2=None, epsilon=None):
    """AdamW configured as open_clip trains CLIP.

    Betas and epsilon default by image tower as in the CLIP paper: ViT (0.9, 0.98, 1e-6),
    ResNet (0.9, 0.999, 1e-8). For accumulation use ``CLIP.compile(accum_freq=k)``, which keeps
    every negative (Keras' optimizer accumulation would average k separate small-batch losses).

    Example:
        >>> model.compile(optimizer=clip_optimizer(model, total_steps=10_000, warmup_steps=500))
    """
    vit = getattr(model, "vision_patch_size", None) is not None
    optimizer = keras.optimizers.AdamW(
        learning_rate=warmup_cosine(learning_rate, total_steps,
                                    warmup_steps if warmup_steps is not None else total_steps // 20),
        weight_decay=weight_decay, beta_1=beta_1,
        beta_2=beta_2 if beta_2 is not None else (0.98 if vit else 0.999),
        epsilon=epsilon if epsilon is not None else (1e-6 if vit else 1e-8))
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer
