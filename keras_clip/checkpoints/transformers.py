"""Hugging Face transformers CLIP folders ↔ ``keras_clip.CLIP``.

A transformers folder (``CLIPModel.save_pretrained``; ``openai/clip-vit-base-patch32`` and its
siblings on the Hub) holds ``config.json`` and the weights as ``model.safetensors``,
``pytorch_model.bin`` (needs torch) or shards listed in ``model.safetensors.index.json`` /
``pytorch_model.bin.index.json``. This module turns such a folder into the two things every
format adapter here produces: ``CLIP`` constructor arguments and a state dict in open_clip's key
names and torch layouts (which `keras_clip.checkpoints.openai.load_state_dict` assigns) — and
back, for `keras_clip.export_checkpoint(model, folder, format="hf")`.

Key names and config fields follow transformers 5.x ``models/clip`` (modeling_clip.py and
configuration_clip.py): separate ``q_proj`` / ``k_proj`` / ``v_proj`` where OpenAI has one
``in_proj_weight`` = cat(q, k, v); ``visual_projection.weight`` / ``text_projection.weight`` are
(embed, width) Linear weights, the transposes of OpenAI's ``visual.proj`` / ``text_projection``.
transformers has ViT image towers only.
"""

import json
import os
import re

import numpy as np

from keras_clip.checkpoints.reader import read_sharded_state_dict, read_state_dict

__all__ = ["CONFIG_NAME", "WEIGHT_NAMES", "is_transformers_folder", "read_transformers_folder",
           "config_from_transformers", "from_transformers_state_dict", "to_transformers_state_dict",
           "transformers_config"]

CONFIG_NAME = "config.json"
# Weight files in the order transformers prefers them (single file, then sharded indexes).
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# transformers' defaults (configuration_clip.py, 5.x) for fields a config.json may leave out.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                        hidden_act="quick_gelu", layer_norm_eps=1e-5)
_ACTIVATIONS = ("quick_gelu", "gelu")  # transformers' ACT2FN names our CLIP has

# Per-block names: transformers → open_clip (the q/k/v projections are handled apart).
_BLOCK = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
          "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
# Whole-model names: transformers → open_clip; "T" marks a transposed (Linear) weight.
_TOP = {
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", False),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", False),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", False),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", False),  # (sic) transformers' name
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", False),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", False),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", False),
    "visual_projection.weight": ("visual.proj", True),
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", False),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", False),
    "text_model.final_layer_norm.weight": ("ln_final.weight", False),
    "text_model.final_layer_norm.bias": ("ln_final.bias", False),
    "text_projection.weight": ("text_projection", True),
    "logit_scale": ("logit_scale", False),
}
_TOWERS = (("vision_model.encoder.layers", "visual.transformer.resblocks"),
           ("text_model.encoder.layers", "transformer.resblocks"))
_IGNORED = re.compile(r"(^|\.)position_ids$")  # buffers older files carry


def is_transformers_folder(folder):
    """True if ``folder`` has a ``config.json`` that names a transformers CLIP model
    (``"model_type": "clip*"`` or a ``CLIP*`` architecture); ValueError naming the file if its
    ``config.json`` is not valid JSON (rather than a vaguer error later)."""
    path = os.path.join(os.fspath(folder), CONFIG_NAME)
    if not os.path.isfile(path):
        return False
    config = _load_json(path, "config")
    return isinstance(config, dict) and (
        str(config.get("model_type", "")).startswith("clip")
        or any(str(a).startswith("CLIP") for a in config.get("architectures") or ()))


def _load_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def _sub_config(config, name, defaults, source):
    sub = dict(defaults)
    for key in (name, name + "_dict"):  # old files keep the values in text_config_dict too
        value = config.get(key)
        if isinstance(value, dict):
            sub.update(value)
        elif value is not None:
            raise ValueError(f"{source}: {key!r} must be an object, got {type(value).__name__}")
    return sub


