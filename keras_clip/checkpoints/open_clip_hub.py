"""open_clip hub folders ↔ ``keras_clip.CLIP``.

open_clip's hub layout (``open_clip.push_to_hf_hub`` / ``save_for_hf``, and what
``open_clip.create_model("local-dir:FOLDER")`` reads): ``open_clip_config.json`` =
``{"model_cfg": {embed_dim, vision_cfg, text_cfg, quick_gelu, ...}, "preprocess_cfg": {mean, std,
interpolation, resize_mode}}`` beside ``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``. The weights are open_clip's own state dict, so the key map is
`keras_clip.checkpoints.openai`'s; this module reads and writes the config. Field names and
defaults follow open_clip 3.3.0's ``CLIPVisionCfg`` / ``CLIPTextCfg`` (model.py): plain model
names (``ViT-B-32``, ``RN50``) are nn.GELU models, ``quick_gelu: true`` (``-quickgelu`` names,
OpenAI's weights) QuickGELU.
"""

import json
import os
import warnings

from keras_clip.checkpoints.reader import read_state_dict
from keras_clip.preprocessing import openai_normalization

__all__ = ["CONFIG_NAME", "WEIGHT_NAMES", "is_open_clip_folder",
           "read_open_clip_folder", "config_from_open_clip", "open_clip_config"]

CONFIG_NAME = "open_clip_config.json"
# open_clip's preference order (factory._find_checkpoint_in_dir), its own names first.
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")

_VISION_DEFAULTS = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16,
                        image_size=224)
_TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                      mlp_ratio=4.0)
# Options of open_clip's towers that keras_clip's CLIP does not have: field -> (default, what).
_VISION_UNSUPPORTED = {
    "timm_model_name": (None, "a timm image tower"),
    "attentional_pool": (False, "an attentional pooler"),
    "no_ln_pre": (False, "no ln_pre"),
    "pool_type": ("tok", "pooling other than the class token"),
    "final_ln_after_pool": (False, "LayerNorm after pooling"),
    "ls_init_value": (None, "layer scale"),
    "pos_embed_type": ("learnable", "non-learnable position embeddings"),
    "qk_norm": (False, "q/k LayerNorm"), "scaled_cosine_attn": (False, "scaled cosine attention"),
    "scale_heads": (False, "per-head scales"), "scale_attn_inner": (False, "inner attention LN"),
    "scale_attn": (False, "attention LN"), "scale_fc": (False, "MLP LN"),
}
_TEXT_UNSUPPORTED = {
    "hf_model_name": (None, "a Hugging Face text tower"),
    "embed_cls": (False, "a CLS text embedding"),
    "pool_type": ("argmax", "text pooling other than the argmax (end-of-text) token"),
    "no_causal_mask": (False, "no causal mask"),
    "final_ln_after_pool": (False, "LayerNorm after pooling"),
    "ls_init_value": (None, "layer scale"),
    "proj_bias": (False, "a text projection bias"),
    "proj_type": ("linear", "a text projection other than linear"),
    "qk_norm": (False, "q/k LayerNorm"), "scaled_cosine_attn": (False, "scaled cosine attention"),
    "scale_heads": (False, "per-head scales"), "scale_attn_inner": (False, "inner attention LN"),
    "scale_attn": (False, "attention LN"), "scale_fc": (False, "MLP LN"),
}


def is_open_clip_folder(folder):
    """True if ``folder`` holds an ``open_clip_config.json``."""
    return os.path.isfile(os.path.join(os.fspath(folder), CONFIG_NAME))


def _check_unsupported(cfg, table, where, source):
    for field, (default, what) in table.items():
        if field in cfg and cfg[field] not in (default, None if default is False else default):
            raise ValueError(f"{source}: {where}.{field} = {cfg[field]!r} ({what}); keras_clip's CLIP "
                             "has OpenAI's architecture and cannot load it")


def _eps(cfg, where, source):
    kwargs = cfg.get("norm_kwargs") or {}
    unknown = sorted(set(kwargs) - {"eps"})
    if unknown:
        raise ValueError(f"{source}: {where}.norm_kwargs {unknown} not supported (only eps)")
    return float(kwargs.get("eps", 1e-5))


def _square(value, field, source):
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{source}: {field} {list(value)} is not square")
        return int(value[0])
    return int(value)


