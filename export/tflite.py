"""TFLite (LiteRT) export of the CLIP towers and the dVAE decoder, refused unless it matches Keras.

Parts (each converted from a frozen ``tf.function`` with a fixed batch-1 signature):

* ``image``: CLIP image encoder. In: float32 [1, S, S, 3], NHWC, already resized and normalised
  with CLIP's mean/std (``keras_clip.preprocessing``). Out: float32 [1, embed_dim], the
  *unnormalised* embedding (as ``CLIP.encode_image``; L2-normalise it yourself).
* ``text``: CLIP text encoder. In: int32 token ids [1, context_length]. Out: float32
  [1, embed_dim] (as ``CLIP.encode_text``). Tokenization stays OUTSIDE the .tflite (TF Text's
  regex ops do not exist in LiteRT): run ``keras_clip.tokenize(texts, context_length=...)`` in
  Python (or port the BPE) and feed the ids.
* ``dvae-decoder``: DiscreteVAE decoder. In: int32 token ids [1, h, w] (h = w = image_size /
  2**(group_count-1)). Out: float32 images [1, H, W, 3] in [0, 1] (as ``DiscreteVAE.decode``).

Variants: ``fp32``; ``fp16`` (float16 weights, float compute); ``dynamic-int8`` (int8 weights,
activations quantised on the fly); ``int8`` (int8 weights and activations calibrated on a
representative dataset — built-in shapes data or scikit-image photos; the model's inputs and
outputs stay float32 / int32, quantise/dequantise happen inside).

Only LiteRT builtin ops are allowed (``TFLITE_BUILTINS`` [+ ``TFLITE_BUILTINS_INT8``]): the pip
``ai_edge_litert`` interpreter cannot run Flex (SELECT_TF_OPS) ops, so a model needing them
fails with `UnsupportedOpsError` naming the ops.

Parity: every export runs the .tflite in ``ai_edge_litert`` on real photos (scikit-image) and
on the shapes data, and compares with the Keras model per example. The gate is the **minimum**
per-example cosine similarity over all those examples (the worst case, not the mean: one badly
quantised input is what a user would hit). Embeddings: cosine of the embeddings. Decoder: cosine
of the *centred* decoded pixels (each image minus the Keras image's mean — plain pixel cosine is
≈ 1 for any two light images); PSNR and max |diff| are reported too. Below ``threshold``
(default 0.99) the export is refused with `ParityError` and nothing is written, unless
``force=True``. The file is written to a temporary name, measured, then renamed.

Example:
    $ python -m export.tflite runs/demo/clip.keras --part image --variant fp16 --out img.tflite
    $ python -m export.tflite runs/demo/dvae.keras --all tflite/     # every part × variant
    $ python -m export.tflite runs/demo/clip.keras --all tflite/ --variants fp32,fp16
    >>> report = export_tflite(model, "text", "dynamic-int8", "text.tflite")
    >>> report["parity"]["min_cosine"]      # ≥ threshold, or ParityError (BENCHMARKS.md)
"""

import argparse
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from keras_clip.cli import add_tf_logs_flag  # noqa: E402

PARTS = ("image", "text", "dvae-decoder")
VARIANTS = ("fp32", "fp16", "dynamic-int8", "int8")
REPRESENTATIVE = ("shapes", "photos")
DEFAULT_THRESHOLD = 0.99
# scikit-image's bundled photos (no download). Grayscale ones are replicated to RGB.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry",
          "hubble_deep_field", "colorwheel", "camera", "coins", "moon", "clock")
PHOTO_CAPTIONS = ("a photo of an astronaut", "a cup of coffee", "a photo of a cat",
                  "a rocket on the launch pad", "a ginger cat", "a microscope image of tissue",
                  "galaxies in deep space", "a colour wheel", "a man with a camera",
                  "a pile of coins", "the surface of the moon", "a clock on a table")
NUM_SHAPES = 32  # parity examples from the shapes "val" split
NUM_CALIBRATION = 32  # representative examples for full int8


