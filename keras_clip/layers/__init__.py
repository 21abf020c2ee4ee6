"""Building blocks shared by CLIP's towers and DALL·E: one multi-head attention with an optional
key/value cache (`attention`), layer normalisation with a hand-written gradient
(`layer_normalization`), and the pre-LN residual block and stack (`transformer`)."""

from keras_clip.layers.attention import MultiHeadAttention, dot_product_attention, write_cache
from keras_clip.layers.layer_normalization import LayerNorm
from keras_clip.layers.transformer import (ResidualAttentionBlock, Transformer, get_activation,
                                           layer_norm, quick_gelu)

__all__ = ["LayerNorm", "MultiHeadAttention", "ResidualAttentionBlock", "Transformer",
           "dot_product_attention", "get_activation", "layer_norm", "quick_gelu", "write_cache"]