def config_from_transformers(config, source="config.json"):
    """``CLIP`` constructor arguments from a transformers CLIP ``config.json`` (a dict).

    Reads ``projection_dim``, ``text_config`` / ``vision_config`` (``hidden_size``,
    ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``max_position_embeddings``, ``vocab_size``, ``image_size``, ``patch_size``, ``hidden_act``,
    ``layer_norm_eps``, ``eos_token_id``), with transformers' defaults for missing fields.

    Raises:
        ValueError naming ``source`` and the field: not a CLIPModel config (a text- or
        vision-only model), an activation other than quick_gelu / gelu or differing between the
        towers, different layer-norm eps or MLP ratios per tower, non-square images, an
        ``eos_token_id`` whose first position is not the argmax of the ids (our pooling).
    """
    model_type = config.get("model_type")
    if model_type != "clip":
        kind = {"clip_text_model": "a text-only CLIP (CLIPTextModel / CLIPTextModelWithProjection, "
                                   "e.g. Stable Diffusion's text encoder)",
                "clip_vision_model": "a vision-only CLIP (CLIPVisionModel)"}.get(
                    model_type, f"model_type {model_type!r}")
        raise ValueError(f"{source} describes {kind}; keras_clip.load_pretrained reads whole CLIP "
                         "models (model_type 'clip', CLIPModel): both towers and projections")
    text = _sub_config(config, "text_config", _TEXT_DEFAULTS, source)
    vision = _sub_config(config, "vision_config", _VISION_DEFAULTS, source)
    acts = {text["hidden_act"], vision["hidden_act"]}
    bad = sorted(a for a in acts if a not in _ACTIVATIONS)
    if bad:
        raise ValueError(f"{source}: hidden_act {bad[0]!r} is not supported; keras_clip's CLIP has "
                         f"{' and '.join(_ACTIVATIONS)}")
    if len(acts) > 1:
        raise ValueError(f"{source}: text_config.hidden_act is {text['hidden_act']!r} but "
                         f"vision_config.hidden_act is {vision['hidden_act']!r}; keras_clip's CLIP "
                         "uses one activation for both towers")
    if text["layer_norm_eps"] != vision["layer_norm_eps"]:
        raise ValueError(f"{source}: layer_norm_eps differs between the towers (text "
                         f"{text['layer_norm_eps']}, vision {vision['layer_norm_eps']}); keras_clip's "
                         "CLIP uses one for both")
    ratios = {text["intermediate_size"] / text["hidden_size"],
              vision["intermediate_size"] / vision["hidden_size"]}
    if len(ratios) > 1:
        raise ValueError(f"{source}: the MLP ratio (intermediate_size / hidden_size) differs between "
                         f"the towers ({sorted(ratios)}); keras_clip's CLIP uses one for both")
    if vision.get("num_channels", 3) != 3:
        raise ValueError(f"{source}: vision_config.num_channels is {vision['num_channels']}, "
                         "expected 3 (RGB)")
    image_size, patch_size = vision["image_size"], vision["patch_size"]
    for field, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"{source}: vision_config.{field} {list(value)} is not square")
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    vocab_size = text["vocab_size"]
    eos = text.get("eos_token_id")
    eos = eos[0] if isinstance(eos, (list, tuple)) and len(eos) == 1 else eos
    # transformers pools at argmax(ids) for legacy eos_token_id == 2, else at the first eos: the
    # same position as OpenAI's argmax when eos is the largest id (49407 of 49408).
    if eos not in (2, vocab_size - 1):
        raise ValueError(f"{source}: text_config.eos_token_id is {eos!r}; keras_clip pools the text "
                         f"at the largest token id (OpenAI's end-of-text, {vocab_size - 1} for "
                         f"vocab_size {vocab_size}), which matches transformers only for "
                         f"eos_token_id {vocab_size - 1} (or the legacy 2)")
    projection_dim = config.get("projection_dim", 512)
    return dict(
        embed_dim=projection_dim, image_size=image_size, vision_patch_size=patch_size,
        vision_width=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"], context_length=text["max_position_embeddings"],
        vocab_size=vocab_size, text_width=text["hidden_size"], text_heads=text["num_attention_heads"],
        text_layers=text["num_hidden_layers"], activation=text["hidden_act"],
        mlp_ratio=ratios.pop(), layer_norm_epsilon=text["layer_norm_eps"])