class UnsupportedOpsError(ValueError):
    """The model needs ops that are not LiteRT builtins (they would need Flex / SELECT_TF_OPS)."""


class ParityError(ValueError):
    """A converted model's outputs are further from Keras than the threshold allows."""


# ------------------------------------------------------------------------------------- models
def _model_kind(model):
    from keras_clip.model import CLIP
    from keras_dalle import DiscreteVAE
    if isinstance(model, CLIP):
        return "clip"
    if isinstance(model, DiscreteVAE):
        return "dvae"
    return type(model).__name__


def load_model(path):
    """Load a keras_clip ``CLIP`` or keras_dalle ``DiscreteVAE`` from a .keras file."""
    from keras_clip import CLIP
    from keras_clip.saving import load_model as load
    from keras_dalle import DiscreteVAE
    return load(path, (CLIP, DiscreteVAE))


def _check_part(model, part):
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")
    kind = _model_kind(model)
    need = "dvae" if part == "dvae-decoder" else "clip"
    if kind != need:
        name = {"clip": "a CLIP model", "dvae": "a DiscreteVAE"}.get(kind, f"a {kind}")
        wanted = "a keras_dalle DiscreteVAE" if need == "dvae" else "a keras_clip CLIP model"
        parts = [p for p in PARTS if (p == "dvae-decoder") == (kind == "dvae")]
        hint = f" (parts of {name}: {', '.join(parts)})" if kind in ("clip", "dvae") else ""
        raise ValueError(f"part {part!r} needs {wanted}, but the model is {name}{hint}")


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def parts_of(model):
    """The parts this model exports: ("image", "text") for CLIP, ("dvae-decoder",) for a dVAE."""
    kind = _model_kind(model)
    if kind == "clip":
        return ("image", "text")
    if kind == "dvae":
        return ("dvae-decoder",)
    raise ValueError(f"expected a keras_clip CLIP or keras_dalle DiscreteVAE, got {kind}")


def input_spec(model, part):
    """The fixed batch-1 ``tf.TensorSpec`` of a part's input."""
    import tensorflow as tf
    _check_part(model, part)
    if part == "image":
        s = model.image_size
        return tf.TensorSpec([1, s, s, 3], tf.float32, name="images")
    if part == "text":
        return tf.TensorSpec([1, model.context_length], tf.int32, name="token_ids")
    g = model.token_grid_size
    return tf.TensorSpec([1, g, g], tf.int32, name="tokens")


def keras_fn(model, part):
    """The part as a Python callable on a batch (what the .tflite must reproduce)."""
    _check_part(model, part)
    if part == "image":
        return model.encode_image
    if part == "text":
        return model.encode_text
    return model.decode


def _decode_by_gather(vae):
    """``vae.decode`` with the one-hot → 1×1 conv input layer written as a row gather.

    Same numbers (a 1×1 conv of a one-hot vector is exactly its kernel row plus the bias), but
    LiteRT's int8 ONE_HOT writes the off value as the zero point's neighbour instead of 0 after
    dequantisation (BENCHMARKS.md, "TFLite parity"), which wrecks full-int8 decoders; a GATHER quantises
    cleanly and skips the vocab-wide one-hot tensor. Out-of-range ids fail in LiteRT's GATHER.
    """
    from keras import ops

    from keras_dalle.vae import unmap_pixels
    if not vae.built:
        vae.build()
    dec = vae.decoder
    conv = dec.input_conv

    def decode(tokens):
        table = ops.reshape(conv.kernel, (vae.vocab_size, dec.n_init))
        x = ops.take(table, ops.cast(tokens, "int32"), axis=0) + conv.bias  # (B, h, w, n_init)
        # The rest mirrors DVAEDecoder.call (groups, nearest ×2 between them).
        for g, blocks in enumerate(dec.groups):
            for block in blocks:
                x = block(x)
            if g < dec.group_count - 1:
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
        maps = ops.cast(dec.output_conv(ops.relu(x)), "float32")
        return unmap_pixels(ops.sigmoid(maps[..., :vae.num_channels]))

    return decode


