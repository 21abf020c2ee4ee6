"""Checkpoint folders against the live references at full size (transformers 5.x, open_clip
3.3.0, torch): runs in the reference venv, `make test-ref`. Every model is randomly initialised
with every 1-D weight perturbed (make_clip_fixtures.perturb); fp32; batch 1; max abs diff of the
unnormalised image and text features. The measured values are printed (README's "Checkpoint
formats" table) and gated at issue 14's 1e-5."""

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: `make test-ref` sets up .venv-ref")
transformers = pytest.importorskip("transformers", reason="needs transformers 5.x: `make test-ref`")
open_clip = pytest.importorskip("open_clip", reason="needs open-clip-torch==3.3.0: `make test-ref`")

from conftest import FIXTURES  # noqa: E402
import keras_clip  # noqa: E402
from keras_clip.checkpoints import export_checkpoint, load_pretrained  # noqa: E402

sys.path.insert(0, FIXTURES)
from make_checkpoint_fixtures import (hf_features, hf_model, open_clip_reference,  # noqa: E402
                                      save_open_clip_folder)
from make_clip_fixtures import make_inputs, perturb  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
ATOL = 1e-5


def _text(width, heads):
    return dict(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                num_hidden_layers=12, num_attention_heads=heads, max_position_embeddings=77,
                hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _vision(width, heads, layers, patch, size):
    return dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                num_attention_heads=heads, patch_size=patch, image_size=size,
                hidden_act="quick_gelu", layer_norm_eps=1e-5)


# openai/clip-vit-* configs (transformers' config.json of each).
HF_CONFIGS = {
    "ViT-B-32": dict(projection_dim=512, text_config=_text(512, 8),
                     vision_config=_vision(768, 12, 12, 32, 224)),
    "ViT-B-16": dict(projection_dim=512, text_config=_text(512, 8),
                     vision_config=_vision(768, 12, 12, 16, 224)),
    "ViT-L-14": dict(projection_dim=768, text_config=_text(768, 12),
                     vision_config=_vision(1024, 16, 24, 14, 224)),
    "ViT-L-14-336": dict(projection_dim=768, text_config=_text(768, 12),
                         vision_config=_vision(1024, 16, 24, 14, 336)),
}


def _diffs(model, images, tokens, img, txt, label):
    d_img = np.abs(np.asarray(model.encode_image(images)) - img).max()
    d_txt = np.abs(np.asarray(model.encode_text(tokens)) - txt).max()
    print(f"\n{label}: image max abs diff {d_img:.1e} (|max| {np.abs(img).max():.2f}), "
          f"text {d_txt:.1e} (|max| {np.abs(txt).max():.2f})")
    return d_img, d_txt


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_transformers_folder_full_size_single_and_sharded(tmp_path, name):
    ref = hf_model(HF_CONFIGS[name])
    size = HF_CONFIGS[name]["vision_config"]["image_size"]
    images, tokens = make_inputs(size, 49408, 77, 1, 0)
    img, txt = hf_features(ref, images, tokens)
    ref.save_pretrained(tmp_path / "single")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="200MB")
    del ref
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    for kind in ("single", "sharded"):
        model = load_pretrained(str(tmp_path / kind))
        assert model.activation == "quick_gelu"
        d_img, d_txt = _diffs(model, images, tokens, img, txt, f"transformers {name} ({kind})")
        assert d_img <= ATOL and d_txt <= ATOL
        del model


def test_transformers_pytorch_model_bin_folder(tmp_path):
    config = dict(HF_CONFIGS["ViT-B-32"])
    ref = hf_model(config)
    images, tokens = make_inputs(224, 49408, 77, 1, 0)
    img, txt = hf_features(ref, images, tokens)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(ref.config.to_dict()))
    model = load_pretrained(str(tmp_path))
    d_img, d_txt = _diffs(model, images, tokens, img, txt, "transformers ViT-B-32 (pytorch_model.bin)")
    assert d_img <= ATOL and d_txt <= ATOL


@pytest.mark.parametrize("oc_name, weights", [("ViT-B-32", "open_clip_pytorch_model.bin"),
                                              ("ViT-B-32-quickgelu", "open_clip_model.safetensors"),
                                              ("RN50", "open_clip_model.safetensors")])
def test_open_clip_hub_folder_full_size_needs_no_argument(tmp_path, oc_name, weights):
    torch.manual_seed(0)
    ref = open_clip.create_model(oc_name, pretrained=None)
    perturb(ref, 0)
    ref.eval()
    size = ref.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    out = open_clip_reference(ref, size, batch=1)
    save_open_clip_folder(ref, open_clip.get_model_config(oc_name), str(tmp_path), weights)
    del ref
    model = load_pretrained(str(tmp_path))
    assert model.activation == ("quick_gelu" if "quickgelu" in oc_name else "gelu")
    d_img, d_txt = _diffs(model, out["images"], out["token_ids"], out["image_features"],
                          out["text_features"], f"open_clip hub {oc_name} ({weights})")
    assert d_img <= ATOL and d_txt <= ATOL


