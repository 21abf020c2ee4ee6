"""A tour of the CLIP pipeline (`make demo-tour`): the tokenizer, an open_clip checkpoint written
and read back, image preprocessing from encoded bytes, zero-shot classification.

    python -m keras_clip.demo [--model runs/demo/clip.keras]

Everything it uses is drawn at run time (the built-in shapes data) or ships with the package: it
runs from an installed wheel, with no file or download. Without ``--model`` the CLIP is
``ViT-S-Demo`` with random weights, so its zero-shot guesses are arbitrary: the tour shows the
pipeline end to end, not accuracy. With a trained model (``make demo-clip-train`` writes
``runs/demo/clip.keras``) they are its answers.
"""

import argparse
import io
import os
import tempfile
import time

import keras
import numpy as np
from PIL import Image

import keras_clip
from keras_clip.checkpoints import load_pretrained
from keras_clip.cli import add_tf_logs_flag
from keras_clip.data.shapes import class_names, generate_shapes
from keras_clip.saving import load_model

# Each size of a shape looks different: one prototype per template, a class scores its best one
# (as keras_clip.train evaluates the shapes data).
TEMPLATES = ("a small {}", "a large {}")


def _encode(image, fmt):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_clip.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="a trained CLIP .keras file (default: ViT-S-Demo, random weights)")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)

    t0 = time.time()
    keras.utils.set_random_seed(0)
    texts = ["a photo of a cat", "Hello, World! It's 2026.", "a small red circle to the left of a blue square"]
    ids = keras_clip.tokenize(texts)
    print("[1/4] tokenize (OpenAI BPE, Python path)")
    for text, row in zip(texts, ids):
        print(f"  {text!r:55} -> {row[:row.argmax() + 1].tolist()}")
    graph_ids = keras_clip.CLIPTokenizer()(np.array(texts)).numpy()
    print(f"  in-graph tokenizer agrees: {bool((graph_ids == ids).all())}")

    print("[2/4] export a tiny random CLIP as an open_clip hub folder and load it back")
    tiny = keras_clip.CLIP.from_preset("ViT-Tiny", activation="gelu")
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "open_clip_vit_tiny")
        keras_clip.export_checkpoint(tiny, out, format="open_clip")
        # open_clip_config.json gives the architecture (heads, activation): no argument needed.
        loaded = load_pretrained(out)
        files = sorted(os.listdir(out))
    tiny_ids = keras_clip.tokenize(texts, context_length=tiny.context_length)
    same = np.array_equal(tiny.encode_text(tiny_ids).numpy(), loaded.encode_text(tiny_ids).numpy())
    print(f"  {files}: ViT, {loaded.count_params():,} parameters, activation "
          f"{loaded.activation!r}; text features identical: {same}")

    if args.model:
        model = load_model(args.model, keras_clip.CLIP)
        what = os.path.basename(args.model)
    else:
        model = keras_clip.CLIP.from_preset("ViT-S-Demo")
        what = "random ViT-S-Demo weights"
    print("[3/4] preprocess shapes images from PNG and JPEG bytes with the TF pipeline")
    data = generate_shapes(4, split="val", image_size=2 * model.image_size, seed=0)
    encoded = [_encode(image, "PNG" if i % 2 == 0 else "JPEG") for i, image in enumerate(data["images"])]
    pre = keras_clip.CLIPImagePreprocessor(image_size=model.image_size)
    images = pre(encoded).numpy()
    print(f"  {len(encoded)} images ({2 * model.image_size} px, PNG/JPEG) -> {images.shape} float32, "
          f"mean {images.mean():+.3f}")

    names = class_names()
    print(f"[4/4] zero-shot over the {len(names)} shapes classes, templates {TEMPLATES} ({what})")
    classifiers = [keras_clip.zero_shot_classifier(model, names, [t]) for t in TEMPLATES]
    probs = np.max([keras_clip.predict_zero_shot(model, images, c) for c in classifiers], axis=0)
    for caption, label, p in zip(data["captions"], data["labels"], probs):
        top = int(np.argmax(p))
        print(f"  {caption!r:50} -> {names[top]!r} (p={p[top]:.3f}; true class {names[label]!r})")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
