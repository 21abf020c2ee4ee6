import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES
from keras_clip import convert
from keras_clip.checkpoints import infer_config, load_pretrained, read_state_dict, state_dict
from keras_clip.model import CLIP
from keras_clip.text.tokenizer import tokenize

# The tiny fixtures use 32-wide heads, which shapes cannot reveal (OpenAI's are 64 wide), and
# QuickGELU, which a bare state dict cannot say (load_pretrained would assume it with a warning).
TINY = {
    "clip_vit_tiny": dict(text_heads=2, vision_heads=2, activation="quick_gelu"),
    "clip_rn_tiny": dict(text_heads=2, activation="quick_gelu"),
}


# Gate on the max abs difference to the torch features and logits (|features| ≤ 3.4, |logits|
# ≤ 3.1). Measured 2026-11-30 (TF 2.21 CPU): image 4.2e-7 / 8.9e-7, text 1.5e-6 / 1.3e-6,
# logits 1.4e-6 / 1.0e-6 (RN / ViT). README ("Weight import parity") states this gate.
ATOL = 5e-6


def _fixture(name):
    d = os.path.join(FIXTURES, name)
    return (os.path.join(d, "state_dict.safetensors"), np.load(os.path.join(d, "inputs.npz")),
            np.load(os.path.join(d, "outputs.npz")))


def _max_diffs(model, inputs, ref):
    img = np.asarray(model.encode_image(inputs["images"]))
    txt = np.asarray(model.encode_text(inputs["token_ids"]))
    logits = np.asarray(model({"images": inputs["images"], "token_ids": inputs["token_ids"]})["logits_per_image"])
    return (np.abs(img - ref["image_features"]).max(), np.abs(txt - ref["text_features"]).max(),
            np.abs(logits - ref["logits_per_image"]).max())


@pytest.mark.parametrize("name", sorted(TINY))
def test_converted_open_clip_model_matches_torch_features(name):
    path, inputs, ref = _fixture(name)
    model = load_pretrained(path, **TINY[name])
    img, txt, logits = _max_diffs(model, inputs, ref)
    print(f"\n{name}: max abs diff image {img:.2g}, text {txt:.2g}, logits {logits:.2g}")
    assert img <= ATOL and txt <= ATOL and logits <= ATOL, (img, txt, logits)


def test_npz_checkpoint_loads_like_safetensors(tmp_path):
    path, inputs, ref = _fixture("clip_rn_tiny")
    npz = str(tmp_path / "sd.npz")
    np.savez(npz, **load_file(path))
    img, txt, _ = _max_diffs(load_pretrained(npz, **TINY["clip_rn_tiny"]), inputs, ref)
    assert img <= ATOL and txt <= ATOL, (img, txt)


def test_architecture_is_inferred_from_shapes():
    vit = infer_config(read_state_dict(_fixture("clip_vit_tiny")[0]))
    assert vit == dict(embed_dim=64, context_length=77, vocab_size=500, text_width=64, text_heads=1,
                       text_layers=2, vision_width=64, vision_patch_size=8, image_size=32,
                       vision_layers=2, vision_heads=1, mlp_ratio=4.0)
    rn = infer_config(read_state_dict(_fixture("clip_rn_tiny")[0]))
    assert rn["vision_layers"] == [2, 2, 1, 1] and rn["vision_patch_size"] is None
    assert rn["image_size"] == 64 and rn["vision_width"] == 8
    assert rn["vision_heads"] == 4  # the attention pool is 32 * 8 = 256 wide


# (preset, the tower whose width is not a multiple of 64 and is checked first, that width)
_ODD_WIDTHS = [("ViT-Tiny", "text", 32), ("RN-Tiny", "text", 32), ("ViT-S-Demo", "vision", 96)]