def concrete_function(model, part):
    """A frozen (weights as constants) concrete function of the part at batch 1."""
    import tensorflow as tf

    from keras_clip.compat import convert_variables_to_constants_v2
    fn = _decode_by_gather(model) if part == "dvae-decoder" else keras_fn(model, part)
    traced = tf.function(lambda x: tf.cast(fn(x), tf.float32),
                         input_signature=[input_spec(model, part)])
    # Freezing first: converting a function that captures Keras 3 variables keeps them as
    # LiteRT resource variables (VAR_HANDLE / READ_VARIABLE), which the pip interpreter leaves
    # uninitialised (NaN outputs).
    return convert_variables_to_constants_v2(traced.get_concrete_function())


# ------------------------------------------------------------------------------------- data
def photo_images():
    """The scikit-image photos as a list of uint8 (H, W, 3) arrays."""
    import skimage.data
    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        out.append(img[..., :3].astype(np.uint8))
    return out


def _photo_crops(n, seed=0):
    """n random square crops (+ flips) of the photos, as uint8 arrays of their own sizes:
    calibration views of the photos that differ from the centre crops the parity check uses
    (the preprocessor then resizes them)."""
    rng = np.random.default_rng(seed)
    photos = photo_images()
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
    return out


# Every image below goes through CLIP's one image path (CLIPImagePreprocessor): PIL's exact
# bicubic resize and centre crop, then OpenAI's normalisation (CLIP) or none (the dVAE's [0, 1]).
def _clip_inputs(images, size):
    """uint8 images (a batch, or a list of any sizes) → CLIP-normalised float32 [N, S, S, 3]."""
    from keras_clip.preprocessing import preprocess_images
    return preprocess_images(images, image_size=size).astype(np.float32)


def _unit_images(images, size):
    """uint8 images (a batch, or a list of any sizes) → float32 [N, S, S, 3] in [0, 1] (8-bit
    levels / 255), resized and cropped as for CLIP: the dVAE's input."""
    from keras_clip.preprocessing import preprocess_images
    return preprocess_images(images, image_size=size, mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0)).astype(np.float32)


def _shapes(num, split, size, seed):
    """Shapes data at `size` px as uint8 (drawn at ≥ 16 px, the generator's minimum, and then
    resized by the preprocessor)."""
    from keras_clip.data.shapes import generate_shapes
    data = generate_shapes(num, split=split, image_size=max(size, 16), seed=seed)
    if size < 16:  # the preprocessor's [0, 1] values are exact 8-bit levels / 255
        data["images"] = np.round(_unit_images(data["images"], size) * 255).astype(np.uint8)
    return data


def _dvae_tokens(model, images01):
    return np.asarray(model.encode(images01), np.int32)


def evaluation_inputs(model, part):
    """{"photos": batch, "shapes": batch} of inputs for the parity check (numpy)."""
    from keras_clip.text.tokenizer import tokenize
    _check_part(model, part)
    size = model.image_size
    shapes = _shapes(NUM_SHAPES, "val", size, seed=0)
    if part == "image":
        return {"photos": _clip_inputs(photo_images(), size),
                "shapes": _clip_inputs(shapes["images"], size)}
    if part == "text":
        ctx = model.context_length
        return {"photos": tokenize(list(PHOTO_CAPTIONS), context_length=ctx, truncate=True),
                "shapes": tokenize(shapes["captions"], context_length=ctx, truncate=True)}
    return {"photos": _dvae_tokens(model, _unit_images(photo_images(), size)),
            "shapes": _dvae_tokens(model, _unit_images(shapes["images"], size))}


