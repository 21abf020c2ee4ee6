"""keras-hub CLIP preset folders → ``keras_clip.CLIP`` constructor arguments and an OpenAI /
open_clip state dict, without keras-hub (only ``json`` and ``h5py``, which Keras needs anyway).

A preset folder is what ``keras_hub.models.CLIPBackbone(...).save_to_preset(folder)`` writes:
``config.json`` (the serialised backbone), ``metadata.json``, and the weights as
``model.weights.h5`` (or, above ``max_shard_size``, ``model.weights.json`` naming h5 shards);
a task's preset adds tokenizer / preprocessor files, which are not read here.

The architecture comes from ``config.json``; the weights from the h5 file(s), in the layout Keras
3's ``save_weights`` writes (``layers/<layer>/.../vars/<i>``). Layers are found by the ``name``
attribute Keras stores on each ``vars`` group (``encoder_block_3``, ``vision_projection``, ...;
keras-hub prefixes an encoder's own layers with ``<encoder name>_`` when the encoder was rebuilt
from a config, which is stripped), falling back to the container paths Keras derives from class
names (``clip_encoder_layer_3``, ``dense_1``, ...) when a file has no such attributes (Keras <
3.6). Also read: sharded weights (``model.weights.json``), bfloat16 datasets (as float32), and
Keras < 3.0.3's ``_query_dense``-style attention groups.

keras-hub's CLIP (keras_hub/src/models/clip/, keras-hub 0.32) is OpenAI's CLIP, with these
differences of representation, all mapped exactly:

* attention: Keras ``MultiHeadAttention`` kernels (width, heads, head_dim) and biases
  (heads, head_dim), output kernel (heads, head_dim, width) → torch's fused ``in_proj_weight``
  [Wq; Wk; Wv] (3 width, width) and ``out_proj.weight`` (width, width), (out, in) layout;
* the vision position embedding is an ``Embedding`` looked up with the stored ``position_ids``
  (0..N-1 in converted presets, all 0 in a freshly built model): ``visual.positional_embedding``
  is that lookup, so either gives keras-hub's numbers;
* projections are bias-free ``Dense`` kernels (width, embed), which is OpenAI's
  ``visual.proj`` / ``text_projection`` layout; the logit scale is ``clip_head``'s variable.

keras-hub's text tower ends with a LayerNorm of epsilon 1e-6 (``TEXT_FINAL_LAYER_NORM_EPSILON``;
every other LayerNorm, and OpenAI's, uses 1e-5): the returned config sets
``text_final_layer_norm_epsilon`` to it.

Example:
    >>> from keras_clip.checkpoints.keras_hub import is_keras_hub_preset, read_keras_hub_preset
    >>> from keras_clip.checkpoints.openai import load_state_dict
    >>> config, state = read_keras_hub_preset("clip_vit_base_patch32/")
    >>> model = load_state_dict(keras_clip.CLIP(**config), state, "clip_vit_base_patch32/")
"""

import json
import os
import re

import numpy as np

