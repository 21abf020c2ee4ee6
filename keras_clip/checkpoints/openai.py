"""OpenAI / open_clip CLIP state dicts ↔ ``keras_clip.CLIP``: the one key map (every other
format is translated to these names: `transformers`, `open_clip_hub`, `keras_hub`), the
architecture read from tensor shapes, and the writer `state_dict`.

`keras_clip.checkpoints.pretrained.load_pretrained` reads files and folders and uses this map.
"""

import re

import numpy as np


__all__ = ["infer_config", "load_state_dict", "state_dict", "weight_map"]

# Keys in reference checkpoints that carry no weights of ours.
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$|^(input_resolution|context_length|vocab_size)$"
                      r"|(^|\.)attn_mask$")


# --- tensor layout converters: torch array -> list of Keras arrays (one per variable) -----------
def _same(a):
    return [a]


def _linear(a):  # (out, in) -> (in, out)
    return [a.T]


def _conv(a):  # OIHW -> HWIO
    return [a.transpose(2, 3, 1, 0)]


def _split3_linear(a):  # in_proj_weight [Wq; Wk; Wv] (3w, w) -> three (w, w) kernels
    return [w.T for w in np.split(a, 3, axis=0)]


def _split3(a):  # in_proj_bias (3w,) -> three (w,)
    return list(np.split(a, 3, axis=0))


_TO_TORCH = {  # the inverses: list of Keras arrays -> torch array
    _same: lambda arrays: arrays[0],
    _linear: lambda arrays: arrays[0].T,
    _conv: lambda arrays: arrays[0].transpose(3, 2, 0, 1),  # HWIO -> OIHW
    _split3_linear: lambda arrays: np.concatenate([a.T for a in arrays], axis=0),
    _split3: lambda arrays: np.concatenate(arrays, axis=0),
}

_TORCH_SHAPE = {
    _same: lambda s: s[0],
    _linear: lambda s: s[0][::-1],
    _conv: lambda s: (s[0][3], s[0][2], s[0][0], s[0][1]),
    _split3_linear: lambda s: (3 * s[0][1], s[0][0]),
    _split3: lambda s: (3 * s[0][0],),
}


def _dense(prefix, layer, out):
    out[prefix + ".weight"] = ([layer.kernel], _linear)
    out[prefix + ".bias"] = ([layer.bias], _same)


def _norm(prefix, layer, out):
    out[prefix + ".weight"] = ([layer.gamma], _same)
    out[prefix + ".bias"] = ([layer.beta], _same)


def _bn(prefix, layer, out):
    _norm(prefix, layer, out)
    out[prefix + ".running_mean"] = ([layer.moving_mean], _same)
    out[prefix + ".running_var"] = ([layer.moving_variance], _same)


def _transformer(prefix, transformer, out):
    for i, block in enumerate(transformer.resblocks):
        p = f"{prefix}.resblocks.{i}"
        a = block.attn
        out[p + ".attn.in_proj_weight"] = ([a.query.kernel, a.key.kernel, a.value.kernel], _split3_linear)
        out[p + ".attn.in_proj_bias"] = ([a.query.bias, a.key.bias, a.value.bias], _split3)
        _dense(p + ".attn.out_proj", a.out, out)
        _norm(p + ".ln_1", block.ln_1, out)
        _norm(p + ".ln_2", block.ln_2, out)
        _dense(p + ".mlp.c_fc", block.c_fc, out)
        _dense(p + ".mlp.c_proj", block.c_proj, out)


def weight_map(model):
    """Reference state-dict key → (Keras variables, converter) for every weight of ``model``."""
    if model.text_encoder != "transformer":
        raise ValueError("Only CLIP models with the transformer text tower have reference "
                         f"checkpoints; this model uses text_encoder={model.text_encoder!r}")
    out = {"logit_scale": ([model.logit_scale], _same)}
    if model.logit_bias is not None:  # SigLIP's (open_clip's init_logit_bias models)
        out["logit_bias"] = ([model.logit_bias], _same)
    v = model.visual
    if model.vision_patch_size is not None:
        out["visual.conv1.weight"] = ([v.conv1.kernel], _conv)
        for name in ("class_embedding", "positional_embedding", "proj"):
            out[f"visual.{name}"] = ([getattr(v, name)], _same)
        _norm("visual.ln_pre", v.ln_pre, out)
        _norm("visual.ln_post", v.ln_post, out)
        _transformer("visual.transformer", v.transformer, out)
    else:
        for i, (conv, bn) in enumerate(zip(v.stem_convs, v.stem_bns), start=1):
            out[f"visual.conv{i}.weight"] = ([conv.kernel], _conv)
            _bn(f"visual.bn{i}", bn, out)
        for block in v.blocks:
            stage, index = block.name[len("layer"):].split("_")
            p = f"visual.layer{stage}.{index}"
            for i in (1, 2, 3):
                out[f"{p}.conv{i}.weight"] = ([getattr(block, f"conv{i}").kernel], _conv)
                _bn(f"{p}.bn{i}", getattr(block, f"bn{i}"), out)
            if block.has_downsample:
                out[f"{p}.downsample.0.weight"] = ([block.downsample_conv.kernel], _conv)
                _bn(f"{p}.downsample.1", block.downsample_bn, out)
        a = v.attnpool.attn
        out["visual.attnpool.positional_embedding"] = ([v.attnpool.positional_embedding], _same)
        for torch_name, layer in (("q_proj", a.query), ("k_proj", a.key), ("v_proj", a.value),
                                  ("c_proj", a.out)):
            _dense(f"visual.attnpool.{torch_name}", layer, out)
    t = model.text
    out["token_embedding.weight"] = ([t.token_embedding.embeddings], _same)
    out["positional_embedding"] = ([t.positional_embedding], _same)
    out["text_projection"] = ([t.text_projection], _same)
    _norm("ln_final", t.ln_final, out)
    _transformer("transformer", t.transformer, out)
    return out


