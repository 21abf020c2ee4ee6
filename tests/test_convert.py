import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES
from keras_clip.checkpoints import infer_config, load_pretrained, read_state_dict
from keras_clip.model import CLIP

# The tiny fixtures use 32-wide heads, which shapes cannot reveal (OpenAI's are 64 wide).
TINY = {
    "clip_vit_tiny": dict(text_heads=2, vision_heads=2),
    "clip_rn_tiny": dict(text_heads=2),
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
                       vision_layers=2)
    rn = infer_config(read_state_dict(_fixture("clip_rn_tiny")[0]))
    assert rn["vision_layers"] == [2, 2, 1, 1] and rn["vision_patch_size"] is None
    assert rn["image_size"] == 64 and rn["vision_width"] == 8


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
    with pytest.raises(ValueError, match="Not a CLIP state dict: missing keys"):
        load_pretrained(str(not_clip))


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
    # Through the public CLI; the heads are passed by a small wrapper since shapes cannot tell.
    code = ("import sys; from keras_clip import checkpoints, convert; import keras_clip.presets as p; "
            "p.PRESETS['fixture-vit'] = dict(checkpoints.infer_config(checkpoints.read_state_dict(sys.argv[1])), "
            "text_heads=2, vision_heads=2); convert.main([sys.argv[1], sys.argv[2], '--preset', 'fixture-vit'])")
    result = subprocess.run([sys.executable, "-c", code, path, str(out)], capture_output=True, text=True)
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
