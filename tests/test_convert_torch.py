"""Live parity against open_clip (torch). Runs in the reference venv: `make test-ref`."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch + open_clip: `make test-ref` sets up .venv-ref")
open_clip = pytest.importorskip("open_clip", reason="needs open-clip-torch==3.3.0: `make test-ref`")

from conftest import FIXTURES  # noqa: E402
from keras_clip.checkpoints import load_pretrained  # noqa: E402

sys.path.insert(0, FIXTURES)
from make_clip_fixtures import OPENAI_NAMES, TINY, TINY_TEXT, make_inputs, perturb  # noqa: E402

pytestmark = pytest.mark.torch


def _reference(model, image_size, batch=1, seed=0):
    model.eval()
    images, tokens = make_inputs(image_size, model.vocab_size, model.context_length, batch, seed)
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        txt = model.encode_text(torch.from_numpy(tokens).long()).numpy()
    return images, tokens, img, txt


def _tiny_open_clip(name):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    embed_dim, vision = TINY[name]
    model = CLIP(embed_dim, CLIPVisionCfg(**vision), CLIPTextCfg(**TINY_TEXT), quick_gelu=True)
    perturb(model, 0)
    return model.eval(), vision["image_size"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                                    "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
def test_full_size_parity_with_open_clip(preset):
    torch.manual_seed(0)
    ref = open_clip.create_model(OPENAI_NAMES.get(preset, preset), pretrained=None)
    perturb(ref, 0)
    size = ref.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images, tokens, img, txt = _reference(ref, size, batch=1)
    sd = {k: v.float().numpy() for k, v in ref.state_dict().items()}
    del ref
    model = load_pretrained(sd)  # architecture inferred from shapes
    d_img = np.abs(np.asarray(model.encode_image(images)) - img).max()
    d_txt = np.abs(np.asarray(model.encode_text(tokens)) - txt).max()
    print(f"\n{preset}: image max abs diff {d_img:.2e} (|max| {np.abs(img).max():.2f}), "
          f"text max abs diff {d_txt:.2e} (|max| {np.abs(txt).max():.2f})")
    assert d_img <= 1e-4 and d_txt <= 1e-4


@pytest.mark.slow
def test_open_clip_gelu_model_loads_with_gelu_activation():
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32", pretrained=None)  # open_clip's GELU variant
    perturb(ref, 0)
    images, tokens, img, txt = _reference(ref, 224, batch=1)
    sd = {k: v.float().numpy() for k, v in ref.state_dict().items()}
    model = load_pretrained(sd, activation="gelu")
    assert np.abs(np.asarray(model.encode_image(images)) - img).max() <= 1e-4
    assert np.abs(np.asarray(model.encode_text(tokens)) - txt).max() <= 1e-4
    quick = load_pretrained(sd)  # the wrong activation is visible: parity really checks it
    assert np.abs(np.asarray(quick.encode_text(tokens)) - txt).max() > 1e-3


def test_openai_torchscript_archive_loads(tmp_path):
    model, size = _tiny_open_clip("clip_vit_tiny")
    images, tokens, img, txt = _reference(model, size, batch=2)
    traced = torch.jit.trace(model, (torch.from_numpy(images).permute(0, 3, 1, 2),
                                     torch.from_numpy(tokens).long()), strict=False,
                             check_trace=False)
    path = str(tmp_path / "ViT-tiny.pt")
    torch.jit.save(traced, path)
    ours = load_pretrained(path, text_heads=2, vision_heads=2)
    assert np.abs(np.asarray(ours.encode_image(images)) - img).max() <= 1e-4
    assert np.abs(np.asarray(ours.encode_text(tokens)) - txt).max() <= 1e-4


def test_open_clip_training_checkpoint_loads(tmp_path):
    model, size = _tiny_open_clip("clip_rn_tiny")
    images, tokens, img, txt = _reference(model, size, batch=2)
    path = str(tmp_path / "epoch_1.pt")
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    ours = load_pretrained(path, text_heads=2)
    assert np.abs(np.asarray(ours.encode_image(images)) - img).max() <= 1e-4
    assert np.abs(np.asarray(ours.encode_text(tokens)) - txt).max() <= 1e-4
