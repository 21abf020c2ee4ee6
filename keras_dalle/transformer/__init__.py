"""The DALL·E transformer: the model (`model`), its sparse attention patterns (`patterns`),
presets (`presets`), token datasets (`data`), TensorBoard callbacks (`callbacks`) and the
training CLI (``python -m keras_dalle.transformer.train``)."""

from keras_dalle.transformer.model import DALLE
from keras_dalle.transformer.patterns import PatternAttention, default_schedule, pattern_mask
from keras_dalle.transformer.presets import dalle_param_count, get_dalle_preset

__all__ = ["DALLE", "PatternAttention", "dalle_param_count", "default_schedule",
           "get_dalle_preset", "pattern_mask"]
