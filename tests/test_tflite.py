"""TFLite export (export.tflite): builtin ops only, runs in ai_edge_litert, parity gate.

Tiny random-weight models (ViT-Tiny, dvae-tiny); each conversion is cached per module. The text
tower's non-fp32 variants and RN-Tiny are @slow (the 49408-token embedding makes every text
conversion ~10 s on a busy CPU).
"""

import os

import numpy as np
import pytest

import ai_edge_litert  # noqa: F401  (a dev extra: make test installs it)
import keras
import tensorflow as tf

from export import tflite as T  # noqa: E402
from keras_clip.model import CLIP  # noqa: E402
from keras_dalle.vae.presets import dvae_from_preset  # noqa: E402


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    dvae = dvae_from_preset("dvae-tiny")
    dvae.build()  # weights exist before the .keras file of the CLI tests is saved
    return {"clip": CLIP.from_preset("ViT-Tiny"), "dvae": dvae}


_CACHE = {}


def converted(models, part, variant):
    key = (part, variant)
    if key not in _CACHE:
        model = models["dvae"] if part == "dvae-decoder" else models["clip"]
        _CACHE[key] = T.convert(model, part, variant)
    return _CACHE[key]


def _model(models, part):
    return models["dvae"] if part == "dvae-decoder" else models["clip"]


def _assert_builtin_only(content):
    ops = T.tflite_ops(content)
    assert ops, "no ops found in the flatbuffer"
    bad = [op for op in ops if op.startswith("Flex") or op.startswith("CUSTOM")]
    assert not bad, f"non-builtin ops: {bad}"
    return ops


