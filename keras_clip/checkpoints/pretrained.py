"""`load_pretrained`: a ``keras_clip.CLIP`` from any CLIP checkpoint file or folder.

What is read, in this order:
- a folder with ``open_clip_config.json`` (an open_clip hub folder; `open_clip_hub`);
- a keras-hub CLIP preset folder (``config.json`` naming ``CLIPBackbone`` + ``model.weights.h5``;
  `keras_hub`);
- a transformers folder (``config.json`` with ``"model_type": "clip"`` + ``model.safetensors`` /
  ``pytorch_model.bin`` / sharded; `transformers`);
- a weights file inside one of those folders: read as the folder (its config says what it is);
- any other file: a bare state dict (OpenAI TorchScript ``.pt``, open_clip ``.bin`` / ``.pt`` /
  ``.pth``, ``.safetensors``, ``.npz``; OpenAI's / open_clip's or transformers' key names),
  or a dict of arrays. The architecture then comes from the tensor shapes (`infer_config`).

Every source goes through the same wrapper rule (`reader.unwrap_state_dict`: ``module.``,
``_orig_mod.``, ``model.`` prefixes; ``state_dict`` / ``model`` containers).

The activation: a folder's config decides it, and an ``activation=`` that contradicts it is an
error. OpenAI's TorchScript archives are QuickGELU. Elsewhere nothing says: QuickGELU (OpenAI's)
is assumed with a warning that names the override (``activation="gelu"`` for open_clip's
plain-named models such as ``ViT-B-32`` or ``RN50``).
"""

import json
import os
import warnings

from keras_clip.checkpoints import keras_hub, open_clip_hub, transformers
from keras_clip.checkpoints.openai import infer_config, load_state_dict
from keras_clip.checkpoints.reader import is_torchscript, numpy_state_dict, read_state_dict
from keras_clip.model import CLIP
from keras_clip.text.vocab_files import check_tokenizer_files
from keras_clip.presets import get_preset

__all__ = ["load_pretrained", "read_pretrained"]


def _folder_kind(folder):
    if open_clip_hub.is_open_clip_folder(folder):
        return "open_clip"
    if keras_hub.is_keras_hub_preset(folder):
        return "keras_hub"
    if transformers.is_transformers_folder(folder):
        return "transformers"
    return None


def _read_folder(folder, kind, weights=None):
    if kind == "open_clip":
        config, state, weights = open_clip_hub.read_open_clip_folder(folder, weights)
    elif kind == "keras_hub":
        config, state = keras_hub.read_keras_hub_preset(folder)
        weights = folder
    else:
        config, state, weights = transformers.read_transformers_folder(folder, weights)
    if kind != "keras_hub":
        check_tokenizer_files(folder)  # vocab.json + merges.txt (+ tokenizer.json), if there
    return config, state, weights


def _named_file_kind(folder, name, path):
    """(kind, weights) when ``path`` is a weight file of a checkpoint folder (read with the
    folder's config, the named file itself), else (None, None)."""
    open_clip = open_clip_hub.is_open_clip_folder(folder)
    if open_clip and name in open_clip_hub.WEIGHT_NAMES:
        return "open_clip", path
    if name in (keras_hub.WEIGHTS_FILE, keras_hub.SHARDED_WEIGHTS_FILE) and \
            keras_hub.is_keras_hub_preset(folder):
        return "keras_hub", None
    if transformers.is_transformers_folder(folder):
        weights = transformers.weights_in_folder(folder, name)
        if weights:
            return "transformers", weights
    if open_clip and name.endswith((".safetensors", ".bin", ".pth", ".pt")):
        return "open_clip", path
    return None, None


def _model_type_note(folder):
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return ""
    if isinstance(config, dict) and "model_type" in config:
        return f" (its config.json has model_type {config['model_type']!r}, not 'clip')"
    return ""


def read_pretrained(path_or_state_dict, text_heads=None, vision_heads=None, infer_architecture=True):
    """Reads a checkpoint without building a model.

    Returns:
        ``(config, state_dict, source, described)``: ``CLIP`` constructor arguments (from the
        folder's config, else inferred from shapes with ``text_heads`` / ``vision_heads``), the
        state dict in open_clip names and torch layouts, a description of what was read for
        messages, and which constructor arguments the source itself states (a set: every
        argument for a folder, ``{"activation"}`` for an OpenAI TorchScript archive, none for a
        bare state dict). With ``infer_architecture=False`` a bare state dict's config is left
        empty (but for what the source states), for a caller that has a preset.

    Raises:
        FileNotFoundError: nothing at the path. ValueError: a folder of no known layout, or a file
        that is not a CLIP checkpoint (naming it, what was found and what was expected).
    """
    if isinstance(path_or_state_dict, dict):
        state, source, described = numpy_state_dict(path_or_state_dict), "state dict", set()
    else:
        path = os.fspath(path_or_state_dict)
        folder, name = os.path.split(os.path.abspath(path))
        kind, weights = None, None
        if os.path.isdir(path):
            kind, folder = _folder_kind(path), path
            if kind is None:
                raise ValueError(
                    f"{path} is not a CLIP checkpoint folder: found {sorted(os.listdir(path))[:20]}"
                    f"{_model_type_note(path)}; "
                    "expected an open_clip hub folder (open_clip_config.json + "
                    "open_clip_model.safetensors / open_clip_pytorch_model.bin), a transformers "
                    "folder (config.json with model_type 'clip' + model.safetensors / "
                    "pytorch_model.bin / model.safetensors.index.json) or a keras-hub CLIP preset "
                    "(config.json + model.weights.h5)")
        elif not os.path.exists(path):
            raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
        else:
            kind, weights = _named_file_kind(folder, name, path)
        if kind is not None:
            config, state, weights = _read_folder(folder, kind, weights)
            label = {"open_clip": "open_clip hub folder", "transformers": "transformers folder",
                     "keras_hub": "keras-hub preset"}[kind]
            source = f"{label} {folder}"
            if weights and os.path.abspath(weights) == os.path.abspath(path):
                source = f"{path} (with its {label}'s config)"
            return config, state, source, set(config)
        state = read_state_dict(path, "CLIP checkpoint")
        source = path
        described = {"activation"} if is_torchscript(path) else set()
    if any(k.startswith(("text_model.", "vision_model.")) for k in state):
        state = transformers.from_transformers_state_dict(state, source)  # bare transformers dict
    state = open_clip_hub.move_custom_text_keys(state)
    config = infer_config(state, source, text_heads=text_heads, vision_heads=vision_heads) \
        if infer_architecture else {}
    if "activation" in described:
        config["activation"] = "quick_gelu"  # OpenAI's released models
    return config, state, source, described


