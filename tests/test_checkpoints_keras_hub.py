"""keras-hub CLIP preset folders (keras_clip.checkpoints.keras_hub): the tiny fixture against the
outputs keras-hub gave when it wrote it (no keras-hub needed), the errors, the sharded / older /
re-saved h5 layouts, and live checks against keras-hub itself (``torch`` marker: `make test-ref`,
where keras-hub is installed; the ViT-B/32 one is also ``slow``).

Fixture: tests/fixtures/keras_hub_clip_tiny, made by
``.venv-ref/bin/python tests/fixtures/scripts/make_keras_hub_fixtures.py``.
"""

import importlib.util
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
from conftest import FIXTURES

from keras_clip import CLIP
from keras_clip.checkpoints.keras_hub import (TEXT_FINAL_LAYER_NORM_EPSILON, is_keras_hub_preset,
                                              read_keras_hub_preset)
from keras_clip.checkpoints.openai import load_state_dict, weight_map

TINY = os.path.join(FIXTURES, "keras_hub_clip_tiny")
SCRIPT = os.path.join(FIXTURES, "scripts", "make_keras_hub_fixtures.py")
VISION = "layers/clip_vision_encoder/layers"
TEXT = "layers/clip_text_encoder/layers"


def _load(folder):
    config, state = read_keras_hub_preset(folder)
    return load_state_dict(CLIP(**config), state, folder), config, state


def _max_diffs(model, images, token_ids, image_ref, text_ref):
    img = np.asarray(model.encode_image(images))
    txt = np.asarray(model.encode_text(token_ids))
    return float(np.abs(img - image_ref).max()), float(np.abs(txt - text_ref).max())


def _use_keras_hub_text_epsilon(model):
    """keras-hub's text tower ends with LayerNorm(epsilon=1e-6): the config read from the preset
    says so (``text_final_layer_norm_epsilon``)."""
    assert model.text.ln_final.epsilon == TEXT_FINAL_LAYER_NORM_EPSILON
    return model


@pytest.fixture
def preset(tmp_path):
    """A writable copy of the tiny preset."""
    folder = tmp_path / "preset"
    shutil.copytree(TINY, folder)
    return str(folder)


def _edit_config(folder, edit):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, "w") as f:
        json.dump(config, f)


def _edit_h5(folder, edit):
    with h5py.File(os.path.join(folder, "model.weights.h5"), "r+") as h5:
        edit(h5)


def _same_state(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- the tiny fixture against keras-hub's stored outputs ---------------------------------------
def test_tiny_preset_config():
    config, state = read_keras_hub_preset(TINY)
    assert config == dict(embed_dim=24, image_size=16, vision_layers=2, vision_width=16,
                          vision_patch_size=4, vision_heads=2, context_length=16, vocab_size=100,
                          text_width=16, text_heads=2, text_layers=2, activation="quick_gelu",
                          mlp_ratio=2.0, layer_norm_epsilon=1e-5,
                          text_final_layer_norm_epsilon=1e-6)
    assert all(v.dtype == np.float32 for v in state.values())
    ref = np.load(os.path.join(TINY, "reference.npz"))
    assert state["logit_scale"].shape == () and state["logit_scale"] == ref["logit_scale"]
    assert sorted(state) == sorted(weight_map(CLIP(**config)))


def test_tiny_preset_matches_keras_hub_outputs():
    """Measured: image 3.3e-7, text 4.8e-7 (values up to 1.9; 7.9e-6 with 1e-5 for the text tower's
    last LayerNorm, keras-hub's being 1e-6); loaded as a user does, load_pretrained(folder)."""
    from keras_clip.checkpoints import load_pretrained
    model = load_pretrained(TINY)
    ref = np.load(os.path.join(TINY, "reference.npz"))
    image_diff, text_diff = _max_diffs(model, ref["images"], ref["token_ids"],
                                       ref["image_embeddings"], ref["text_embeddings"])
    assert image_diff <= 1e-5
    assert text_diff <= 1e-5
    logits = np.asarray(model({"images": ref["images"], "token_ids": ref["token_ids"]})
                        ["logits_per_image"])
    np.testing.assert_allclose(logits, ref["vision_logits"], atol=1e-4, rtol=0)


def test_tiny_preset_mapping_is_exact_with_keras_hub_text_epsilon():
    """Measured: image 3.3e-7, text 4.8e-7, logits 4.8e-7."""
    model = _use_keras_hub_text_epsilon(_load(TINY)[0])
    ref = np.load(os.path.join(TINY, "reference.npz"))
    image_diff, text_diff = _max_diffs(model, ref["images"], ref["token_ids"],
                                       ref["image_embeddings"], ref["text_embeddings"])
    assert image_diff <= 1e-5 and text_diff <= 1e-5
    logits = np.asarray(model({"images": ref["images"], "token_ids": ref["token_ids"]})
                        ["logits_per_image"])
    np.testing.assert_allclose(logits, ref["vision_logits"], atol=1e-5, rtol=0)


def test_reading_needs_no_keras_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now fails
    config, state = read_keras_hub_preset(TINY)
    assert config["embed_dim"] == 24 and "visual.proj" in state


def test_vision_position_ids_pick_the_position_embedding_rows(preset):
    path = f"{VISION}/clip_vision_embedding"
    with h5py.File(os.path.join(preset, "model.weights.h5"), "r") as h5:
        table = h5[f"{path}/position_embedding/vars/0"][()]
    ids = np.arange(len(table))[::-1].copy()
    _edit_h5(preset, lambda h5: h5[f"{path}/vars/1"].__setitem__(Ellipsis, ids[None]))
    _, state = read_keras_hub_preset(preset)
    np.testing.assert_array_equal(state["visual.positional_embedding"], table[ids])

    _edit_h5(preset, lambda h5: h5[f"{path}/vars/1"].__setitem__(Ellipsis, len(table)))
    with pytest.raises(ValueError, match="position_ids .* not indices into the 17-row"):
        read_keras_hub_preset(preset)


# --- detection ------------------------------------------------------------------------------------
def test_is_keras_hub_preset(tmp_path):
    assert is_keras_hub_preset(TINY)
    assert not is_keras_hub_preset(os.path.join(FIXTURES, "clip_vit_tiny"))  # open_clip files
    assert not is_keras_hub_preset(os.path.join(TINY, "config.json"))  # a file, not a folder
    assert not is_keras_hub_preset(tmp_path / "missing")
    hf = tmp_path / "hf"  # a transformers folder: config.json + model.safetensors
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    (hf / "model.safetensors").write_bytes(b"")
    assert not is_keras_hub_preset(hf)
    (hf / "config.json").write_text("{not json")
    assert not is_keras_hub_preset(hf)
    bert = tmp_path / "bert"  # a keras-hub preset of another model still counts (read says why)
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"module": "keras_hub.src.models.bert",
                                                  "class_name": "BertBackbone"}))
    assert is_keras_hub_preset(bert)


