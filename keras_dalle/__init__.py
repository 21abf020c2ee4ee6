"""keras_dalle: DALL-E (discrete VAE, sparse-attention transformer, sampling) for Keras 3.

Example:
    >>> import keras_dalle
    >>> model = keras_dalle.DALLE.from_preset("dalle-shapes")
    >>> keras_dalle.dalle_param_count(keras_dalle.get_dalle_preset("dalle-12b"))
    12195294848
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_dalle.dalle_presets import dalle_param_count, get_dalle_preset  # noqa: E402
from keras_dalle.model import DALLE  # noqa: E402

__all__ = ["DALLE", "dalle_param_count", "get_dalle_preset"]
