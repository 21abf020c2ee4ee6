"""keras_clip: OpenAI CLIP for Keras 3 on TensorFlow.

Example:
    >>> import keras_clip
    >>> model = keras_clip.CLIP.from_preset("ViT-B-32")
    >>> model = keras_clip.load_pretrained("ViT-B-32.pt")          # OpenAI / open_clip weights
    >>> model = keras_clip.load_pretrained("clip-vit-base-patch32")  # a transformers folder
    >>> ids = keras_clip.tokenize(["a photo of a cat"])             # int32 (1, 77)
    >>> classifier = keras_clip.zero_shot_classifier(model, ["cat", "dog"])
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# First, before anything imports TensorFlow: quiet start-up for `python -m` runs of the project's
# commands (a no-op when a program imports keras_clip; see keras_clip/cli.py).
from keras_clip import cli as _cli  # noqa: E402

_cli.quiet_tensorflow_startup()

from keras_clip import presets  # noqa: E402
from keras_clip.checkpoints import export_checkpoint, load_pretrained  # noqa: E402
from keras_clip.model import CLIP  # noqa: E402
from keras_clip.preprocessing import CLIPImagePreprocessor, preprocess_images  # noqa: E402
from keras_clip.text.tokenizer import CLIPTokenizer, SimpleTokenizer, tokenize  # noqa: E402
from keras_clip.zero_shot import (  # noqa: E402
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
    predict_zero_shot,
    zero_shot_classifier,
)

__all__ = [
    "CLIP", "CLIPImagePreprocessor", "CLIPTokenizer", "IMAGENET_CLASSNAMES", "export_checkpoint",
    "OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES", "SimpleTokenizer", "load_pretrained",
    "predict_zero_shot", "preprocess_images", "presets", "tokenize", "zero_shot_classifier",
]