def representative_inputs(model, part, source="shapes", num=NUM_CALIBRATION):
    """Calibration inputs for full int8: shapes "train" split (never the parity "val" split)
    or random crops of the photos (the parity check uses their centre crops)."""
    from keras_clip.text.tokenizer import tokenize
    from keras_clip.zero_shot import IMAGENET_CLASSNAMES
    if source not in REPRESENTATIVE:
        raise ValueError(f"unknown representative dataset {source!r}; expected one of "
                         f"{', '.join(REPRESENTATIVE)}")
    _check_part(model, part)
    size = model.image_size
    if part == "text":
        if source == "shapes":
            texts = _shapes(num, "train", 16, seed=1)["captions"]
        else:
            texts = [f"a photo of a {c}." for c in IMAGENET_CLASSNAMES[::997 // num + 1][:num]]
        return tokenize(texts, context_length=model.context_length, truncate=True)
    if source == "shapes":
        images = _shapes(num, "train", size, seed=1)["images"]
    else:
        images = _photo_crops(num)
    if part == "image":
        return _clip_inputs(images, size)
    return _dvae_tokens(model, _unit_images(images, size))


# ------------------------------------------------------------------------------------- convert
def _flex_ops_in(message):
    """Op names the converter could only run with Flex, parsed from its error text."""
    ops = set()
    for line in re.findall(r"TF Select ops: ([^\n]+)", message):
        ops.update(o.strip() for o in line.split(",") if o.strip())
    ops.update(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message))
    ops.update(re.findall(r"'tf\.(\w+)' op is not supported", message))
    return sorted(ops)


def convert_concrete(fn, variant="fp32", representative=None, trackable=None, what="function"):
    """Convert a concrete function with builtin ops only; returns the .tflite bytes.

    representative: for ``int8``, a batch (numpy, first axis = examples) fed one at a time.
    """
    import tensorflow as tf
    _check_variant(variant)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], trackable)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic-int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("the int8 variant needs a representative dataset")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        # int8 kernels where LiteRT has them; ops without one (e.g. the int32 token argmax and
        # gather indices) stay builtin float/int32 ops. Inputs and outputs stay float/int32.
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                          tf.lite.OpsSet.TFLITE_BUILTINS]
        examples = np.asarray(representative)
        conv.representative_dataset = lambda: ([examples[i:i + 1]] for i in range(len(examples)))
    try:
        content = conv.convert()
    except Exception as e:  # ConverterError lives in a private module; match on the text
        flex = _flex_ops_in(str(e))
        if flex:
            raise UnsupportedOpsError(
                f"{what} ({variant}) needs TensorFlow ops that are not LiteRT builtins: "
                f"{', '.join(flex)}. Flex (SELECT_TF_OPS) is not allowed: the pip ai_edge_litert "
                "interpreter cannot run them; rewrite those ops with builtin-friendly ones"
            ) from None
        raise
    bad = [op for op in tflite_ops(content) if op.startswith("Flex") or op.startswith("CUSTOM")]
    if bad:
        raise UnsupportedOpsError(f"{what} ({variant}) converted with non-builtin ops: "
                                  f"{', '.join(bad)}")
    return content


def tflite_ops(content):
    """Sorted op names of a .tflite flatbuffer: builtin names, ``CUSTOM:<name>`` (incl. Flex)."""
    from tensorflow.lite.tools import flatbuffer_utils

    from keras_clip.compat import tflite_schema
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    used = {op.opcodeIndex for g in model.subgraphs for op in g.operators}
    out = set()
    for i, code in enumerate(model.operatorCodes):
        if i not in used:
            continue
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) \
                else str(code.customCode)
            name = custom if custom.startswith("Flex") else f"CUSTOM:{custom}"
        out.add(name)
    return sorted(out)


def convert(model, part, variant="fp32", representative="shapes"):
    """The .tflite bytes of one part of a CLIP / DiscreteVAE model (builtin ops only).

    Example:
        >>> content = convert(CLIP.from_preset("ViT-Tiny"), "image", "fp16")
    """
    _check_part(model, part)
    _check_variant(variant)
    rep = representative_inputs(model, part, representative) if variant == "int8" else None
    return convert_concrete(concrete_function(model, part), variant, rep, trackable=model,
                            what=f"the {part} part")