def config_from_open_clip(model_cfg, source=CONFIG_NAME):
    """``CLIP`` constructor arguments from open_clip's ``model_cfg`` (a dict).

    ``quick_gelu`` (default false, as open_clip's) decides the activation; ``vision_cfg.layers``
    an int → ViT, four ints → ModifiedResNet; heads are ``width // head_width`` (ResNet:
    ``32 * width // head_width``) for the image tower, ``text_cfg.heads`` for the text.

    Raises:
        ValueError naming ``source`` and the field: options open_clip has and OpenAI's CLIP does
        not (timm / Hugging Face towers, attentional pooling, layer scale, other poolings, ...), towers with different MLP ratios or LayerNorm eps, non-square images.
    """
    if not isinstance(model_cfg, dict):
        raise ValueError(f"{source}: model_cfg must be an object, got {type(model_cfg).__name__}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise ValueError(f"{source}: model_cfg lacks {missing} (open_clip's model config has "
                         "embed_dim, vision_cfg and text_cfg)")
    vision = dict(_VISION_DEFAULTS, **model_cfg["vision_cfg"])
    text = dict(_TEXT_DEFAULTS, **model_cfg["text_cfg"])
    _check_unsupported(vision, _VISION_UNSUPPORTED, "vision_cfg", source)
    _check_unsupported(text, _TEXT_UNSUPPORTED, "text_cfg", source)
    eps = {_eps(vision, "vision_cfg", source), _eps(text, "text_cfg", source)}
    if len(eps) > 1:
        raise ValueError(f"{source}: the towers' LayerNorm eps differ ({sorted(eps)}); keras_clip's "
                         "CLIP uses one for both")
    image_size = _square(vision["image_size"], "vision_cfg.image_size", source)
    config = dict(embed_dim=int(model_cfg["embed_dim"]), image_size=image_size,
                  context_length=int(text["context_length"]), vocab_size=int(text["vocab_size"]),
                  text_width=int(text["width"]), text_heads=int(text["heads"]),
                  text_layers=int(text["layers"]),
                  activation="quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
                  layer_norm_epsilon=eps.pop())
    if model_cfg.get("init_logit_bias") is not None:  # SigLIP-trained: a learnt logit bias
        config["logit_bias_init"] = float(model_cfg["init_logit_bias"])
    layers = vision["layers"]
    if isinstance(layers, (list, tuple)):
        if len(layers) != 4:
            raise ValueError(f"{source}: vision_cfg.layers {list(layers)}: a ResNet has 4 stages")
        config.update(vision_layers=[int(n) for n in layers], vision_width=int(vision["width"]),
                      vision_patch_size=None,
                      vision_heads=32 * int(vision["width"]) // int(vision["head_width"]))
        config["mlp_ratio"] = float(text["mlp_ratio"])
    else:
        if float(vision["mlp_ratio"]) != float(text["mlp_ratio"]):
            raise ValueError(f"{source}: vision_cfg.mlp_ratio {vision['mlp_ratio']} differs from "
                             f"text_cfg.mlp_ratio {text['mlp_ratio']}; keras_clip's CLIP uses one "
                             "for both")
        config.update(vision_layers=int(layers), vision_width=int(vision["width"]),
                      vision_patch_size=_square(vision["patch_size"], "vision_cfg.patch_size",
                                                source),
                      vision_heads=int(vision["width"]) // int(vision["head_width"]),
                      mlp_ratio=float(vision["mlp_ratio"]))
    return config


def _check_preprocess(preprocess_cfg, source):
    """Warns where the folder's preprocessing is not OpenAI's (keras_clip.preprocessing's)."""
    if not isinstance(preprocess_cfg, dict):
        return
    for field, ours in zip(("mean", "std"), openai_normalization()):
        theirs = preprocess_cfg.get(field)
        if theirs is not None and (len(theirs) != 3 or
                                   any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours))):
            warnings.warn(f"{source}: preprocess_cfg.{field} is {list(theirs)}, not OpenAI's "
                          f"{list(ours)}, which keras_clip.preprocessing uses: normalise images "
                          "yourself for this model", UserWarning, stacklevel=3)
    for field, ours in (("interpolation", "bicubic"), ("resize_mode", "shortest")):
        theirs = preprocess_cfg.get(field)
        if theirs is not None and theirs != ours:
            warnings.warn(f"{source}: preprocess_cfg.{field} is {theirs!r}; keras_clip.preprocessing "
                          f"does OpenAI's {ours!r}", UserWarning, stacklevel=3)