def load_pretrained(path_or_state_dict, preset=None, **overrides):
    """Builds a ``CLIP`` with the weights of a checkpoint file or folder.

    Args:
        path_or_state_dict: a folder (open_clip hub, transformers, keras-hub preset), a weights
            file (``.pt`` OpenAI TorchScript, ``.bin`` / ``.pt`` / ``.pth`` torch state dicts —
            these need torch —, ``.safetensors``, ``.npz``), or a dict of arrays. See the module
            docstring for how each is recognised.
        preset: a ``keras_clip.presets`` name giving the architecture of a bare state dict
            (instead of inferring it from the shapes); for a folder it must agree with the
            folder's config.
        **overrides: ``CLIP`` constructor arguments: ``text_heads`` / ``vision_heads`` (shapes
            cannot show them; inferred as width / 64 otherwise), ``activation``, ``dtype``, ...
            An override that contradicts the folder's config is an error.

    Returns:
        a ``keras_clip.CLIP`` with the checkpoint's weights.

    Raises:
        FileNotFoundError, ValueError (naming the file or folder, what was found and what was
        expected), ImportError (torch files without torch).

    Warns:
        UserWarning when the activation is assumed (a bare state dict and no ``activation=``).

    Example:
        >>> model = load_pretrained("clip-vit-base-patch32/")          # a transformers folder
        >>> model = load_pretrained("ViT-B-32.pt")                     # OpenAI's archive
        >>> model = load_pretrained("open_clip_model.safetensors", activation="gelu")
    """
    config, state, source, described = read_pretrained(
        path_or_state_dict, text_heads=overrides.get("text_heads"),
        vision_heads=overrides.get("vision_heads"), infer_architecture=not preset)
    if preset:
        wanted = get_preset(preset)
        if described - {"activation"}:
            conflicts = {k: (v, config.get(k)) for k, v in wanted.items()
                         if k in config and v != config[k]}
            if conflicts:
                raise ValueError(f"preset {preset!r} does not match {source}: "
                                 + ", ".join(f"{k} {v!r} vs {got!r} in the folder"
                                             for k, (v, got) in sorted(conflicts.items())))
        else:
            activation = config.get("activation")
            config = dict(wanted, **({"activation": activation} if "activation" in described
                                     else {}))
    for key, value in overrides.items():
        if key in described and key in config and config[key] != value:
            raise ValueError(f"{source} says {key}={config[key]!r}; the override {key}={value!r} "
                             "contradicts it (leave it out: the checkpoint's own value is used)")
    if "activation" not in described and "activation" not in overrides:
        warnings.warn(
            f"{source} does not say which activation its model uses: assuming OpenAI's QuickGELU "
            "(activation='quick_gelu'). open_clip's plain-named models (ViT-B-32, RN50, ... "
            "without '-quickgelu') use GELU: pass activation='gelu' (--activation gelu), or load "
            "the hub folder, whose open_clip_config.json says.", UserWarning, stacklevel=2)
    config.update(overrides)
    model = CLIP(**config)
    return load_state_dict(model, state, source)


def load_clip(path, **overrides):
    """A ``CLIP`` from a saved ``.keras`` model or any checkpoint `load_pretrained` reads
    (``overrides`` go to `load_pretrained`, e.g. ``activation`` for a bare state dict; a
    ``.keras`` file takes none: TypeError).

    The one loader of the CLIs that take "a model" (``keras_clip.train --init-from``,
    ``keras_clip.wise_ft``, ``keras_clip.evaluate``). Raises FileNotFoundError naming the path
    when nothing is there, and whatever `load_pretrained` / `keras_clip.saving.load_model` raise.
    """
    from keras_clip.model import CLIP
    from keras_clip.saving import load_model

    if os.fspath(path).endswith(".keras"):
        if overrides:
            raise TypeError(f"a .keras model is loaded as saved; got overrides {sorted(overrides)}")
        return load_model(path, CLIP)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model at {os.fspath(path)!r}: expected a .keras file or a "
                                "checkpoint file or folder (see keras_clip.load_pretrained)")
    return load_pretrained(path, **overrides)