def _int8_activations(content):
    """Number of CONV_2D / FULLY_CONNECTED ops whose output tensor is int8 (quantised compute)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    wanted = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.FULLY_CONNECTED}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return sum(1 for g in model.subgraphs for op in g.operators
               if codes[op.opcodeIndex] in wanted
               and g.tensors[op.outputs[0]].type == schema.TensorType.INT8)


FAST = [("image", "fp32"), ("image", "dynamic-int8"), ("image", "int8"), ("dvae-decoder", "fp32"),
        ("dvae-decoder", "int8"), ("text", "fp32")]
SLOW = [pytest.param(part, v, marks=pytest.mark.slow) for part, v in (
    ("image", "fp16"), ("text", "fp16"), ("text", "dynamic-int8"), ("text", "int8"),
    ("dvae-decoder", "fp16"), ("dvae-decoder", "dynamic-int8"))]


@pytest.mark.parametrize("part,variant", FAST + SLOW)
def test_converts_with_builtin_ops_and_runs(models, part, variant):
    content = converted(models, part, variant)
    ops = _assert_builtin_only(content)
    # Full int8 really computes in int8; the other variants keep float activations.
    assert (_int8_activations(content) > 0) == (variant == "int8"), ops
    model = _model(models, part)
    interp = T.make_interpreter(model_content=content)
    spec = T.input_spec(model, part)
    inp = interp.get_input_details()[0]
    assert list(inp["shape"]) == spec.shape.as_list()
    assert inp["dtype"] == spec.dtype.as_numpy_dtype  # float images, int32 ids / tokens
    x = T.evaluation_inputs(model, part)["shapes"][:2]
    y = T.run_tflite(interp, x)
    ref = np.asarray(T.keras_fn(model, part)(x))
    assert y.shape == ref.shape and np.all(np.isfinite(y))


@pytest.mark.parametrize("part", ["image", "text", "dvae-decoder"])
def test_fp32_matches_keras(models, part):
    model = _model(models, part)
    interp = T.make_interpreter(model_content=converted(models, part, "fp32"))
    parity = T.measure_parity(model, part, interp)
    assert parity["photos"]["n"] == len(T.PHOTOS) and parity["shapes"]["n"] == T.NUM_SHAPES
    assert parity["min_cosine"] >= 0.99999, parity
    assert parity["photos"]["max_abs_diff"] < 1e-3 and parity["shapes"]["max_abs_diff"] < 1e-3
    if part == "dvae-decoder":
        assert parity["shapes"]["min_psnr"] > 60, parity


def _close_but_not_exact(models, variant, low, max_size_ratio):
    model = models["clip"]
    x = T.evaluation_inputs(model, "image")["photos"]
    ref = np.asarray(model.encode_image(x))
    y = T.run_tflite(T.make_interpreter(model_content=converted(models, "image", variant)), x)
    cos = T.compare("image", ref, y)["cosine"]
    assert cos.min() >= low, (variant, cos.min())
    assert np.abs(y - ref).max() > 0, variant
    # The weights really shrank.
    assert len(converted(models, "image", variant)) < \
        max_size_ratio * len(converted(models, "image", "fp32"))


def test_dynamic_int8_is_close_but_not_exact(models):
    _close_but_not_exact(models, "dynamic-int8", 0.99, 0.4)


@pytest.mark.slow
def test_fp16_is_close_but_not_exact(models):
    _close_but_not_exact(models, "fp16", 0.999, 0.6)


@pytest.mark.slow
def test_gelu_activation_converts_to_builtin_gelu():
    keras.utils.set_random_seed(1)
    model = CLIP.from_preset("ViT-Tiny", activation="gelu", text_layers=1)
    content = T.convert(model, "image", "fp32")
    assert "GELU" in _assert_builtin_only(content)
    x = T.evaluation_inputs(model, "image")["photos"][:4]
    y = T.run_tflite(T.make_interpreter(model_content=content), x)
    assert T.compare("image", np.asarray(model.encode_image(x)), y)["cosine"].min() > 0.99999


def test_flex_ops_are_rejected_with_their_names():
    fn = tf.function(lambda x: tf.linalg.det(x),
                     input_signature=[tf.TensorSpec([1, 3, 3], tf.float32)])
    with pytest.raises(T.UnsupportedOpsError, match="MatrixDeterminant") as info:
        T.convert_concrete(fn.get_concrete_function(), "fp32", what="det")
    assert "Flex" in str(info.value) and "det (fp32)" in str(info.value)


def test_export_writes_only_after_parity(models, tmp_path):
    out = tmp_path / "sub" / "dec.tflite"
    report = T.export_tflite(models["dvae"], "dvae-decoder", "fp32", out,
                             content=converted(models, "dvae-decoder", "fp32"))
    assert report["passed"] and out.is_file() and out.stat().st_size == report["bytes"]
    assert report["parity"]["min_cosine"] >= 0.99999
    assert os.listdir(out.parent) == ["dec.tflite"]  # no temporary file left
    # The written file is a working model.
    interp = T.make_interpreter(model_path=str(out))
    tokens = T.evaluation_inputs(models["dvae"], "dvae-decoder")["shapes"][:1]
    np.testing.assert_allclose(T.run_tflite(interp, tokens),
                               np.asarray(models["dvae"].decode(tokens)), atol=1e-4)


def test_threshold_refusal_and_force(models, tmp_path):
    out = tmp_path / "dec.tflite"
    content = converted(models, "dvae-decoder", "fp32")
    with pytest.raises(T.ParityError) as info:
        T.export_tflite(models["dvae"], "dvae-decoder", "fp32", out, threshold=1.01,
                        content=content)
    msg = str(info.value)
    assert "fp32" in msg and "dvae-decoder" in msg and "1.01" in msg and "min cosine" in msg
    assert os.listdir(tmp_path) == []  # nothing written, no temporary left behind
    report = T.export_tflite(models["dvae"], "dvae-decoder", "fp32", out, threshold=1.01,
                             force=True, content=content)
    assert out.is_file() and not report["passed"]


def test_int8_image_tower_is_refused_at_default_threshold(models, tmp_path):
    """Full int8 on the random ViT-Tiny image tower: min cosine ~0.95 (measured), so the default
    gate (0.99) must refuse it rather than write a degraded model."""
    out = tmp_path / "img_int8.tflite"
    with pytest.raises(T.ParityError, match="int8 image model's min cosine") as info:
        T.export_tflite(models["clip"], "image", "int8", out,
                        content=converted(models, "image", "int8"))
    assert "threshold 0.99" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_decoder_gather_rewrite_keeps_int8_decoder_usable(models):
    """The exported decoder gathers embedding rows instead of one-hot → conv (LiteRT's int8
    ONE_HOT dequantises its off value to ~0.5): same fp32 numbers, and int8 keeps the image."""
    content = converted(models, "dvae-decoder", "int8")
    assert "ONE_HOT" not in T.tflite_ops(content) and "GATHER" in T.tflite_ops(content)
    parity = T.measure_parity(models["dvae"], "dvae-decoder",
                              T.make_interpreter(model_content=content))
    assert parity["shapes"]["mean_psnr"] > 30, parity


def test_api_errors(models, tmp_path):
    with pytest.raises(ValueError, match="unknown part 'audio'"):
        T.convert(models["clip"], "audio", "fp32")
    with pytest.raises(ValueError, match="unknown variant 'int4'"):
        T.convert(models["clip"], "image", "int4")
    with pytest.raises(ValueError, match="needs a keras_clip CLIP model, but the model is a "
                                         "DiscreteVAE"):
        T.convert(models["dvae"], "text", "fp32")
    with pytest.raises(ValueError, match="needs a keras_dalle DiscreteVAE"):
        T.convert(models["clip"], "dvae-decoder", "fp32")
    with pytest.raises(ValueError, match="must end in .tflite"):
        T.export_tflite(models["dvae"], "dvae-decoder", "fp32", tmp_path / "x.bin")
    with pytest.raises(ValueError, match="unknown representative dataset 'imagenet'"):
        T.representative_inputs(models["clip"], "image", "imagenet")


@pytest.fixture(scope="module")
def dvae_file(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "dvae.keras"
    models["dvae"].save(str(path))
    return str(path)


@pytest.mark.slow
def test_cli_threshold_refusal(dvae_file, tmp_path, capsys):
    refused = tmp_path / "refused.tflite"
    rc = T.main([dvae_file, "--part", "dvae-decoder", "--variant", "fp32", "--out",
                 str(refused), "--threshold", "1.01"])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to write" in err and "threshold 1.01" in err
    assert not refused.exists()
    assert os.listdir(tmp_path) == []


def test_cli_writes(dvae_file, tmp_path, capsys):
    out = tmp_path / "dec.tflite"
    rc = T.main([dvae_file, "--part", "dvae-decoder", "--variant", "fp32", "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert "min cosine 1.000000" in capsys.readouterr().out


def test_cli_bad_arguments(dvae_file, tmp_path, capsys):
    out = str(tmp_path / "x.tflite")
    for args, message in (
            (["--part", "audio", "--out", out], "--part: unknown value 'audio'"),
            (["--part", "image", "--variant", "int4", "--out", out], "--variant: unknown value"),
            (["--part", "image"], "give --part and --out"),
            (["--all", str(tmp_path), "--part", "image"], "do not combine")):
        with pytest.raises(SystemExit) as info:
            T.main([dvae_file] + args)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    # A model of the wrong kind for the part, and a missing file: clear errors, exit code 2.
    assert T.main([dvae_file, "--part", "image", "--out", out]) == 2
    assert "part 'image' needs a keras_clip CLIP model, but the model is a DiscreteVAE" in \
        capsys.readouterr().err
    assert T.main([str(tmp_path / "missing.keras"), "--part", "image", "--out", out]) == 2
    assert "CLIP or DiscreteVAE file not found" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_cli_all(dvae_file, tmp_path, capsys):
    rc = T.main([dvae_file, "--all", str(tmp_path), "--variants", "fp32,int8", "--force"])
    assert rc == 0
    assert sorted(os.listdir(tmp_path)) == ["dvae-decoder_fp32.tflite",
                                            "dvae-decoder_int8.tflite"]
    with pytest.raises(SystemExit):
        T.main([dvae_file, "--all", str(tmp_path), "--variants", "fp32,int3"])
    assert "--variants: unknown variant 'int3'" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet_image_tower_fp32(tmp_path):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("RN-Tiny")
    report = T.export_tflite(model, "image", "fp32", tmp_path / "rn.tflite")
    assert report["parity"]["min_cosine"] >= 0.99999
    assert "AVERAGE_POOL_2D" in report["ops"]
    assert not [op for op in report["ops"] if op.startswith(("Flex", "CUSTOM"))]