# ------------------------------------------------------------------------------------- run
def make_interpreter(model_path=None, model_content=None, num_threads=None):
    """An allocated ``ai_edge_litert`` interpreter (with its default XNNPACK delegate)."""
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=model_path, model_content=model_content,
                         num_threads=num_threads)
    interp.allocate_tensors()
    return interp


def run_tflite(interp, inputs):
    """Run a batch-1 interpreter over a batch, one example at a time; stacked outputs."""
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    results = []
    for x in np.asarray(inputs):
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        results.append(interp.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def _cosines(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-30)


def compare(part, reference, candidate):
    """Per-example agreement of candidate with reference outputs: cosines (+ PSNR for images)."""
    if part == "dvae-decoder":
        centre = reference.reshape(len(reference), -1).mean(axis=1)[:, None, None, None]
        cos = _cosines(reference - centre, candidate - centre)
        mse = np.mean((reference.astype(np.float64) - candidate) ** 2, axis=(1, 2, 3))
        psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-20))
        return {"cosine": cos, "psnr": psnr,
                "max_abs_diff": float(np.max(np.abs(reference - candidate)))}
    return {"cosine": _cosines(reference, candidate),
            "max_abs_diff": float(np.max(np.abs(reference - candidate)))}


def measure_parity(model, part, interp, inputs=None):
    """Compare the interpreter with the Keras model on photos and shapes.

    Returns {"photos": {...}, "shapes": {...}, "min_cosine", "mean_cosine"} where each set has
    mean/min cosine (+ min/mean PSNR for the decoder) and max_abs_diff.
    """
    inputs = evaluation_inputs(model, part) if inputs is None else inputs
    fn = keras_fn(model, part)
    report, all_cos = {}, []
    for name, x in inputs.items():
        ref = np.asarray(fn(x), np.float32)
        got = run_tflite(interp, x)
        m = compare(part, ref, got)
        entry = {"n": len(x), "mean_cosine": float(np.mean(m["cosine"])),
                 "min_cosine": float(np.min(m["cosine"])), "max_abs_diff": m["max_abs_diff"]}
        if "psnr" in m:
            entry.update(mean_psnr=float(np.mean(m["psnr"])), min_psnr=float(np.min(m["psnr"])))
        report[name] = entry
        all_cos.append(m["cosine"])
    all_cos = np.concatenate(all_cos)
    report.update(min_cosine=float(np.min(all_cos)), mean_cosine=float(np.mean(all_cos)))
    return report


# ------------------------------------------------------------------------------------- export
def export_tflite(model, part, variant, out, threshold=DEFAULT_THRESHOLD, force=False,
                  representative="shapes", content=None):
    """Convert, measure parity, and write ``out`` only if min cosine ≥ threshold (or force).

    ``content``: the part's .tflite bytes if already converted (by `convert`), to skip converting.

    Returns {"path", "part", "variant", "bytes", "ops", "parity", "passed"}.
    Raises ParityError (nothing written) when the parity check fails without ``force``.

    Example:
        >>> export_tflite(clip, "image", "fp16", "image_fp16.tflite")["parity"]["min_cosine"]
    """
    _check_part(model, part)
    _check_variant(variant)
    out = os.fspath(out)
    if not out.endswith(".tflite"):
        raise ValueError(f"the output path must end in .tflite, got {out!r}")
    if content is None:
        content = convert(model, part, variant, representative)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out)[:-7] + ".", suffix=".tflite",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        # Measure the file that will be published, not the bytes in memory.
        parity = measure_parity(model, part, make_interpreter(model_path=tmp))
        passed = parity["min_cosine"] >= threshold
        if not passed and not force:
            raise ParityError(
                f"refusing to write {out}: the {variant} {part} model's min cosine vs Keras is "
                f"{parity['min_cosine']:.6f} (mean {parity['mean_cosine']:.6f}; photos min "
                f"{parity['photos']['min_cosine']:.6f}, shapes min "
                f"{parity['shapes']['min_cosine']:.6f}), below the threshold {threshold}. "
                "Use --force to write it anyway, or a lower --threshold")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"path": out, "part": part, "variant": variant, "bytes": len(content),
            "ops": tflite_ops(content), "parity": parity, "passed": passed,
            "threshold": threshold}


