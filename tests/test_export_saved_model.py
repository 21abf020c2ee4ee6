"""export.saved_model / export.serving_config: TF Serving layout, signatures, ops, configs."""

import functools
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SavedModel uses TF Text ops)
from tensorflow.core.protobuf import saved_model_pb2

from export import clip_signatures
from export import saved_model as sm
from export import serving_config as sc
from keras_clip.model import CLIP
from keras_clip.preprocessing import preprocess_images
from keras_clip.text.tokenizer import tokenize

# The TF Text ops the CLIP export uses (CLIPTokenizer: regex_split, normalize_utf8). Stock
# tensorflow_model_server links TF Text, so these are allowed on top of TF core.
TF_TEXT_OPS = {"RegexSplitWithOffsets", "NormalizeUTF8"}


def _png(h, w, seed):
    rng = np.random.default_rng(seed)
    return tf.io.encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).numpy()


def _jpeg(h, w, seed):
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).numpy()


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny")
    base = str(tmp_path_factory.mktemp("models") / "clip")
    path = sm.export_clip(model, base)
    return model, base, path, tf.saved_model.load(path)


def test_layout_and_version_numbering(exported):
    model, base, path, _ = exported
    assert path == os.path.join(base, "1")
    for name in ("saved_model.pb", "variables/variables.index",
                 "assets/bpe_simple_vocab_16e6.txt.gz", sc.WARMUP_FILE):
        assert os.path.exists(os.path.join(path, name)), name
    assert os.listdir(base) == ["1"]  # no temporary directory left behind
    assert sm.next_version(base, None, False) == 2
    with pytest.raises(FileExistsError, match="version 1 already exists.*--overwrite"):
        sm.next_version(base, 1, False)


def test_warmup_requests_cover_every_signature(exported):
    requests = sc.read_warmup_requests(exported[2])
    assert [r.model_spec.signature_name for r in requests] == \
        ["serving_default", "encode_text", "encode_image", "zero_shot"]
    assert all(r.model_spec.name == "clip" for r in requests)


def test_atomic_write_hides_the_version_until_complete(tmp_path):
    base = str(tmp_path / "m")
    seen = []

    def write(tmp):
        # While writing, only the non-numeric temp dir exists: TF Serving cannot pick it up.
        seen.extend(os.listdir(base))
        assert os.path.basename(tmp).startswith(".tmp-3-")
        open(os.path.join(tmp, "saved_model.pb"), "wb").close()

    assert sm.write_version_atomic(base, 3, write) == os.path.join(base, "3")
    assert len(seen) == 1 and not seen[0].isdigit()
    assert os.listdir(base) == ["3"]
    assert sm.existing_versions(base) == [3]
    assert sm.next_version(base, None, False) == 4


def test_failed_export_leaves_no_version(tmp_path):
    base = str(tmp_path / "m")

    def write(tmp):
        open(os.path.join(tmp, "saved_model.pb"), "wb").close()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        sm.write_version_atomic(base, 1, write)
    assert os.listdir(base) == []


def test_overwrite_replaces_and_refuses_without_flag(tmp_path):
    base = str(tmp_path / "m")
    sm.write_version_atomic(base, 1, lambda t: open(os.path.join(t, "old"), "w").close())
    with pytest.raises(FileExistsError, match="version 1"):
        sm.write_version_atomic(base, 1, lambda t: None)
    sm.write_version_atomic(base, 1, lambda t: open(os.path.join(t, "new"), "w").close(),
                            overwrite=True)
    assert os.listdir(os.path.join(base, "1")) == ["new"]
    assert os.listdir(base) == ["1"]


def test_cli_refuses_existing_version(exported, capsys):
    # The version check comes before loading the model, so a missing .keras is not reached.
    assert sm.main(["missing.keras", "--base-path", exported[1], "--version", "1"]) == 2
    assert "version 1 already exists" in capsys.readouterr().err


def test_signatures_and_batch_dimension(exported):
    loaded = exported[3]
    assert set(loaded.signatures) == {"serving_default", "encode_text", "encode_image", "zero_shot"}
    for fn in loaded.signatures.values():
        for spec in fn.structured_input_signature[1].values():
            assert spec.shape[0] is None
        for spec in fn.structured_outputs.values():
            assert spec.shape[0] is None