def read_open_clip_folder(folder, weights=None):
    """Reads an open_clip hub folder.

    Returns:
        ``(config, state_dict, weights_path)``: ``CLIP`` constructor arguments (see
        `config_from_open_clip`), the open_clip state dict (float32 numpy, wrapper prefixes
        removed, a custom-text model's ``text.`` keys moved to the top level as in OpenAI's
        layout) and the weights file read (``weights`` if given, else the first of
        ``WEIGHT_NAMES`` there, open_clip's order).

    Raises:
        FileNotFoundError: no open_clip_config.json or no weights file (naming what was found).
        ValueError: a config keras_clip cannot load (naming the file and the field).
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder} is not an open_clip hub folder: no {CONFIG_NAME}")
    try:
        with open(config_path, encoding="utf-8") as f:
            hub = json.load(f)
    except ValueError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(hub, dict) or "model_cfg" not in hub:
        raise ValueError(f"{config_path} has no \"model_cfg\" (open_clip's hub config is "
                         "{\"model_cfg\": {...}, \"preprocess_cfg\": {...}})")
    config = config_from_open_clip(hub["model_cfg"], config_path)
    _check_preprocess(hub.get("preprocess_cfg"), config_path)
    weights = weights or next((os.path.join(folder, n) for n in WEIGHT_NAMES
                               if os.path.isfile(os.path.join(folder, n))), None)
    if weights is None:
        raise FileNotFoundError(f"open_clip folder {folder} has no weights: expected one of "
                                f"{', '.join(WEIGHT_NAMES)}; found {sorted(os.listdir(folder))}")
    state = read_state_dict(weights, "open_clip weights")
    return config, move_custom_text_keys(state), weights


def move_custom_text_keys(state):
    """open_clip's ``CustomTextCLIP`` keeps the text tower under ``text.`` (``text.
    token_embedding.weight``, ``text.text_projection``, ...); OpenAI's layout, which the key map
    uses, has them at the top level. Returns ``state`` with those keys moved (unchanged if it
    has no ``text.`` keys)."""
    if "text.token_embedding.weight" not in state:
        return state
    return {k[len("text."):] if k.startswith("text.") else k: v for k, v in state.items()}


def open_clip_config(model):
    """open_clip's hub config (``open_clip_config.json``: model_cfg + preprocess_cfg) for
    ``model``; ValueError for the CBOW text tower (open_clip has none)."""
    if model.text_encoder != "transformer":
        raise ValueError(f"open_clip's text tower is a transformer; this model uses "
                         f"text_encoder={model.text_encoder!r}")
    if model.text_width % model.text_heads:
        raise ValueError(f"text_width {model.text_width} is not a multiple of text_heads "
                         f"{model.text_heads}")
    text_cfg = dict(context_length=int(model.context_length), vocab_size=int(model.vocab_size),
                    width=int(model.text_width), heads=int(model.text_heads),
                    layers=int(model.text_layers), mlp_ratio=float(model.mlp_ratio))
    if model.vision_patch_size is None:
        head_width, rest = divmod(32 * model.vision_width, model.vision_heads)
        vision_cfg = dict(layers=[int(n) for n in model.vision_layers],
                          width=int(model.vision_width), head_width=int(head_width),
                          image_size=int(model.image_size))
    else:
        head_width, rest = divmod(model.vision_width, model.vision_heads)
        vision_cfg = dict(layers=int(model.vision_layers), width=int(model.vision_width),
                          head_width=int(head_width), patch_size=int(model.vision_patch_size),
                          image_size=int(model.image_size), mlp_ratio=float(model.mlp_ratio))
    if rest:
        raise ValueError(f"the image tower's width is not a multiple of its {model.vision_heads} "
                         "heads; open_clip describes heads by their width (head_width)")
    if float(model.layer_norm_epsilon) != 1e-5:
        for cfg in (vision_cfg, text_cfg):
            cfg["norm_kwargs"] = {"eps": float(model.layer_norm_epsilon)}
    model_cfg = dict(embed_dim=int(model.embed_dim), quick_gelu=model.activation == "quick_gelu",
                     vision_cfg=vision_cfg, text_cfg=text_cfg)
    if model.logit_bias is not None:
        model_cfg["init_logit_bias"] = float(model.logit_bias_init)
    mean, std = openai_normalization()
    preprocess_cfg = dict(mean=mean, std=std, interpolation="bicubic", resize_mode="shortest")
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
