import gc

import keras
import pytest

from keras_clip.model import CLIP
from keras_clip.presets import PRESETS, REFERENCE_PARAM_COUNTS

OPENAI_PRESETS = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                  "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]


# README's "Presets and parameter counts" table (open_clip 3.3.0's counts), exactly.
README_PARAM_COUNTS = {
    "RN50": 102_007_137, "RN101": 119_688_033, "RN50x4": 178_300_601, "RN50x16": 290_979_217,
    "RN50x64": 623_258_305, "ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513, "ViT-L-14-336": 427_944_193,
}


def test_every_openai_architecture_has_a_preset_and_a_reference_count():
    assert set(OPENAI_PRESETS) <= set(PRESETS)
    assert set(REFERENCE_PARAM_COUNTS) == set(OPENAI_PRESETS)
    assert REFERENCE_PARAM_COUNTS == README_PARAM_COUNTS


def test_demo_preset_is_the_one_readme_describes():
    # README: 64 px, patch 8, vision 96 × 4 layers, text 128 × 2 layers, 32-token context.
    demo = PRESETS["ViT-S-Demo"]
    assert (demo["image_size"], demo["vision_patch_size"]) == (64, 8)
    assert (demo["vision_width"], demo["vision_layers"]) == (96, 4)
    assert (demo["text_width"], demo["text_layers"], demo["context_length"]) == (128, 2, 32)


# Two architectures (one per tower type) in the default suite; building the seven larger ones
# takes a minute on CI's 2 cores: `make test-slow`.
_FAST_PRESETS = ("RN50", "ViT-B-32")


@pytest.mark.parametrize("name", [
    n if n in _FAST_PRESETS else pytest.param(n, marks=pytest.mark.slow) for n in OPENAI_PRESETS])
def test_param_count_equals_open_clip(name):
    model = CLIP.from_preset(name)
    try:
        assert model.count_params() == REFERENCE_PARAM_COUNTS[name]
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def test_unknown_preset_error_lists_available_presets():
    with pytest.raises(ValueError, match=r"Unknown CLIP preset 'ViT-X-99'.*ViT-B-32"):
        CLIP.from_preset("ViT-X-99")


def test_from_preset_applies_overrides():
    model = CLIP.from_preset("ViT-Tiny", embed_dim=16, text_encoder="cbow")
    assert model.embed_dim == 16 and model.text_encoder == "cbow"
    assert model.get_config()["embed_dim"] == 16
