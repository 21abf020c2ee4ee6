"""`make demo`, CLIP part: tokenizer, weight import, image preprocessing and zero-shot on a model.

Until the training issue lands this uses a randomly initialised small model, so the zero-shot
guesses are arbitrary: the demo shows the pipeline end to end, not accuracy.
"""

import os
import time

import numpy as np

import keras_clip
from keras_clip.checkpoints import load_pretrained


def main():
    t0 = time.time()
    texts = ["a photo of a cat", "Hello, World! It's 2026.", "a small red circle to the left of a blue square"]
    ids = keras_clip.tokenize(texts)
    print("[1/4] tokenize (OpenAI BPE, Python path)")
    for text, row in zip(texts, ids):
        print(f"  {text!r:55} -> {row[:row.argmax() + 1].tolist()}")
    graph_ids = keras_clip.CLIPTokenizer()(np.array(texts)).numpy()
    print(f"  in-graph tokenizer agrees: {bool((graph_ids == ids).all())}")

    fixture = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "clip_vit_tiny",
                           "state_dict.safetensors")
    if os.path.exists(fixture):
        print("[2/4] import an open_clip state dict (tiny random reference model, safetensors)")
        model = load_pretrained(fixture, text_heads=2, vision_heads=2)
        print(f"  inferred architecture: ViT, {model.count_params():,} parameters")

    print("[3/4] preprocess real photos (scikit-image) with the TF pipeline")
    from skimage import data as skdata
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    model = keras_clip.CLIP.from_preset("ViT-S-Demo")
    pre = keras_clip.CLIPImagePreprocessor(image_size=model.image_size)
    images = np.concatenate([pre(p[None]).numpy() for p in photos])
    print(f"  images -> {images.shape} float32, mean {images.mean():+.3f}")

    print("[4/4] zero-shot over ImageNet's 1000 classes, 7 templates (random ViT-S-Demo weights)")
    classifier = keras_clip.zero_shot_classifier(model, keras_clip.IMAGENET_CLASSNAMES,
                                                 keras_clip.SIMPLE_IMAGENET_TEMPLATES)
    probs = keras_clip.predict_zero_shot(model, images, classifier)
    for name, p in zip(["astronaut", "chelsea", "coffee", "rocket"], probs):
        top = int(np.argmax(p))
        print(f"  {name:10} -> {keras_clip.IMAGENET_CLASSNAMES[top]!r} (p={p[top]:.4f})")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
