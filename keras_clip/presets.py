"""CLIP presets: open_clip model names → ``keras_clip.CLIP`` constructor arguments.

Architectures follow OpenAI's released models (open_clip's ``*-quickgelu`` configs; the plain
names use the same shapes, so parameter counts are identical). The small presets are for tests
and the demo.
"""

from keras_clip.validation import lookup_preset

_TEXT_BASE = dict(context_length=77, vocab_size=49408, text_width=512, text_heads=8, text_layers=12)


def _rn(embed_dim, image_size, layers, width, text_width=512):
    return dict(_TEXT_BASE, embed_dim=embed_dim, image_size=image_size, vision_layers=layers,
                vision_width=width, vision_patch_size=None, text_width=text_width,
                text_heads=text_width // 64)


def _vit(embed_dim, image_size, layers, width, patch, text_width=512):
    return dict(_TEXT_BASE, embed_dim=embed_dim, image_size=image_size, vision_layers=layers,
                vision_width=width, vision_patch_size=patch, text_width=text_width,
                text_heads=text_width // 64)


PRESETS = {
    "RN50": _rn(1024, 224, [3, 4, 6, 3], 64),
    "RN101": _rn(512, 224, [3, 4, 23, 3], 64),
    "RN50x4": _rn(640, 288, [4, 6, 10, 6], 80, text_width=640),
    "RN50x16": _rn(768, 384, [6, 8, 18, 8], 96, text_width=768),
    "RN50x64": _rn(1024, 448, [3, 15, 36, 10], 128, text_width=1024),
    "ViT-B-32": _vit(512, 224, 12, 768, 32),
    "ViT-B-16": _vit(512, 224, 12, 768, 16),
    "ViT-L-14": _vit(768, 224, 24, 1024, 14, text_width=768),
    "ViT-L-14-336": _vit(768, 336, 24, 1024, 14, text_width=768),
    # Small presets: tests (tiny) and the built-in-data demo (small).
    "ViT-Tiny": dict(_TEXT_BASE, embed_dim=32, image_size=32, vision_layers=2, vision_width=64,
                     vision_patch_size=8, vision_heads=2, text_width=32, text_heads=2,
                     text_layers=2),
    "RN-Tiny": dict(_TEXT_BASE, embed_dim=32, image_size=64, vision_layers=[1, 1, 1, 1],
                    vision_width=8, vision_patch_size=None, vision_heads=4, text_width=32,
                    text_heads=2, text_layers=2),
    # The demo's captions are at most ~16 tokens: a 32-token context saves 60% of text compute.
    "ViT-S-Demo": dict(_TEXT_BASE, embed_dim=128, image_size=64, vision_layers=4,
                       vision_width=96, vision_patch_size=8, vision_heads=3, text_width=128,
                       text_heads=4, text_layers=2, context_length=32),
}

# Parameter counts of the reference: open_clip 3.3.0, `sum(p.numel() for p in model.parameters())`
# of a randomly initialised model (BatchNorm running statistics are buffers, not parameters).
REFERENCE_PARAM_COUNTS = {
    "RN50": 102_007_137,
    "RN101": 119_688_033,
    "RN50x4": 178_300_601,
    "RN50x16": 290_979_217,
    "RN50x64": 623_258_305,
    "ViT-B-32": 151_277_313,
    "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513,
    "ViT-L-14-336": 427_944_193,
}


def get_preset(name):
    """Return a copy of the config of preset ``name``; ValueError naming the known presets."""
    return lookup_preset(PRESETS, name, "CLIP")
