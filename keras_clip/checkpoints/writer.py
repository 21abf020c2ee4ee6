"""`export_checkpoint`: a ``keras_clip.CLIP`` back to the PyTorch world, as a transformers or an
open_clip hub folder, written atomically.

- ``format="hf"``: ``config.json`` (a ``CLIPConfig``) and ``model.safetensors`` (``CLIPModel``'s
  key names); for models with OpenAI's 49,408-token vocabulary also the tokenizer files
  (``vocab.json``, ``merges.txt``, ...) and ``preprocessor_config.json`` (``CLIPImageProcessor``
  with OpenAI's resize / crop / normalisation): ``transformers.CLIPModel.from_pretrained(folder)``
  and ``CLIPProcessor.from_pretrained(folder)`` load it. ViT image towers only (transformers has no
  ResNet CLIP).
- ``format="open_clip"``: ``open_clip_config.json`` + ``open_clip_model.safetensors``:
  ``open_clip.create_model("local-dir:" + folder)`` loads it. ViT and ResNet.

Both folders load back with `keras_clip.load_pretrained(folder)`.
"""

import json
import os

from keras_clip.checkpoints import open_clip_hub, transformers
from keras_clip.checkpoints.openai import state_dict
from keras_clip.saving import atomic_folder
from keras_clip.text.vocab_files import write_tokenizer_files

__all__ = ["FORMATS", "export_checkpoint"]

FORMATS = ("hf", "open_clip")
OPENAI_VOCAB_SIZE = 49408


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# What an export writes (either format): the only files a folder replaced with overwrite=True may
# hold, so that a mistyped path cannot take a user's other files with it.
EXPORT_FILES = frozenset({
    "config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt",
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
    "open_clip_config.json", "open_clip_model.safetensors"})


def _check_replaceable(out_dir):
    path = os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(path):
        return
    cwd = os.path.abspath(os.getcwd())
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
        raise FileExistsError(f"refusing to replace {path}: it is the current directory or one "
                              "of its parents; export into a new folder")
    foreign = sorted(set(os.listdir(path)) - EXPORT_FILES)
    if foreign:
        raise FileExistsError(f"refusing to replace {path}: it holds files an export does not "
                              f"write ({foreign[:10]}); choose a new folder, or empty it first")


def export_checkpoint(model, out_dir, format="hf", overwrite=False):
    """Writes ``model`` as a transformers (``format="hf"``) or open_clip hub
    (``format="open_clip"``) folder at ``out_dir``.

    The folder is built under a temporary name beside ``out_dir`` and renamed into place, so a
    failure leaves nothing behind and an existing folder is replaced only whole
    (``overwrite=True``, and only a folder holding nothing but files an export writes). Weights
    are written float32 (safetensors). A process killed by a signal while writing may leave its
    hidden temporary folder (``.OUT_DIR.*``) beside ``out_dir``; the old folder is intact.

    Args:
        model: a ``keras_clip.CLIP`` with the transformer text tower.
        out_dir: the folder to create.
        format: "hf" (transformers; ViT models only) or "open_clip".
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: an unknown format; a ResNet model for "hf"; a CBOW text tower.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or it holds other files
            than an export's, or it is the current directory or a parent of it.

    Example:
        >>> keras_clip.export_checkpoint(model, "clip-finetuned-hf", format="hf")
        >>> transformers.CLIPModel.from_pretrained("clip-finetuned-hf")
    """
    from safetensors.numpy import save_file

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    weights = state_dict(model)  # raises for the CBOW text tower
    if format == "hf":
        config = transformers.transformers_config(model)  # raises for a ResNet
        weights = transformers.to_transformers_state_dict(weights)
    else:
        config = open_clip_hub.open_clip_config(model)
    if overwrite:
        _check_replaceable(out_dir)
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        if format == "hf":
            _write_json(os.path.join(tmp, transformers.CONFIG_NAME), config)
            save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            if int(model.vocab_size) == OPENAI_VOCAB_SIZE:  # OpenAI's BPE: CLIPProcessor loads
                write_tokenizer_files(tmp, context_length=int(model.context_length),
                                      image_size=int(model.image_size))
        else:
            _write_json(os.path.join(tmp, open_clip_hub.CONFIG_NAME), config)
            save_file(weights, os.path.join(tmp, "open_clip_model.safetensors"),
                      metadata={"format": "pt"})
    return os.fspath(out_dir)
