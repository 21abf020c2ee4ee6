"""Every ```python block of README.md runs, as written but for the stand-ins below.

A block runs in a fresh namespace, in a temporary directory holding the files README names, after
the prelude of the objects it uses without creating them. A new block that needs none of this
runs as is; one that needs a new stand-in fails until it gets one here.
"""

import io
import pathlib
import re

import keras
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import keras_clip
from keras_clip.checkpoints import state_dict
from keras_clip.data.shapes import generate_shapes

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)

# README text -> the test's stand-in, and why.
SUBSTITUTIONS = [
    ('CLIP.from_preset("ViT-B-32")', 'CLIP.from_preset("ViT-Tiny")',
     "151M parameters: the tiny preset"),
    ('load_pretrained("ViT-B-32.pt")', 'load_pretrained("open_clip_model.safetensors")',
     "an OpenAI TorchScript archive needs torch, which .venv does not have"),
    ("zero_shot_classifier(model, keras_clip.IMAGENET_CLASSNAMES)",
     "zero_shot_classifier(model, keras_clip.IMAGENET_CLASSNAMES[:8])",
     "1000 classes x 80 templates = 80,000 prompts: 8 classes"),
]


def _cat_jpg():
    image = generate_shapes(1, split="val", image_size=96, seed=0)["images"][0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _open_clip_file(path):
    # Random weights; 64-wide heads, as load_pretrained infers them (OpenAI's models have them).
    model = keras_clip.CLIP(embed_dim=32, image_size=32, vision_layers=1, vision_width=64,
                            vision_patch_size=8, text_width=64, text_layers=1)
    save_file(state_dict(model), str(path))


def _folder(fmt, activation):
    def write(path):  # a tiny random model as the folder README names
        model = keras_clip.CLIP.from_preset("ViT-Tiny", activation=activation)
        keras_clip.export_checkpoint(model, str(path), format=fmt)
    return write


def _clip_keras(path):
    keras_clip.CLIP.from_preset("ViT-Tiny").save(str(path))


def _photo_index(path):
    # A few shapes images embedded by keras_clip.embed with the clip.keras written before it.
    from keras_clip.embed import embed_images
    photos = path.parent.parent / "photo_folder"
    photos.mkdir()
    data = generate_shapes(6, split="val", image_size=64, seed=1)
    for i, (image, caption) in enumerate(zip(data["images"], data["captions"])):
        Image.fromarray(image).save(photos / f"{i}.png")
        (photos / f"{i}.txt").write_text(caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    embed_images(str(path.parent.parent / "clip.keras"), str(photos), str(path), batch_size=2,
                 strategy="default", progress=False)


FILES = {"cat.jpg": lambda path: path.write_bytes(_cat_jpg()),
         "query.jpg": lambda path: path.write_bytes(_cat_jpg()),
         "clip.keras": _clip_keras,
         "index/photos": _photo_index,
         "open_clip_model.safetensors": _open_clip_file,
         "clip-vit-base-patch32": _folder("hf", "quick_gelu"),
         "CLIP-ViT-B-32-laion2B-s34B-b79K": _folder("open_clip", "gelu")}


def _dalle_trio():
    # dvae-tiny: 16x16 images, 8x8 tokens, K = 16; the DALL-E reads CLIP BPE ids.
    from keras_dalle import DALLE, dvae_from_preset

    vae = dvae_from_preset("dvae-tiny")
    dalle = DALLE.from_preset("dalle-tiny", text_vocab_size=49408,
                              grid_height=vae.token_grid_size, grid_width=vae.token_grid_size,
                              image_vocab_size=vae.vocab_size)
    return {"dalle": dalle, "vae": vae, "clip": keras_clip.CLIP.from_preset("ViT-Tiny")}


# A block using a name it does not define -> the prelude that defines it.
PRELUDES = {"dalle.generate(": _dalle_trio}

# What the README's comments promise about the results, checked on the stand-ins.
CHECKS = {
    "index.search(texts=": lambda ns: (len(ns["result"].ids[0]) == 3
                                       and ns["result"].scores.shape == (1, 3)
                                       and np.all(np.diff(ns["result"].scores[0]) <= 0)
                                       and ns["by_example"].scores.shape == (1, 3)),
    "keras_clip.export_checkpoint(model, \"my-clip-hf\"": lambda ns: (
        ns["model"].activation == "gelu"
        and keras_clip.load_pretrained("my-clip-hf").activation == "gelu"
        and keras_clip.load_pretrained("my-clip-open_clip").activation == "gelu"),
    "keras_clip.predict_zero_shot(": lambda ns: (ns["ids"].shape == (2, 77)
                                                 and ns["ids"].dtype == np.int32
                                                 and ns["out"]["logits_per_image"].shape == (1, 2)
                                                 and ns["probs"].shape == (1, 8)),
    "dalle.generate(": lambda ns: (ns["out"]["images"].shape[:2] == (1, 4)
                                   and ns["out"]["scores"].shape == (1, 4)
                                   and np.all(np.diff(ns["out"]["scores"], axis=1) <= 0)),
}


def test_the_stand_ins_match_the_readme():
    assert BLOCKS, "no ```python block found in README.md"
    text = "\n".join(BLOCKS)
    for original, _, why in SUBSTITUTIONS:
        assert original in text, f"stale substitution ({why}): {original!r} is no longer in README"
    for key in list(PRELUDES) + list(CHECKS):
        assert key in text, f"stale prelude/check: {key!r} is no longer in README"
    for name in FILES:
        assert name in text, f"stale file: {name!r} is no longer in README"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: BLOCKS[i].split("\n", 1)[0][:40])
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    for original, stand_in, _ in SUBSTITUTIONS:
        code = code.replace(original, stand_in)
    monkeypatch.chdir(tmp_path)
    for name, write in FILES.items():
        if name in code:
            write(tmp_path / name)
    keras.utils.set_random_seed(0)
    namespace = {"__name__": "__readme__"}
    for key, prelude in PRELUDES.items():
        if key in code:
            namespace.update(prelude())
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    for key, check in CHECKS.items():
        if key in code:
            assert check(namespace), f"README block {index + 1}: results differ from its comments"