@pytest.mark.parametrize("preset, tower, width", _ODD_WIDTHS)
def test_heads_are_not_guessed_for_widths_that_are_not_multiples_of_64(preset, tower, width,
                                                                       tmp_path):
    # Was: ZeroDivisionError for widths < 64; ViT-S-Demo (96 / 128 wide, 3 / 4 heads) loaded
    # silently with 1 / 2 heads and different embeddings.
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset(preset)
    path = str(tmp_path / "sd.npz")
    np.savez(path, **state_dict(model))
    with pytest.raises(ValueError) as err:
        load_pretrained(path)
    message = str(err.value)
    for fragment in (f"Cannot infer {tower}_heads from {path}", f"width is {width}",
                     "not a multiple of 64", "preset=", "text_heads=", "vision_heads="):
        assert fragment in message, message
    # The fixes the message names give the original model.
    images = np.random.default_rng(0).normal(size=(2, model.image_size, model.image_size, 3))
    ids = np.asarray(tokenize(["a red circle", "two blue squares"],
                              context_length=model.context_length))
    want = (np.asarray(model.encode_image(images)), np.asarray(model.encode_text(ids)))
    for kwargs in (dict(preset=preset),
                   dict(text_heads=model.text_heads, vision_heads=model.vision_heads)):
        loaded = load_pretrained(path, **kwargs)
        assert (loaded.text_heads, loaded.vision_heads) == (model.text_heads, model.vision_heads)
        np.testing.assert_array_equal(np.asarray(loaded.encode_image(images)), want[0])
        np.testing.assert_array_equal(np.asarray(loaded.encode_text(ids)), want[1])


def test_convert_cli_names_the_heads_flags_when_it_cannot_infer_them(tmp_path, capsys):
    path = str(tmp_path / "vit_tiny.npz")
    np.savez(path, **state_dict(CLIP.from_preset("ViT-Tiny")))
    with pytest.raises(SystemExit) as exit_info:
        convert.main([path, str(tmp_path / "out.keras")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert "python -m keras_clip.convert: error: Cannot infer text_heads from" in err
    assert "vit_tiny.npz" in err and "--text-heads" in err and "Traceback" not in err
    assert not (tmp_path / "out.keras").exists()


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    sd = load_file(_fixture("clip_vit_tiny")[0])
    del sd["visual.ln_post.bias"]
    sd["visual.extra.weight"] = np.zeros(3, np.float32)
    sd["visual.proj"] = np.zeros((64, 10), np.float32)
    path = str(tmp_path / "bad.safetensors")
    save_file(sd, path)
    with pytest.raises(ValueError) as err:
        load_pretrained(path, preset=None, **TINY["clip_vit_tiny"], embed_dim=64)
    message = str(err.value)
    assert "bad.safetensors" in message
    assert "missing keys (1): visual.ln_post.bias" in message
    assert "unexpected keys (1): visual.extra.weight" in message
    assert "visual.proj: expected (64, 64), got (64, 10)" in message


def test_unreadable_or_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_pretrained(str(tmp_path / "nope.safetensors"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read CLIP checkpoint .*garbage.safetensors"):
        load_pretrained(str(garbage))
    not_clip = tmp_path / "other.npz"
    np.savez(not_clip, weight=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"Not a CLIP state dict: .*other\.npz is missing keys"):
        load_pretrained(str(not_clip))
    text_only = tmp_path / "text_only.npz"
    np.savez(text_only, **{k: v for k, v in load_file(_fixture("clip_vit_tiny")[0]).items()
                           if not k.startswith("visual.")})
    with pytest.raises(ValueError, match=r"Not a CLIP state dict: .*text_only\.npz has no"):
        load_pretrained(str(text_only), **TINY["clip_vit_tiny"])


def test_torch_checkpoint_without_torch_says_what_to_install(tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here; this checks the message shown without it")
    except ImportError:
        pass
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ImportError, match="needs torch"):
        load_pretrained(str(path))


def test_convert_cli_writes_a_loadable_keras_file(tmp_path):
    path, inputs, ref = _fixture("clip_vit_tiny")
    out = tmp_path / "tiny.keras"
    # Through the public CLI; the heads are given since shapes cannot tell (64 wide, 2 heads).
    result = subprocess.run([sys.executable, "-m", "keras_clip.convert", path, str(out),
                             "--text-heads", "2", "--vision-heads", "2"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Wrote" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.keras"]  # no temp file left behind
    model = keras.saving.load_model(str(out))
    assert isinstance(model, CLIP)
    img, txt, _ = _max_diffs(model, inputs, ref)
    assert img <= ATOL and txt <= ATOL, (img, txt)


def test_convert_cli_rejects_output_without_keras_suffix(tmp_path):
    path = _fixture("clip_vit_tiny")[0]
    result = subprocess.run([sys.executable, "-m", "keras_clip.convert", path, str(tmp_path / "x.h5")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "must end in .keras" in result.stderr