def _heads(which, width, heads, source, what):
    """``heads`` if given, else ``width // 64`` (OpenAI's 64-wide heads); ValueError when the
    width is not a multiple of 64, since the shapes cannot tell the head count then."""
    if heads is not None:
        return heads
    if width % 64:
        raise ValueError(
            f"Cannot infer {which}_heads from {source}: the {what} width is {width}, not a "
            f"multiple of 64, so the heads are not OpenAI's 64-wide ones and the tensor shapes "
            f"cannot tell how many there are. Pass preset=... (`--preset` for python -m "
            f"keras_clip.convert), or text_heads=... and vision_heads=... (`--text-heads`, "
            f"`--vision-heads`): a width that is a multiple of 64 is read as 64-wide heads, which "
            f"a checkpoint not from OpenAI / open_clip may not have.")
    return width // 64


def infer_config(state_dict, source="state dict", text_heads=None, vision_heads=None):
    """CLIP constructor arguments from the shapes of a reference state dict.

    Heads are OpenAI's convention, width // 64 (the ResNet's attention pool is
    ``32 * vision_width`` wide); shapes cannot show the head count, so a width that is not a
    multiple of 64 raises a ValueError unless ``text_heads`` / ``vision_heads`` is given.
    ``source`` (a path) names the checkpoint in errors.
    """
    sd = state_dict
    required = ["text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"]
    missing = [k for k in required if k not in sd]
    if missing:
        found = sorted(sd)
        raise ValueError(
            f"Not a CLIP state dict: {source} is missing keys {missing}; it has {len(found)} keys, "
            f"e.g. {found[:5]}. Expected OpenAI's / open_clip's names (visual.*, transformer.*, "
            "token_embedding.weight, ...) or transformers' (vision_model.*, text_model.*); "
            "wrapper prefixes module. / _orig_mod. / model. are removed when every key has them")

    def count(pattern):
        return len({m.group(1) for k in sd for m in [re.match(pattern, k)] if m})

    text_width = sd["ln_final.weight"].shape[0]
    config = dict(
        embed_dim=sd["text_projection"].shape[1],
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_heads=_heads("text", text_width, text_heads, source, "text transformer"),
        text_layers=count(r"transformer\.resblocks\.(\d+)\."),
    )
    if "transformer.resblocks.0.mlp.c_fc.weight" in sd:  # MLP width / model width (4 in OpenAI's)
        config["mlp_ratio"] = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width
    if "visual.proj" in sd and "visual.conv1.weight" in sd:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        config.update(vision_width=width, vision_patch_size=patch, image_size=patch * grid,
                      vision_layers=count(r"visual\.transformer\.resblocks\.(\d+)\."),
                      vision_heads=_heads("vision", width, vision_heads, source,
                                          "vision transformer"))
    elif "visual.attnpool.positional_embedding" in sd:
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        config.update(vision_width=width, vision_patch_size=None, image_size=grid * 32,
                      vision_layers=[count(rf"visual\.layer{b}\.(\d+)\.") for b in (1, 2, 3, 4)],
                      vision_heads=_heads("vision", 32 * width, vision_heads, source,
                                          f"ResNet attention-pool (32 x {width})"))
    else:
        raise ValueError(f"Not a CLIP state dict: {source} has no 'visual.proj' + "
                         "'visual.conv1.weight' (ViT) or 'visual.attnpool.positional_embedding' "
                         "(ResNet) key")
    return config


def load_state_dict(model, state_dict, source="state dict"):
    """Assign a reference state dict to ``model``; ValueError listing every bad key."""
    mapping = weight_map(model)
    keys = {k for k in state_dict if not _IGNORED.search(k)}
    missing = sorted(set(mapping) - keys)
    unexpected = sorted(keys - set(mapping))
    mismatched, updates = [], []
    for key in sorted(set(mapping) & keys):
        variables, convert = mapping[key]
        expected = tuple(_TORCH_SHAPE[convert]([tuple(v.shape) for v in variables]))
        got = tuple(state_dict[key].shape)
        if got != expected:
            mismatched.append(f"{key}: expected {expected}, got {got}")
            continue
        updates.extend(zip(variables, convert(state_dict[key])))
    if missing or unexpected or mismatched:
        lines = [f"Checkpoint {source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mis-shaped keys", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        raise ValueError("\n".join(lines))
    for variable, value in updates:
        variable.assign(value.astype(variable.dtype))
    return model


def state_dict(model):
    """``model``'s weights as an OpenAI / open_clip state dict (float32 numpy arrays in torch's
    layouts, keys as open_clip names them): the inverse of `load_state_dict`, e.g. to write with
    ``safetensors.numpy.save_file`` and read back with `load_pretrained` or open_clip.

    Example:
        >>> from safetensors.numpy import save_file
        >>> save_file(state_dict(model), "open_clip_model.safetensors")
    """
    out = {}
    for key, (variables, convert) in weight_map(model).items():
        arrays = [np.asarray(v.numpy(), np.float32) for v in variables]
        out[key] = np.asarray(_TO_TORCH[convert](arrays), order="C")  # (keeps 0-d arrays 0-d)
    return out