def _perturbed(preset, **overrides):
    model = keras_clip.CLIP.from_preset(preset, **overrides)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(v.numpy() + rng.standard_normal(v.shape).astype("float32") * 0.02)
    return model


@pytest.mark.parametrize("preset, activation", [("ViT-B-32", "quick_gelu"), ("ViT-B-16", "gelu")])
def test_round_trip_ours_to_hf_to_transformers(tmp_path, preset, activation):
    model = _perturbed(preset, activation=activation)
    images, tokens = make_inputs(model.image_size, 49408, 77, 1, 0)
    img, txt = np.asarray(model.encode_image(images)), np.asarray(model.encode_text(tokens))
    export_checkpoint(model, str(tmp_path / "hf"), format="hf")
    ref = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    their_img, their_txt = hf_features(ref, images, tokens)
    d_img, d_txt = np.abs(their_img - img).max(), np.abs(their_txt - txt).max()
    print(f"\nours -> hf -> transformers {preset} ({activation}): image {d_img:.1e}, text {d_txt:.1e}")
    assert d_img <= ATOL and d_txt <= ATOL
    tok = transformers.CLIPTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    assert tok(["a photo of a cat"]).input_ids[0] == \
        [int(t) for t in keras_clip.tokenize(["a photo of a cat"])[0] if t][:7]


@pytest.mark.parametrize("preset, activation", [("ViT-B-32", "gelu"), ("RN50", "quick_gelu")])
def test_round_trip_ours_to_open_clip_to_open_clip(tmp_path, preset, activation):
    model = _perturbed(preset, activation=activation)
    images, tokens = make_inputs(model.image_size, 49408, 77, 1, 0)
    img, txt = np.asarray(model.encode_image(images)), np.asarray(model.encode_text(tokens))
    export_checkpoint(model, str(tmp_path / "oc"), format="open_clip")
    ref = open_clip.create_model("local-dir:" + str(tmp_path / "oc")).eval()
    with torch.no_grad():
        their_img = ref.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        their_txt = ref.encode_text(torch.from_numpy(tokens).long()).numpy()
    d_img, d_txt = np.abs(their_img - img).max(), np.abs(their_txt - txt).max()
    print(f"\nours -> open_clip -> open_clip {preset} ({activation}): image {d_img:.1e}, "
          f"text {d_txt:.1e}")
    assert d_img <= ATOL and d_txt <= ATOL


@pytest.mark.parametrize("wrapping", ["ddp", "torch.compile", "lightning"])
def test_wrapper_prefixes_in_torch_checkpoints(tmp_path, wrapping):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    ref = CLIP(24, CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
               CLIPTextCfg(context_length=16, vocab_size=300, width=32, heads=2, layers=2),
               quick_gelu=True)
    perturb(ref, 0)
    out = open_clip_reference(ref.eval(), 32, batch=1)
    if wrapping == "ddp":
        state = {"epoch": 2, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}
    elif wrapping == "torch.compile":
        state = torch.compile(ref).state_dict()  # keys start with _orig_mod.
        assert next(iter(state)).startswith("_orig_mod.")
    else:
        state = {"state_dict": {"model." + k: v for k, v in ref.state_dict().items()}}
    torch.save(state, tmp_path / "ckpt.pt")
    model = load_pretrained(str(tmp_path / "ckpt.pt"), activation="quick_gelu", text_heads=2,
                            vision_heads=2)
    d_img, d_txt = _diffs(model, out["images"], out["token_ids"], out["image_features"],
                          out["text_features"], f".pt with {wrapping} wrapping")
    assert d_img <= ATOL and d_txt <= ATOL


def test_openai_torchscript_archive_needs_no_activation_and_warns_nothing(tmp_path):
    import warnings
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    ref = CLIP(24, CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32),
               CLIPTextCfg(context_length=16, vocab_size=300, width=64, heads=1, layers=2),
               quick_gelu=True).eval()
    perturb(ref, 0)
    out = open_clip_reference(ref, 32, batch=1)
    images = torch.from_numpy(out["images"]).permute(0, 3, 1, 2)
    traced = torch.jit.trace(ref, (images, torch.from_numpy(out["token_ids"]).long()), strict=False)
    torch.jit.save(traced, tmp_path / "openai.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_pretrained(str(tmp_path / "openai.pt"))
    assert not [w for w in caught if "activation" in str(w.message)], caught
    assert model.activation == "quick_gelu"
    d_img, d_txt = _diffs(model, out["images"], out["token_ids"], out["image_features"],
                          out["text_features"], "OpenAI TorchScript archive")
    assert d_img <= ATOL and d_txt <= ATOL