def test_text_embeddings_equal_the_model(exported):
    model, _, _, loaded = exported
    texts = ["a red circle", "A Photo of two BLUE squares!", "x"]
    got = loaded.signatures["encode_text"](texts=tf.constant(texts))["embeddings"].numpy()
    want = _normalize(model.encode_text(tokenize(texts)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    default = loaded.signatures["serving_default"](texts=tf.constant(texts))["embeddings"]
    np.testing.assert_allclose(default.numpy(), got, atol=1e-6)


def test_image_embeddings_equal_the_model(exported):
    model, _, _, loaded = exported
    images = [_png(40, 50, 1), _jpeg(32, 32, 2), _png(70, 33, 3)]
    got = loaded.signatures["encode_image"](images=tf.constant(images))["embeddings"].numpy()
    want = _normalize(model.encode_image(preprocess_images(images, image_size=model.image_size)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_zero_shot_equals_manual_computation(exported):
    model, _, _, loaded = exported
    images = [_png(40, 50, 4), _png(32, 32, 5)]
    labels = [["red circle", "blue square", ""], ["blue square", "green star", "red circle"]]
    out = loaded.signatures["zero_shot"](images=tf.constant(images), labels=tf.constant(labels))
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert probs[0, 2] == 0.0  # "" pads a row and gets no probability
    img = _normalize(model.encode_image(preprocess_images(images, image_size=model.image_size)))
    scale = float(np.exp(model.logit_scale.numpy()))
    for b, row in enumerate(labels):
        real = [lab for lab in row if lab]
        txt = _normalize(model.encode_text(tokenize([f"a photo of a {lab}." for lab in real])))
        logits = scale * img[b] @ txt.T
        want = np.exp(logits - logits.max())
        want /= want.sum()
        np.testing.assert_allclose(probs[b, :len(real)], want, atol=1e-5)
    index = probs.argmax(-1)
    np.testing.assert_array_equal(out["label_index"].numpy(), index)
    assert [x.decode() for x in out["label"].numpy()] == [labels[b][i] for b, i in enumerate(index)]


def test_bad_inputs_fail_with_clear_errors(exported):
    loaded = exported[3]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not an encoded image.*\] \[1\]"):
        loaded.signatures["encode_image"](images=tf.constant([_png(32, 32, 0), b"hello world"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="texts: empty batch"):
        loaded.signatures["encode_text"](texts=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one row of candidate labels"):
        loaded.signatures["zero_shot"](images=tf.constant([_png(32, 32, 0)]),
                                       labels=tf.constant([["a"], ["b"]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one non-empty label"):
        loaded.signatures["zero_shot"](images=tf.constant([_png(32, 32, 0)]),
                                       labels=tf.constant([["", ""]]))


def test_short_and_empty_image_bytes_get_the_same_clear_error(exported):
    # Was: "pos 8 out of range for string b'hello'" (the WebP check read bytes 8-11).
    loaded = exported[3]
    images = tf.constant([_png(32, 32, 0), b"hello", b"", b"RIFF", b"\xff\xd8"])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"not an encoded image.*\] \[1 2 3 4\]") as info:
        loaded.signatures["encode_image"](images=images)
    assert "out of range" not in str(info.value)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not an encoded image.*\] \[1\]"):
        loaded.signatures["zero_shot"](images=tf.constant([_png(32, 32, 0), b""]),
                                       labels=tf.constant([["a"], ["b"]]))
    # A short file that does start like one gets past the check (the decoder reports it), and a
    # WebP signature is still recognised.
    assert bool(clip_signatures._check_images(tf.constant([b"BM"])).shape[0])
    clip_signatures._check_images(tf.constant([b"RIFF\0\0\0\0WEBP"]))


_CORE_OPS = """
import sys
import tensorflow
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session as s
assert "tensorflow_text" not in sys.modules
ops = op_def_pb2.OpList.FromString(s.TF_GetBuffer(s.TF_GetAllOpList()))
print("\\n".join(op.name for op in ops.op))
"""


@functools.lru_cache(None)
def _core_ops():
    # The core registry is read in a fresh process: importing tensorflow_text (as this test
    # module does) registers its ops in the same registry.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return set(subprocess.run([sys.executable, "-c", _CORE_OPS], capture_output=True, text=True,
                              check=True, env=env).stdout.split())


def _graph_ops(version_dir):
    """Every op of a SavedModel: the graph's nodes and the nodes of all its functions."""
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    functions = {f.signature.name for f in graph.library.function}
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    return ops - functions  # calls of the graph's own functions


def test_only_tf_core_and_tf_text_ops(exported):
    core = _core_ops()
    assert {"MatMul", "DecodeImage", "StatefulPartitionedCall"} <= core
    assert not TF_TEXT_OPS & core
    ops = _graph_ops(exported[2])
    outside = ops - core - TF_TEXT_OPS
    assert not outside, f"ops outside TF core + TF Text: {outside}"
    assert TF_TEXT_OPS <= ops  # the tokenizer really is in the graph
    assert not {o for o in ops if "Xla" in o}


def test_dvae_decode_export(tmp_path):
    from export.dvae_saved_model import export_dvae
    from keras_dalle.vae.presets import dvae_from_preset

    keras.utils.set_random_seed(0)
    vae = dvae_from_preset("dvae-tiny")
    path = export_dvae(vae, str(tmp_path / "dvae"))
    assert path == str(tmp_path / "dvae" / "1")
    assert not _graph_ops(path) - _core_ops()
    loaded = tf.saved_model.load(path)
    grid = vae.token_grid_size
    tokens = np.random.default_rng(0).integers(0, vae.vocab_size, (2, grid, grid)).astype(np.int32)
    pngs = loaded.signatures["decode"](tokens=tf.constant(tokens))["images"].numpy()
    assert pngs.shape == (2,)
    decoded = np.stack([tf.io.decode_png(p).numpy() for p in pngs])
    want = np.round(np.clip(np.asarray(vae.decode(tokens)), 0, 1) * 255)
    assert decoded.shape == want.shape
    assert np.abs(decoded.astype(np.float64) - want).max() <= 1  # 8-bit rounding only
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be < vocab_size \(16\)"):
        loaded.signatures["decode"](tokens=tf.fill([1, grid, grid], 16))


def test_models_config_round_trip(tmp_path):
    path = sc.write_models_config(str(tmp_path / "models.config"),
                                  {"clip": "/models/clip", "dvae": "/models/dvae"},
                                  policy="specific", versions=[1, 3])
    config = sc.read_models_config(path)
    entries = config.model_config_list.config
    assert [e.name for e in entries] == ["clip", "dvae"]
    assert entries[0].base_path == "/models/clip" and entries[0].model_platform == "tensorflow"
    assert list(entries[1].model_version_policy.specific.versions) == [1, 3]
    latest = sc.models_config({"clip": "/m"})
    assert latest.model_config_list.config[0].model_version_policy.latest.num_versions == 1
    with pytest.raises(ValueError, match="needs a non-empty list of versions"):
        sc.models_config({"clip": "/m"}, policy="specific")
    (tmp_path / "bad.config").write_text("model_config_list { nonsense: 1 }")
    with pytest.raises(ValueError, match="not a ModelServerConfig"):
        sc.read_models_config(str(tmp_path / "bad.config"))


def test_batching_parameters_file(tmp_path):
    path = sc.write_batching_parameters(str(tmp_path / "batching.txt"), max_batch_size=8)
    text = open(path).read()
    for line in ("max_batch_size { value: 8 }", "batch_timeout_micros { value: 2000 }",
                 "max_enqueued_batches { value: 100 }", "num_batch_threads { value: 2 }"):
        assert line in text
    with pytest.raises(ValueError, match="max_batch_size must be a positive integer"):
        sc.write_batching_parameters(str(tmp_path / "b2.txt"), max_batch_size=0)


def test_export_cli_names_a_model_of_another_class_with_exit_code_2(tmp_path, capsys):
    """New-user trial: a non-CLIP .keras file was a TypeError traceback; now one line, exit 2."""
    inputs = keras.Input((3,))
    path = str(tmp_path / "not_clip.keras")
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)
    assert sm.main([path, "--base-path", str(tmp_path / "served")]) == 2
    err = capsys.readouterr().err
    assert "not_clip.keras holds a Functional" in err and "expected CLIP" in err, err
    assert not os.path.exists(tmp_path / "served" / "1")