# --- errors -------------------------------------------------------------------------------------
def test_a_config_of_another_class_is_named(preset):
    _edit_config(preset, lambda c: c.update(class_name="BertBackbone",
                                            registered_name="keras_hub>BertBackbone"))
    with pytest.raises(ValueError, match=r"describes keras_hub>BertBackbone, not a keras-hub "
                                         r"CLIP backbone"):
        read_keras_hub_preset(preset)


def test_a_config_of_one_clip_encoder_is_named(preset):
    def vision_only(c):
        c.update(c["config"]["vision_encoder"])
    _edit_config(preset, vision_only)
    with pytest.raises(ValueError, match="keras_hub>CLIPVisionEncoder, not a keras-hub CLIP"):
        read_keras_hub_preset(preset)


def test_unreadable_config_names_the_file(preset):
    with open(os.path.join(preset, "config.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match=r"Could not read .*config\.json"):
        read_keras_hub_preset(preset)


def test_missing_files(preset, tmp_path):
    with pytest.raises(FileNotFoundError, match="preset folder not found"):
        read_keras_hub_preset(tmp_path / "nowhere")
    os.remove(os.path.join(preset, "model.weights.h5"))
    with pytest.raises(FileNotFoundError, match="has no model.weights.h5"):
        read_keras_hub_preset(preset)
    os.remove(os.path.join(preset, "config.json"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        read_keras_hub_preset(preset)


@pytest.mark.parametrize("vision, text, message", [
    ("relu", "relu", r"vision encoder's MLP activation is 'relu'; keras_clip.CLIP has only"),
    ("gelu", "quick_gelu", r"vision encoder uses 'gelu' and the text encoder 'quick_gelu'"),
])
def test_activations_clip_cannot_express(preset, vision, text, message):
    def edit(c):
        c["config"]["vision_encoder"]["config"]["intermediate_activation"] = vision
        c["config"]["text_encoder"]["config"]["intermediate_activation"] = text
    _edit_config(preset, edit)
    with pytest.raises(ValueError, match=message) as err:
        read_keras_hub_preset(preset)
    assert preset in str(err.value)


def test_gelu_preset_reads_as_gelu(preset):
    def edit(c):
        for tower in ("vision_encoder", "text_encoder"):
            c["config"][tower]["config"]["intermediate_activation"] = "gelu"
    _edit_config(preset, edit)
    assert read_keras_hub_preset(preset)[0]["activation"] == "gelu"


def test_different_mlp_ratios_are_refused(preset):
    def edit(c):
        c["config"]["text_encoder"]["config"]["intermediate_dim"] = 64
    _edit_config(preset, edit)
    with pytest.raises(ValueError, match=r"MLPs are 2 x the width in the vision encoder and 4 x "
                                         r"in the text encoder") as err:
        read_keras_hub_preset(preset)
    assert preset in str(err.value)


def test_quantized_presets_are_refused(preset):
    _edit_config(preset, lambda c: c["config"]["dtype"]["config"].update(name="int8_from_float32"))
    with pytest.raises(ValueError, match="quantized"):
        read_keras_hub_preset(preset)


def test_missing_dataset_names_file_dataset_and_what_was_found(preset):
    path = f"{TEXT}/clip_encoder_layer_1/dense_2/vars/1"
    _edit_h5(preset, lambda h5: h5.__delitem__(path))
    with pytest.raises(ValueError) as err:
        read_keras_hub_preset(preset)
    message = str(err.value)
    assert "model.weights.h5" in message and f"missing dataset {path!r}" in message
    assert "transformer block 1 dense_2 bias" in message
    assert f"found under '{TEXT}/clip_encoder_layer_1/dense_2/vars': {path[:-1]}0" in message


def test_missing_layer_names_what_was_found(preset):
    _edit_h5(preset, lambda h5: h5.__delitem__(f"{VISION}/clip_encoder_layer_1"))
    with pytest.raises(ValueError, match=r"model\.weights\.h5: the vision encoder has no layer "
                                         r"'encoder_block_1'.*'clip_encoder_layer': "
                                         r"'encoder_block_0'"):
        read_keras_hub_preset(preset)


def test_unmapped_weights_are_refused(preset):
    _edit_h5(preset, lambda h5: h5.create_dataset(f"{VISION}/clip_vision_embedding/patch_embedding"
                                                  "/vars/1", data=np.zeros(16, np.float32)))
    with pytest.raises(ValueError, match=r"holds weights .* would ignore \(1\): "
                                         r".*patch_embedding/vars/1"):
        read_keras_hub_preset(preset)


def test_not_hdf5_names_the_file(preset):
    with open(os.path.join(preset, "model.weights.h5"), "wb") as f:
        f.write(b"not hdf5")
    with pytest.raises(ValueError, match=r"Could not read .*model\.weights\.h5 as HDF5"):
        read_keras_hub_preset(preset)


# --- other layouts of the same weights ------------------------------------------------------------
def test_sharded_weights_read_like_one_file(preset):
    """Keras' ShardedH5IOStore: model.weights.json's weight_map names the shard of each vars
    group; here the text encoder goes to a second shard."""
    _, expected = read_keras_hub_preset(TINY)
    single = os.path.join(preset, "model.weights.h5")
    weight_map = {}
    with h5py.File(single, "r") as src, \
            h5py.File(os.path.join(preset, "model_00000.weights.h5"), "w") as a, \
            h5py.File(os.path.join(preset, "model_00001.weights.h5"), "w") as b:
        def split(name, obj):
            if isinstance(obj, h5py.Dataset):
                shard, file = (b, "model_00001.weights.h5") if "text_encoder" in name else \
                    (a, "model_00000.weights.h5")
                shard.create_dataset(name, data=obj[()])
                group = name.rsplit("/", 1)[0]
                for k, v in src[group].attrs.items():
                    shard[group].attrs[k] = v
                weight_map["/" + group] = file
        src.visititems(split)
    os.remove(single)
    with open(os.path.join(preset, "model.weights.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    assert is_keras_hub_preset(preset)
    _same_state(read_keras_hub_preset(preset)[1], expected)
    os.remove(os.path.join(preset, "model_00001.weights.h5"))
    with pytest.raises(FileNotFoundError, match="names weight shards that are missing"):
        read_keras_hub_preset(preset)


def test_bfloat16_weights_read_as_float32(preset):
    """Keras stores bfloat16 variables as 2-byte opaque data tagged attrs['dtype'] =
    'bfloat16'."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    _, expected = read_keras_hub_preset(TINY)

    def to_bf16(h5):
        datasets = []
        h5.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset)
                      and o.dtype.kind == "f" else None)
        for name in datasets:
            value = h5[name][()].astype(ml_dtypes.bfloat16)
            del h5[name]
            h5.create_dataset(name, data=value.view("V2"))
            h5[name].attrs["dtype"] = "bfloat16"
    _edit_h5(preset, to_bf16)
    state = read_keras_hub_preset(preset)[1]
    assert sorted(state) == sorted(expected)
    for key, value in state.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(
            value, expected[key].astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=key)
    assert any(not np.array_equal(state[k], expected[k]) for k in state)  # really rounded


def test_files_of_older_keras_versions(preset):
    """Keras < 3.6 wrote no 'name' attribute on `vars` groups (layers are then found by Keras'
    class-derived group names), and before 3.0.3 MultiHeadAttention's sublayers were saved
    under their attribute names `_query_dense`, ..."""
    _, expected = read_keras_hub_preset(TINY)

    def older(h5):
        groups, attention = [], []
        h5.visititems(lambda n, o: groups.append(o) if n.endswith("vars") and "name" in o.attrs
                      else attention.append(n) if n.endswith("/attention") else None)
        for group in groups:
            del group.attrs["name"]
        for path in attention:
            for sub in ("query", "key", "value", "output"):
                h5.move(f"{path}/{sub}_dense", f"{path}/_{sub}_dense")
    _edit_h5(preset, older)
    with h5py.File(os.path.join(preset, "model.weights.h5"), "r") as h5:
        assert f"{TEXT}/clip_encoder_layer/attention/_query_dense/vars/0" in h5
    _same_state(read_keras_hub_preset(preset)[1], expected)


def test_encoder_layer_names_prefixed_by_the_encoder_name(preset):
    """A backbone rebuilt from config.json names its encoders' layers
    '<encoder name>_encoder_block_0', ... (keras-hub's `prefix`)."""
    _, expected = read_keras_hub_preset(TINY)

    def prefix(h5):
        for tower, name in ((VISION, "clip_vision_encoder"), (TEXT, "clip_text_encoder")):
            for child in h5[tower].values():
                child["vars"].attrs["name"] = f"{name}_{child['vars'].attrs['name']}"
    _edit_h5(preset, prefix)
    _same_state(read_keras_hub_preset(preset)[1], expected)


# --- live against keras-hub (make test-ref) -------------------------------------------------------
def _fixture_script():
    pytest.importorskip("keras_hub", reason="needs keras-hub: `make test-ref` sets up .venv-ref")
    spec = importlib.util.spec_from_file_location("make_keras_hub_fixtures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _live_diffs(script, backbone, folder, seed=1):
    size = backbone.vision_encoder.image_shape[0]
    vocab = backbone.text_encoder.vocabulary_size
    length = backbone.text_encoder.max_sequence_length
    images, tokens = script.make_inputs(size, vocab, length, seed)
    image_ref, text_ref, _ = script.reference_outputs(backbone, images, tokens)
    from keras_clip.checkpoints import load_pretrained
    model = _use_keras_hub_text_epsilon(load_pretrained(folder))
    return _max_diffs(model, images, tokens, image_ref, text_ref)


@pytest.mark.torch
@pytest.mark.parametrize("activation, position_ids", [("quick_gelu", "keep"),
                                                      ("gelu", "arange")])
def test_live_tiny_keras_hub_backbones(tmp_path, activation, position_ids):
    """keras-hub's own initial position_ids (all 0) and converted presets' (0..N-1); QuickGELU
    and keras' exact GELU; and the preset re-saved by keras-hub after from_preset (encoder
    layers then carry the encoder-name prefix). Measured (-s prints it), load_pretrained(folder):
    image 4.8e-7 / 3.6e-7, text 4.8e-7 / 5.7e-7."""
    script = _fixture_script()
    import keras_hub

    backbone = script.tiny_backbone(activation, seed=3)
    script.perturb(backbone, seed=3, position_ids=position_ids)
    backbone.save_to_preset(str(tmp_path / "a"))
    image, text = _live_diffs(script, backbone, str(tmp_path / "a"))
    print(f"tiny {activation}, position_ids {position_ids}: max abs diff image {image:.3g}, "
          f"text {text:.3g}")
    assert image <= 1e-5 and text <= 1e-5, (image, text)

    reloaded = keras_hub.models.CLIPBackbone.from_preset(str(tmp_path / "a"))
    reloaded.save_to_preset(str(tmp_path / "b"))
    _same_state(read_keras_hub_preset(str(tmp_path / "b"))[1],
                read_keras_hub_preset(str(tmp_path / "a"))[1])


@pytest.mark.torch
@pytest.mark.slow
def test_live_vit_b32_keras_hub_backbone(tmp_path):
    """ViT-B/32, randomly initialised and perturbed (position_ids 0..N-1, as converted
    presets). Measured (`make test-ref`, -s prints it): image 2.6e-6, text 4.1e-6 (embedding
    values up to 4.3 and 3.2)."""
    script = _fixture_script()
    backbone = script.vit_b32_backbone(seed=4)
    script.perturb(backbone, seed=4)
    backbone.save_to_preset(str(tmp_path / "vit_b32"))
    image, text = _live_diffs(script, backbone, str(tmp_path / "vit_b32"))
    print(f"ViT-B/32 max abs diff: image {image:.3g}, text {text:.3g}")
    assert image <= 1e-5 and text <= 1e-5, (image, text)
