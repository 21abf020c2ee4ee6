"""keras_dalle: DALL·E for Keras 3 — the discrete VAE (`keras_dalle.vae`), the sparse-attention
transformer (`keras_dalle.transformer`) and sampling with CLIP reranking
(`keras_dalle.sampling`).

Example:
    >>> import keras_dalle
    >>> model = keras_dalle.DALLE.from_preset("dalle-shapes")
    >>> keras_dalle.dalle_param_count(keras_dalle.get_dalle_preset("dalle-12b"))
    12195294848
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# First: keras_clip quiets TensorFlow's start-up in a `python -m` command run (keras_clip/cli.py).
import keras_clip  # noqa: E402,F401
from keras_dalle.sampling import generate, rerank_samples, sample_image_tokens  # noqa: E402
from keras_dalle.transformer import DALLE, dalle_param_count, get_dalle_preset  # noqa: E402
from keras_dalle.vae import (DiscreteVAE, VAETrainingSchedule, dvae_from_preset,  # noqa: E402
                             load_openai_dvae)

__all__ = ["DALLE", "DiscreteVAE", "VAETrainingSchedule", "dalle_param_count", "dvae_from_preset",
           "generate", "get_dalle_preset", "load_openai_dvae", "rerank_samples",
           "sample_image_tokens"]
