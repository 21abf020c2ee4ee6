"""One reader for every checkpoint file: ``.safetensors``, ``.npz``, torch state dicts
(``.bin`` / ``.pt`` / ``.pth``), OpenAI's TorchScript archives and pickled torch modules
(``.pkl``, e.g. OpenAI's dVAE ``encoder.pkl``).

Every reader returns ``{key: float32 numpy array}`` after the same unwrapping rule
(`unwrap_state_dict`): a ``{"state_dict": ...}`` (or ``{"model": ...}``) container is opened and a
wrapper prefix that every key shares (``module.`` from DistributedDataParallel, ``_orig_mod.``
from ``torch.compile``, ``model.`` from a training module) is removed. torch is needed only for torch files.

Example:
    >>> state = read_state_dict("open_clip_model.safetensors")   # {"visual.proj": array, ...}
"""

import json
import os
import warnings
import zipfile

import numpy as np

__all__ = ["read_state_dict", "read_sharded_state_dict", "numpy_state_dict", "unwrap_state_dict",
           "is_torchscript", "WRAPPER_PREFIXES"]

# Prefixes that training wrappers put before every key: DistributedDataParallel, torch.compile,
# and a ``model.`` attribute of a training module (PyTorch Lightning's ``self.model``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Containers that hold the state dict one level down (open_clip / Lightning checkpoints).
_CONTAINER_KEYS = ("state_dict", "model")

_TORCH_EXTS = (".pt", ".pth", ".bin", ".ckpt")  # .ckpt: PyTorch Lightning's


def read_state_dict(path, what="checkpoint"):
    """Reads a checkpoint file into ``{key: float32 np.ndarray}``.

    Args:
        path: ``.safetensors``, ``.npz``, ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` (a torch state
            dict or training checkpoint, or an
            OpenAI TorchScript archive), or ``.pkl`` (a whole pickled torch module; needs the
            package that defines its classes, e.g. ``dall-e``).
        what: what the file should hold, for error messages (e.g. "CLIP checkpoint").

    Raises:
        FileNotFoundError: no file at ``path``.
        ImportError: a torch file and no torch installed (or the pickled module's package).
        ValueError: an unknown extension, an unreadable file, or one that holds no arrays; the
            message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".safetensors", ".npz", ".pkl") + _TORCH_EXTS:
        raise ValueError(f"{what} {path}: unsupported file extension {ext!r}; expected "
                         ".safetensors, .npz, .bin, .pt, .pth, .ckpt or .pkl")
    try:
        if ext == ".safetensors":
            from safetensors.numpy import load_file
            state = load_file(path)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        elif ext == ".pkl":
            state = _read_pickled_module(path)
        else:
            state = _read_torch(path)
    except (ImportError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"Could not read {what} {path}: {type(e).__name__}: {e}") from e
    state = numpy_state_dict(state, path)
    if not state:
        raise ValueError(f"{what} {path} holds no tensors")
    return state


def read_sharded_state_dict(index_path, what="checkpoint shard"):
    """Reads a sharded checkpoint from its index (``model.safetensors.index.json`` /
    ``pytorch_model.bin.index.json``, as transformers writes them: ``{"weight_map": {key:
    shard file}}``) into one ``{key: float32 np.ndarray}``.

    Raises:
        ValueError naming the index: not JSON, no ``weight_map``, a shard that lacks a key the
        index puts in it. FileNotFoundError naming a missing shard.
    """
    index_path = os.fspath(index_path)
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except ValueError as e:
        raise ValueError(f"shard index {index_path} is not valid JSON: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"shard index {index_path} has no \"weight_map\" object (key -> shard file)")
    folder = os.path.dirname(index_path)
    state = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(folder, shard)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path} (listed in {index_path}) not found")
        part = read_state_dict(path, what)
        wanted = [k for k, v in weight_map.items() if v == shard]
        missing = [k for k in wanted if k not in part]
        if missing:
            raise ValueError(f"{what} {path} lacks {len(missing)} key(s) that {index_path} puts "
                             f"there, e.g. {missing[:3]}")
        state.update(part)
    return state


def is_torchscript(path):
    """True if ``path`` is a TorchScript archive (OpenAI's released CLIP ``.pt`` files): a zip
    with a ``code/`` folder. Needs no torch."""
    import zipfile
    try:
        with zipfile.ZipFile(os.fspath(path)) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def numpy_state_dict(obj, source="state dict"):
    """``unwrap_state_dict(obj)`` with every value as a float32 numpy array (torch tensors and
    numpy arrays alike); ValueError naming ``source`` and the key of a non-numeric entry."""
    return {str(k): _to_numpy(v, k, source) for k, v in unwrap_state_dict(obj, source).items()}


def unwrap_state_dict(obj, source="state dict"):
    """The flat ``{key: array}`` inside ``obj``: opens ``{"state_dict": ...}`` / ``{"model":
    ...}`` containers and a module's ``state_dict()``, and strips a wrapper prefix shared by
    every key (``module.``, ``_orig_mod.``, ``model.``, repeatedly: ``module._orig_mod.``)."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()  # a whole module: only its parameters are needed
    while isinstance(obj, dict):
        inner = [k for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)]
        if not inner or any(_is_array(v) for v in obj.values()):
            break
        obj = obj[inner[0]]
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict (a mapping of names to arrays), got "
                         f"{type(obj).__name__}")
    changed = True
    while changed and obj:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(str(k).startswith(prefix) for k in obj):
                obj = {str(k)[len(prefix):]: v for k, v in obj.items()}
                changed = True
    return obj


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _import_torch(path, why):
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch ({why}); install torch, or convert the "
                          "weights to .npz / .safetensors, which load without it") from e
    return torch


def _read_torch(path):
    torch = _import_torch(path, "it is a torch checkpoint")
    try:  # OpenAI's released CLIP .pt files are TorchScript archives.
        with warnings.catch_warnings():  # torch >= 2.10 deprecates jit.load; the files are as
            warnings.simplefilter("ignore", FutureWarning)  # OpenAI released them
            return torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError for whole pickled modules
        raise ValueError(f"not a plain state dict for torch.load(weights_only=True) "
                         f"({type(e).__name__}: {e}); if it is a whole pickled module, rename it "
                         ".pkl") from e


def _read_pickled_module(path):
    torch = _import_torch(path, "it is a pickled torch module")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise ImportError(f"reading the pickled module {path} needs the package that defines its "
                          f"classes ({e.name!r}); for OpenAI's encoder.pkl / decoder.pkl install "
                          "`dall-e` (pip install dall-e)") from e


def _to_numpy(value, key, path):
    if hasattr(value, "detach"):  # torch tensor / parameter
        value = value.detach().cpu()
        if not value.is_floating_point() or value.dtype.itemsize < 4:
            value = value.float()
        value = value.numpy()
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: entry {key!r} is not a numeric array "
                         f"({type(value).__name__})") from e