def export_all(model, out_dir, variants=VARIANTS, threshold=DEFAULT_THRESHOLD, force=False,
               representative="shapes"):
    """Export every part × variant into out_dir as ``<part>_<variant>.tflite``.

    Variants failing parity are skipped (not written) and reported; returns the list of reports
    (a refused one has ``"error"`` and ``"passed": False``).
    """
    reports = []
    for part in parts_of(model):
        for variant in variants:
            path = os.path.join(out_dir, f"{part}_{variant}.tflite")
            try:
                reports.append(export_tflite(model, part, variant, path, threshold, force,
                                             representative))
            except ParityError as e:
                reports.append({"path": None, "part": part, "variant": variant,
                                "passed": False, "error": str(e)})
    return reports


def _summary(report):
    if "error" in report:
        return f"REFUSED {report['part']} {report['variant']}: {report['error']}"
    p = report["parity"]
    line = (f"{'wrote' if report['passed'] else 'FORCED'} {report['path']} ({report['bytes']:,} "
            f"bytes): min cosine {p['min_cosine']:.6f}, mean {p['mean_cosine']:.6f} "
            f"(photos {p['photos']['min_cosine']:.6f}/{p['photos']['mean_cosine']:.6f}, "
            f"shapes {p['shapes']['min_cosine']:.6f}/{p['shapes']['mean_cosine']:.6f} min/mean)")
    if "mean_psnr" in p["photos"]:
        line += (f", PSNR photos {p['photos']['mean_psnr']:.1f} dB, shapes "
                 f"{p['shapes']['mean_psnr']:.1f} dB")
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m export.tflite",
        description="Convert a CLIP tower or the dVAE decoder to TFLite (builtin ops only) and "
                    "write it only if its outputs match Keras (min per-example cosine over "
                    "photos and shapes ≥ --threshold).")
    parser.add_argument("model", help="a .keras file: keras_clip CLIP or keras_dalle DiscreteVAE")
    parser.add_argument("--part", help=f"one of {', '.join(PARTS)}")
    parser.add_argument("--variant", default="fp32", help=f"one of {', '.join(VARIANTS)}")
    parser.add_argument("--out", help="output .tflite path (with --part)")
    parser.add_argument("--all", metavar="DIR",
                        help="write every part × variant of the model into DIR instead")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="with --all: comma-separated variants (default: all four)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="minimum per-example cosine vs Keras (default %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="write even if the parity check fails")
    parser.add_argument("--representative", default="shapes",
                        help=f"int8 calibration data: {' or '.join(REPRESENTATIVE)}")
    parser.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    parser.epilog = ("Exit status: 0 if everything was written, 1 if --all refused a variant, "
                     "2 on an error (including a refused single export).")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    if args.all is None and (args.part is None or args.out is None):
        parser.error("give --part and --out (or --all DIR)")
    if args.all is not None and (args.part is not None or args.out is not None):
        parser.error("--all writes every part and variant; do not combine it with --part/--out")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"--variants: unknown variant {v!r}; expected some of "
                         f"{', '.join(VARIANTS)}")
    for value, allowed, flag in ((args.part, PARTS, "--part"),
                                 (args.variant, VARIANTS, "--variant"),
                                 (args.representative, REPRESENTATIVE, "--representative")):
        if value is not None and value not in allowed:
            parser.error(f"{flag}: unknown value {value!r}; expected one of {', '.join(allowed)}")
    try:
        model = load_model(args.model)
        if args.all is not None:
            reports = export_all(model, args.all, variants, threshold=args.threshold,
                                 force=args.force, representative=args.representative)
        else:
            reports = [export_tflite(model, args.part, args.variant, args.out, args.threshold,
                                     args.force, args.representative)]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in reports:
        print(json.dumps(r) if args.json else _summary(r))
    return 0 if all(r["passed"] or args.force for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
