"""Tower locking for fine-tuning (LiT: Zhai et al. 2022, "LiT: Zero-Shot Transfer with
Locked-image text Tuning"), with open_clip's names and groups.

``CLIP.lock_image_tower`` / ``CLIP.lock_text_tower`` call these. A tower is split into groups
from the input end to the output end, as open_clip 3.3.0 does (transformer.py
``VisionTransformer.lock`` and ``lock_text_tower``); everything is frozen, then the last
``unlocked`` groups are trainable again:

- ViT: [conv1, class_embedding, positional_embedding, ln_pre], each residual block but the last,
  [last block, ln_post], [proj] — ``vision_layers + 2`` groups.
- ModifiedResNet: [stem convs + BNs], layer1, layer2, layer3, layer4, [attnpool] — 6 groups
  (open_clip locks a ResNet only whole; the partial groups here are keras_clip's).
- text transformer: [token_embedding, positional_embedding], each block but the last,
  [last block, ln_final], [text_projection] — ``text_layers + 2`` groups.

Freezing a variable sets its ``trainable`` to False: the optimizer never sees it, and
``CLIP.train_step`` neither records nor back-propagates through a wholly locked tower.
Lock before ``compile`` (the optimizer is built for the trainable variables).
"""

import keras

from keras_clip.compat import sublayers

__all__ = ["image_tower_groups", "text_tower_groups", "lock_groups"]


def image_tower_groups(model):
    """The image tower's groups (lists of layers / variables), input end first."""
    v = model.visual
    if model.vision_patch_size is not None:
        blocks = list(v.transformer.resblocks)
        return ([[v.conv1, v.class_embedding, v.positional_embedding, v.ln_pre]]
                + [[b] for b in blocks[:-1]] + [[blocks[-1], v.ln_post]] + [[v.proj]])
    stages = {}
    for block in v.blocks:  # named layer{stage}_{index}
        stages.setdefault(block.name.split("_")[0], []).append(block)
    return ([list(v.stem_convs) + list(v.stem_bns)] + [stages[k] for k in sorted(stages)]
            + [[v.attnpool]])


def text_tower_groups(model):
    """The text tower's groups, input end first (ValueError for the CBOW text tower, which
    has no layers to leave unlocked)."""
    t = model.text
    if model.text_encoder != "transformer":
        return [[t]]
    blocks = list(t.transformer.resblocks)
    return ([[t.token_embedding, t.positional_embedding]] + [[b] for b in blocks[:-1]]
            + [[blocks[-1], t.ln_final]] + [[t.text_projection]])


def _variables(item):
    if isinstance(item, keras.layers.Layer):
        return list(item.weights)
    return [item]


def _is_statistic(layer, variable):
    return isinstance(layer, keras.layers.BatchNormalization) and any(
        variable is s for s in (layer.moving_mean, layer.moving_variance))


def _layers(item):
    if isinstance(item, keras.layers.Layer):
        return sublayers(item)
    return []


def lock_groups(groups, unlocked, what, freeze_batch_norm=False, keep_layer_norm=False):
    """Freezes every variable of ``groups`` but those of the last ``unlocked`` groups.

    Args:
        groups: lists of layers / variables, input end first.
        unlocked: how many groups at the output end stay trainable (0: all frozen).
        what: e.g. "image tower", for errors.
        freeze_batch_norm: also put the frozen groups' BatchNormalization layers in inference
            mode (their running statistics stop changing; open_clip's ``freeze_bn_stats``).
        keep_layer_norm: leave the LayerNorm gains and biases of the frozen groups trainable.

    Returns:
        the number of variables frozen.

    Raises:
        ValueError: ``unlocked`` negative or more than the tower's groups.
    """
    if not isinstance(unlocked, int) or isinstance(unlocked, bool) or unlocked < 0:
        raise ValueError(f"unlocked groups / layers for the {what} must be an int >= 0, got "
                         f"{unlocked!r}")
    if unlocked > len(groups):
        raise ValueError(f"cannot leave {unlocked} groups of the {what} unlocked: it has "
                         f"{len(groups)} (0 locks it whole)")
    frozen = 0
    locked = groups[:len(groups) - unlocked]
    for group in groups:
        for item in group:
            for layer in _layers(item):
                if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable is False:
                    layer.trainable = True  # undo an earlier freeze_bn_stats before re-locking
    for group in locked:
        for item in group:
            layers = _layers(item)
            statistics = {id(v) for layer in layers for v in layer.weights
                          if _is_statistic(layer, v)}
            norms = {id(v) for layer in layers if isinstance(layer, keras.layers.LayerNormalization)
                     for v in layer.weights} if keep_layer_norm else set()
            for variable in _variables(item):
                if id(variable) in statistics or id(variable) in norms:
                    continue
                if variable.trainable:
                    variable.trainable = False
                    frozen += 1
            if freeze_batch_norm:
                for layer in layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.trainable = False  # inference mode: statistics fixed
    for group in groups[len(groups) - unlocked:]:
        for item in group:
            statistics = {id(v) for layer in _layers(item) for v in layer.weights
                          if _is_statistic(layer, v)}
            for variable in _variables(item):
                if id(variable) not in statistics:
                    variable.trainable = True
    return frozen