def _weights_file(folder):
    for name in WEIGHT_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def weights_in_folder(folder, name):
    """The weights to read when the user names ``name`` inside a transformers ``folder``: the
    file itself, or the shard index that lists it (a shard is part of a sharded model); None if
    ``name`` is not a weight file of the folder."""
    if name in WEIGHT_NAMES:
        return os.path.join(folder, name)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(folder, index)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    shards = set(json.load(f).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                continue
            if name in shards:
                return path
    return None


def read_transformers_folder(folder, weights=None):
    """Reads a transformers CLIP folder.

    Args:
        folder: the folder.
        weights: the weight file (or shard index) to read; default: the first of
            ``WEIGHT_NAMES`` there, transformers' order.

    Returns:
        ``(config, state_dict, weights_path)``: ``CLIP`` constructor arguments (see
        `config_from_transformers`), the weights as an open_clip-named state dict of float32
        numpy arrays (see `from_transformers_state_dict`) and the weights file read.

    Raises:
        FileNotFoundError: no config.json, or none of the weight files transformers writes.
        ValueError: a config or weight file that is not a CLIPModel's (naming the file).
        ImportError: ``pytorch_model.bin`` weights and no torch.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder} is not a transformers CLIP folder: no {CONFIG_NAME}")
    config = config_from_transformers(_load_json(config_path, "transformers config"), config_path)
    weights = weights or _weights_file(folder)
    if weights is None:
        found = sorted(os.listdir(folder))
        raise FileNotFoundError(f"transformers folder {folder} has no weights: expected one of "
                                f"{', '.join(WEIGHT_NAMES)}; found {found}")
    if weights.endswith(".index.json"):
        hf = read_sharded_state_dict(weights, "transformers CLIP shard")
    else:
        hf = read_state_dict(weights, "transformers CLIP weights")
    return config, from_transformers_state_dict(hf, weights), weights


def from_transformers_state_dict(hf, source="state dict"):
    """transformers ``CLIPModel`` state dict → open_clip names and layouts (q/k/v joined into
    ``in_proj_weight`` / ``in_proj_bias``; projections transposed). Keys it does not know are
    kept as they are, so `load_state_dict` reports them as unexpected; ``*.position_ids``
    buffers are dropped. ValueError naming ``source`` if a block lacks one of q/k/v."""
    out, qkv = {}, {}
    block = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    towers = dict(_TOWERS)
    for key, value in hf.items():
        if _IGNORED.search(key):
            continue
        if key in _TOP:
            name, transpose = _TOP[key]
            out[name] = np.ascontiguousarray(value.T) if transpose else value
            continue
        m = block.match(key)
        if m:
            tower, index, layer, kind = m.groups()
            prefix = f"{towers[tower + '.encoder.layers']}.{index}"
            if layer in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, kind), {})[layer[-6]] = value
                continue
            if layer in _BLOCK:
                out[f"{prefix}.{_BLOCK[layer]}.{kind}"] = value
                continue
        out[key] = value  # unknown: reported by load_state_dict
    for (prefix, kind), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise ValueError(f"{source}: {prefix} has no {'/'.join(m + '_proj' for m in missing)}."
                             f"{kind} (transformers keeps q, k and v apart; all three are needed)")
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"{prefix}.attn.{name}"] = np.concatenate([parts[p] for p in "qkv"], axis=0)
    return out


def to_transformers_state_dict(state):
    """open_clip-named state dict (`keras_clip.checkpoints.state_dict`) → transformers
    ``CLIPModel`` names and layouts: the inverse of `from_transformers_state_dict`.
    ValueError for a ResNet model (transformers has ViT CLIPs only)."""
    if "visual.conv1.weight" not in state or "visual.proj" not in state:
        raise ValueError("transformers has ViT CLIPs only (CLIPVisionModel); this model's image "
                         "tower is a ResNet: export it with format='open_clip'")
    top = {name: (hf, transpose) for hf, (name, transpose) in _TOP.items()}
    out = {}
    block = re.compile(r"^(visual\.transformer\.resblocks|transformer\.resblocks)\.(\d+)\.(.+)$")
    towers = {oc: hf for hf, oc in _TOWERS}
    inverse = {oc: hf for hf, oc in _BLOCK.items()}
    for key, value in state.items():
        if key in top:
            name, transpose = top[key]
            out[name] = np.ascontiguousarray(value.T) if transpose else value
            continue
        m = block.match(key)
        if not m:
            raise ValueError(f"state dict key {key!r} has no transformers CLIPModel counterpart")
        tower, index, rest = m.groups()
        prefix = f"{towers[tower]}.{index}"
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            for part, array in zip("qkv", np.split(value, 3, axis=0)):
                out[f"{prefix}.self_attn.{part}_proj.{kind}"] = np.ascontiguousarray(array)
            continue
        layer, kind = rest.rsplit(".", 1)
        if layer not in inverse:
            raise ValueError(f"state dict key {key!r} has no transformers CLIPModel counterpart")
        out[f"{prefix}.{inverse[layer]}.{kind}"] = value
    return out


def transformers_config(model):
    """A transformers ``CLIPConfig`` dict (``config.json``) describing ``model`` (a ViT
    ``keras_clip.CLIP``); ValueError for a ResNet image tower or the CBOW text tower."""
    if model.vision_patch_size is None:
        raise ValueError("transformers has ViT CLIPs only (CLIPVisionModel); this model's image "
                         "tower is a ResNet: export it with format='open_clip'")
    if model.text_encoder != "transformer":
        raise ValueError(f"transformers' CLIPTextModel is a transformer; this model uses "
                         f"text_encoder={model.text_encoder!r}")
    if model.logit_bias is not None:
        raise ValueError("transformers' CLIPModel has no logit bias, which this (SigLIP-trained) "
                         "model has: export it with format='open_clip'")
    text_mlp = int(round(model.text_width * model.mlp_ratio))
    vision_mlp = int(round(model.vision_width * model.mlp_ratio))
    eps = float(model.layer_norm_epsilon)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": int(model.embed_dim),
        "logit_scale_init_value": float(model.logit_scale_init),
        "initializer_factor": 1.0,
        "dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": int(model.vocab_size),
            "hidden_size": int(model.text_width), "intermediate_size": text_mlp,
            "num_hidden_layers": int(model.text_layers),
            "num_attention_heads": int(model.text_heads),
            "max_position_embeddings": int(model.context_length),
            "hidden_act": model.activation, "layer_norm_eps": eps,
            "projection_dim": int(model.embed_dim),
            # OpenAI's tokenizer: start/end of text are the two largest ids; transformers pools
            # at the first end-of-text, OpenAI (and keras_clip) at the argmax: the same place.
            "bos_token_id": int(model.vocab_size) - 2, "eos_token_id": int(model.vocab_size) - 1,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": int(model.vision_width),
            "intermediate_size": vision_mlp, "num_hidden_layers": int(model.vision_layers),
            "num_attention_heads": int(model.vision_heads), "num_channels": 3,
            "image_size": int(model.image_size), "patch_size": int(model.vision_patch_size),
            "hidden_act": model.activation, "layer_norm_eps": eps,
            "projection_dim": int(model.embed_dim),
        },
    }