__all__ = ["is_keras_hub_preset", "read_keras_hub_preset", "CONFIG_FILE", "WEIGHTS_FILE",
           "SHARDED_WEIGHTS_FILE", "TEXT_FINAL_LAYER_NORM_EPSILON"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"  # keras' ShardedH5IOStore index: {"weight_map": ...}
# keras-hub's CLIPTextEncoder final LayerNorm (clip_text_encoder.py); keras_clip uses 1e-5.
TEXT_FINAL_LAYER_NORM_EPSILON = 1e-6
LAYER_NORM_EPSILON = 1e-5  # every other keras-hub CLIP LayerNorm, as OpenAI's (torch default)

_BACKBONE = "CLIPBackbone"
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # keras' gelu is the exact erf form


# --- config.json ---------------------------------------------------------------------------------
def _is_keras_hub_object(obj):
    return isinstance(obj, dict) and (
        str(obj.get("registered_name") or "").startswith("keras_hub>")
        or str(obj.get("module") or "").startswith("keras_hub"))


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Could not read {path}: {type(e).__name__}: {e}") from e


def is_keras_hub_preset(folder):
    """True when ``folder`` looks like a keras-hub preset: a directory with ``config.json`` and
    either keras-hub weights (``model.weights.h5`` / ``model.weights.json``) or a config that
    names a keras-hub class. Any keras-hub backbone counts (`read_keras_hub_preset` then says
    when it is not a CLIP); never raises."""
    try:
        folder = os.fspath(folder)
        if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            return False
        weight_files = (WEIGHTS_FILE, SHARDED_WEIGHTS_FILE)
        if any(os.path.isfile(os.path.join(folder, f)) for f in weight_files):
            return True
        return _is_keras_hub_object(_read_json(os.path.join(folder, CONFIG_FILE)))
    except (TypeError, ValueError, OSError):
        return False


def _class_of(obj):
    if not isinstance(obj, dict):
        return type(obj).__name__
    return obj.get("registered_name") or obj.get("class_name") or "an object with no class_name"


def _sub_config(config, key, class_name, path):
    sub = config.get(key)
    if not (isinstance(sub, dict) and sub.get("class_name") == class_name
            and isinstance(sub.get("config"), dict)):
        raise ValueError(f"{path}: config['{key}'] should be a keras-hub {class_name}, got "
                         f"{_class_of(sub)}")
    return sub["config"]


def _field(config, key, path, where):
    if key not in config:
        raise ValueError(f"{path}: {where} config has no {key!r} field (has {sorted(config)})")
    return config[key]


def _image_size(vision, path):
    shape = list(_field(vision, "image_shape", path, "vision_encoder"))
    if len(shape) == 3 and shape[-1] == 3 and shape[0] == shape[1]:
        return int(shape[0])  # channels_last (H, W, 3)
    if len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]:
        return int(shape[1])  # channels_first (3, H, W): same kernels, NHWC inputs for keras_clip
    raise ValueError(f"{path}: vision_encoder image_shape {shape} is not a square RGB image "
                     "shape (H, H, 3) or (3, H, H)")


def _check_dtype(config, path):
    dtype = config.get("dtype")
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    cls = dtype.get("class_name", "") if isinstance(dtype, dict) else ""
    if "Quant" in cls or (isinstance(name, str) and name.split("_")[0] in ("int8", "int4",
                                                                            "float8", "gptq")):
        raise ValueError(f"{path}: the backbone is quantized (dtype policy {name!r}); keras_clip "
                         "reads float presets only (save the unquantized backbone)")


def _read_config(folder):
    """(keras_clip.CLIP kwargs, {"vision" / "text": encoder name}) from ``folder/config.json``."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"keras-hub preset {folder} has no {CONFIG_FILE}")
    top = _read_json(path)
    if not (isinstance(top, dict) and top.get("class_name") == _BACKBONE
            and _is_keras_hub_object(top) and isinstance(top.get("config"), dict)):
        raise ValueError(f"{path} describes {_class_of(top)}, not a keras-hub CLIP backbone "
                         f"(keras_hub>{_BACKBONE}); keras_clip reads only CLIP presets")
    config = top["config"]
    _check_dtype(config, path)
    vision = _sub_config(config, "vision_encoder", "CLIPVisionEncoder", path)
    text = _sub_config(config, "text_encoder", "CLIPTextEncoder", path)
    for sub in (vision, text):
        _check_dtype(sub, path)

    def get(cfg, key, where):
        return _field(cfg, key, path, where)

    acts = {w: get(c, "intermediate_activation", f"{w}_encoder")
            for w, c in (("vision", vision), ("text", text))}
    for where, act in acts.items():
        if act not in _ACTIVATIONS:
            raise ValueError(f"keras-hub preset {folder}: the {where} encoder's MLP activation "
                             f"is {act!r}; keras_clip.CLIP has only {sorted(_ACTIVATIONS)}")
    if acts["vision"] != acts["text"]:
        raise ValueError(f"keras-hub preset {folder}: the vision encoder uses {acts['vision']!r} "
                         f"and the text encoder {acts['text']!r}; keras_clip.CLIP has one "
                         "activation for both towers")
    v_width, t_width = get(vision, "hidden_dim", "vision_encoder"), get(text, "hidden_dim",
                                                                        "text_encoder")
    ratios = {w: get(c, "intermediate_dim", f"{w}_encoder") / width
              for w, c, width in (("vision", vision, v_width), ("text", text, t_width))}
    if ratios["vision"] != ratios["text"]:
        raise ValueError(f"keras-hub preset {folder}: the MLPs are {ratios['vision']:g} x the "
                         f"width in the vision encoder and {ratios['text']:g} x in the text "
                         "encoder; keras_clip.CLIP has one mlp_ratio for both towers")
    for where, c, width in (("vision", vision, v_width), ("text", text, t_width)):
        hidden = int(width * ratios[where])
        if hidden != get(c, "intermediate_dim", f"{where}_encoder"):
            raise ValueError(f"keras-hub preset {folder}: {where} intermediate_dim "
                             f"{c['intermediate_dim']} is not int({width} x mlp_ratio)")
    embedding_dim = get(text, "embedding_dim", "text_encoder")
    if embedding_dim != t_width:
        raise ValueError(f"keras-hub preset {folder}: the text encoder's embedding_dim "
                         f"({embedding_dim}) differs from its hidden_dim ({t_width}); "
                         "keras_clip.CLIP's text embeddings are the transformer width")
    kwargs = dict(
        embed_dim=int(get(config, "projection_dim", "backbone")),
        image_size=_image_size(vision, path),
        vision_layers=int(get(vision, "num_layers", "vision_encoder")),
        vision_width=int(v_width),
        vision_patch_size=int(get(vision, "patch_size", "vision_encoder")),
        vision_heads=int(get(vision, "num_heads", "vision_encoder")),
        context_length=int(get(text, "max_sequence_length", "text_encoder")),
        vocab_size=int(get(text, "vocabulary_size", "text_encoder")),
        text_width=int(t_width),
        text_heads=int(get(text, "num_heads", "text_encoder")),
        text_layers=int(get(text, "num_layers", "text_encoder")),
        activation=_ACTIVATIONS[acts["vision"]],
        mlp_ratio=ratios["vision"],
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        text_final_layer_norm_epsilon=TEXT_FINAL_LAYER_NORM_EPSILON,
    )
    names = {"vision": vision.get("name"), "text": text.get("name")}
    return kwargs, names


# --- model.weights.h5 ----------------------------------------------------------------------------
def _is_float(array):
    return array.dtype.kind == "f" or str(array.dtype) == "bfloat16"


class _Weights:
    """Every dataset of the weight file(s): ``arrays`` {h5 path: numpy array}, ``names`` {layer
    group path: the ``name`` attribute of its ``vars`` group}, ``groups`` (all group paths)."""

    def __init__(self, folder):
        import h5py  # comes with keras

        single = os.path.join(folder, WEIGHTS_FILE)
        index = os.path.join(folder, SHARDED_WEIGHTS_FILE)
        if os.path.isfile(single):
            files = [single]
            self.source = single
        elif os.path.isfile(index):
            sharding = _read_json(index)
            weight_map = sharding.get("weight_map") if isinstance(sharding, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no 'weight_map' naming the weight shards")
            shards = sorted({f for v in weight_map.values()
                             for f in (v if isinstance(v, list) else [v])})
            files = [os.path.join(folder, f) for f in shards]
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise FileNotFoundError(f"{index} names weight shards that are missing: {missing}")
            self.source = index
        else:
            raise FileNotFoundError(f"keras-hub preset {folder} has no {WEIGHTS_FILE} (or sharded "
                                    f"{SHARDED_WEIGHTS_FILE})")
        self.arrays, self.names, self.groups = {}, {}, set()
        for file in files:
            try:
                with h5py.File(file, "r") as h5:
                    h5.visititems(self._visit)
            except OSError as e:
                raise ValueError(f"Could not read {file} as HDF5: {e}") from e
        self.used = set()

    def _visit(self, path, obj):
        if hasattr(obj, "shape"):  # a dataset
            value = obj[()]
            if obj.attrs.get("dtype") == "bfloat16":  # keras stores bfloat16 with this tag
                import ml_dtypes  # a keras dependency
                value = np.asarray(value).view(ml_dtypes.bfloat16)
            self.arrays[path] = np.asarray(value)
            return
        self.groups.add(path)
        if path.endswith("/vars") and "name" in obj.attrs:
            name = obj.attrs["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            self.names[path[: -len("/vars")]] = name

    def children(self, parent):
        """{layer name: group path} of the layers of the Functional model at ``parent``."""
        prefix = f"{parent}/layers/" if parent else "layers/"
        out = {}
        for group in sorted(self.groups):
            if group.startswith(prefix) and "/" not in group[len(prefix):]:
                out[group] = self.names.get(group)
        return out

    def found_under(self, path):
        """The datasets under the nearest existing ancestor group of ``path`` (for errors)."""
        parent = path
        while parent and parent not in self.groups:
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
        found = sorted(p for p in self.arrays if p.startswith(parent + "/" if parent else ""))
        shown = ", ".join(found[:12]) + (f" ... ({len(found)} in all)" if len(found) > 12 else "")
        return f"found under {parent or 'the file root'!r}: {shown or 'no datasets'}"

    def get(self, group, index, what, float_=True):
        path = f"{group}/vars/{index}"
        if path not in self.arrays:
            raise ValueError(f"{self.source}: missing dataset {path!r} ({what}); "
                             f"{self.found_under(path)}")
        self.used.add(path)
        value = self.arrays[path]
        if not float_:
            return value
        if not _is_float(value):
            raise ValueError(f"{self.source}: dataset {path!r} ({what}) is {value.dtype}, not "
                             "floating point (a quantized preset?)")
        return np.asarray(value, np.float32)


def _resolve(weights, parent, wanted, fallback, prefix, where, rename=None):
    """{logical name: group path} for the layers ``wanted`` under ``parent``: by the ``vars``
    name attribute (minus ``prefix``, then through ``rename``), else by Keras' class-derived
    group name (``fallback``: group basename → logical name)."""
    children = weights.children(parent)
    out = {}
    for group, name in children.items():
        if name is not None:
            if prefix and name.startswith(prefix):
                name = name[len(prefix):]
            name = (rename or {}).get(name, name)
        else:
            name = fallback(group.rsplit("/", 1)[-1])
        if name in wanted:
            if name in out:
                raise ValueError(f"{weights.source}: two layers of {where} are named {name!r} "
                                 f"({out[name]!r} and {group!r})")
            out[name] = group
    missing = [n for n in wanted if n not in out]
    if missing:
        shown = {g.rsplit("/", 1)[-1]: n for g, n in children.items()}
        raise ValueError(f"{weights.source}: {where} has no layer {missing[0]!r} (missing "
                         f"{missing}); found layer groups under {parent or 'the root'!r} "
                         f"(group: name) {shown}")
    return out


def _container_fallback(table):
    """A fallback for files without name attributes: Keras names container children by class
    (snake case) with _1, _2... suffixes in layer order."""
    def fallback(base):
        if base in table:
            return table[base]
        m = re.fullmatch(r"clip_encoder_layer(?:_(\d+))?", base)
        if m:
            return f"encoder_block_{int(m.group(1) or 0)}"
        return None
    return fallback


_BACKBONE_FALLBACK = {"clip_vision_encoder": "vision_encoder", "clip_text_encoder": "text_encoder",
                      "dense": "vision_projection", "dense_1": "text_projection",
                      "clip_head": "clip_head"}
_VISION_FALLBACK = {"clip_vision_embedding": "embedding", "layer_normalization": "pre_layer_norm",
                    "layer_normalization_1": "layer_norm"}
_TEXT_FALLBACK = {"token_and_position_embedding": "embedding", "layer_normalization": "layer_norm"}


def _linear(weights, group, what):
    """A Dense layer → (torch (out, in) weight, bias)."""
    return (weights.get(group, 0, what + " kernel").T,
            weights.get(group, 1, what + " bias"))


def _blocks(weights, groups, layers, torch_prefix, width, state):
    for i in range(layers):
        g, p = groups[f"encoder_block_{i}"], f"{torch_prefix}.resblocks.{i}"
        what = f"{torch_prefix} block {i}"
        # Keras' MultiHeadAttention sublayers: `query_dense` (a property since Keras 3.0.3),
        # `_query_dense` (the attribute itself) in files of older Keras versions.
        dense = {n: f"{g}/attention/{n}_dense" if f"{g}/attention/{n}_dense" in weights.groups
                 or f"{g}/attention/_{n}_dense" not in weights.groups
                 else f"{g}/attention/_{n}_dense" for n in ("query", "key", "value", "output")}
        q, k, v = (weights.get(dense[n], 0, f"{what} attention {n} kernel")
                   for n in ("query", "key", "value"))
        qb, kb, vb = (weights.get(dense[n], 1, f"{what} attention {n} bias")
                      for n in ("query", "key", "value"))
        for name, kernel in (("query", q), ("key", k), ("value", v)):
            if kernel.ndim != 3 or kernel.shape[0] != width:
                raise ValueError(f"{weights.source}: {dense[name]} kernel has shape "
                                 f"{kernel.shape}, expected ({width}, heads, head_dim)")
        # (width, heads, head_dim) → (width, heads * head_dim) → torch (out, in); heads major.
        state[p + ".attn.in_proj_weight"] = np.concatenate(
            [w.reshape(width, -1).T for w in (q, k, v)], axis=0)
        state[p + ".attn.in_proj_bias"] = np.concatenate([b.reshape(-1) for b in (qb, kb, vb)])
        out = weights.get(dense["output"], 0, f"{what} attention output kernel")
        state[p + ".attn.out_proj.weight"] = out.reshape(-1, width).T
        state[p + ".attn.out_proj.bias"] = weights.get(dense["output"], 1,
                                                       f"{what} attention output bias")
        for keras_name, torch_name in (("layer_norm_1", "ln_1"), ("layer_norm_2", "ln_2")):
            state[f"{p}.{torch_name}.weight"] = weights.get(f"{g}/{keras_name}", 0,
                                                            f"{what} {keras_name} gamma")
            state[f"{p}.{torch_name}.bias"] = weights.get(f"{g}/{keras_name}", 1,
                                                          f"{what} {keras_name} beta")
        for keras_name, torch_name in (("dense_1", "c_fc"), ("dense_2", "c_proj")):
            w, b = _linear(weights, f"{g}/{keras_name}", f"{what} {keras_name}")
            state[f"{p}.mlp.{torch_name}.weight"], state[f"{p}.mlp.{torch_name}.bias"] = w, b


def _norm(weights, group, key, what, state):
    state[key + ".weight"] = weights.get(group, 0, what + " gamma")
    state[key + ".bias"] = weights.get(group, 1, what + " beta")


def _state_dict(weights, config, names):
    state = {}
    # The encoders' layers are named after the config's encoder names.
    top = _resolve(weights, "", ["vision_encoder", "text_encoder", "vision_projection",
                                 "text_projection", "clip_head"], _BACKBONE_FALLBACK.get, None,
                   "the CLIP backbone",
                   rename={names["vision"]: "vision_encoder", names["text"]: "text_encoder"})
    state["logit_scale"] = weights.get(top["clip_head"], 0, "logit scale").reshape(())
    state["visual.proj"] = weights.get(top["vision_projection"], 0, "vision projection kernel")
    state["text_projection"] = weights.get(top["text_projection"], 0, "text projection kernel")

    v_layers, t_layers = config["vision_layers"], config["text_layers"]
    blocks = [f"encoder_block_{i}" for i in range(v_layers)]
    v = _resolve(weights, top["vision_encoder"], ["embedding", "pre_layer_norm", "layer_norm"]
                 + blocks, _container_fallback(_VISION_FALLBACK), f"{names['vision']}_",
                 "the vision encoder")
    emb = v["embedding"]
    state["visual.conv1.weight"] = weights.get(f"{emb}/patch_embedding", 0,
                                               "patch embedding kernel").transpose(3, 2, 0, 1)
    state["visual.class_embedding"] = weights.get(emb, 0, "class embedding")
    table = weights.get(f"{emb}/position_embedding", 0, "vision position embedding")
    ids = weights.get(emb, 1, "vision position_ids", float_=False)
    ids = np.asarray(ids).reshape(-1)
    if ids.dtype.kind not in "iu" or ids.size == 0 or ids.min() < 0 or ids.max() >= len(table):
        raise ValueError(f"{weights.source}: vision position_ids {ids.tolist()[:8]}... are not "
                         f"indices into the {len(table)}-row position embedding")
    state["visual.positional_embedding"] = table[ids]  # keras-hub looks the rows up by these
    _norm(weights, v["pre_layer_norm"], "visual.ln_pre", "vision pre_layer_norm", state)
    _norm(weights, v["layer_norm"], "visual.ln_post", "vision layer_norm", state)
    _blocks(weights, v, v_layers, "visual.transformer", config["vision_width"], state)

    blocks = [f"encoder_block_{i}" for i in range(t_layers)]
    t = _resolve(weights, top["text_encoder"], ["embedding", "layer_norm"] + blocks,
                 _container_fallback(_TEXT_FALLBACK), f"{names['text']}_", "the text encoder")
    emb = t["embedding"]
    state["token_embedding.weight"] = weights.get(f"{emb}/token_embedding", 0, "token embedding")
    state["positional_embedding"] = weights.get(f"{emb}/position_embedding", 0,
                                                "text position embedding")
    _norm(weights, t["layer_norm"], "ln_final", "text layer_norm", state)
    _blocks(weights, t, t_layers, "transformer", config["text_width"], state)

    unused = sorted(p for p, a in weights.arrays.items()
                    if p not in weights.used and _is_float(a))
    if unused:
        raise ValueError(f"{weights.source} holds weights that a keras-hub CLIP of this config "
                         f"does not have and keras_clip would ignore ({len(unused)}): "
                         + ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""))
    return state


def read_keras_hub_preset(folder):
    """Read a keras-hub CLIP preset folder (``CLIPBackbone.save_to_preset``) without keras-hub.

    Args:
        folder: the preset directory (``config.json`` + ``model.weights.h5``, or a sharded
            ``model.weights.json`` with its h5 shards).

    Returns:
        ``(config, state_dict)``: ``config`` the ``keras_clip.CLIP`` keyword arguments (ViT image
        tower; ``vision_heads`` / ``text_heads`` from the config, not inferred), ``state_dict``
        ``{open_clip key: float32 numpy array}`` in torch's layouts, for
        ``keras_clip.checkpoints.openai.load_state_dict``.

    Raises:
        FileNotFoundError: no ``config.json`` or no weight file in ``folder``.
        ValueError: ``config.json`` is not a keras-hub ``CLIPBackbone`` (names the class found);
            the preset uses something ``keras_clip.CLIP`` cannot express (names the folder and
            the difference: an activation other than quick_gelu / gelu, different activations
            or MLP ratios in the two towers, a quantized dtype); the h5 lacks a dataset (names
            the file, the dataset and what was found) or holds unmapped weights.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"keras-hub preset folder not found: {folder}")
    config, names = _read_config(folder)
    weights = _Weights(folder)
    return config, _state_dict(weights, config, names)
