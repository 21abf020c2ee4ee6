"""Building blocks shared by CLIP's towers and DALL·E: one multi-head attention with an optional
key/value cache (`attention`), batch normalisation through TensorFlow's fused kernel
(`batch_normalization`), layer normalisation with a hand-written gradient
(`layer_normalization`), and the pre-LN residual block and stack (`transformer`)."""

from keras_clip.layers.attention import MultiHeadAttention, dot_product_attention, write_cache
from keras_clip.layers.batch_normalization import BatchNorm
from keras_clip.layers.layer_normalization import LayerNorm
from keras_clip.layers.transformer import (ResidualAttentionBlock, Transformer, get_activation,
                                           layer_norm, quick_gelu)

__all__ = ["BatchNorm", "LayerNorm", "MultiHeadAttention", "ResidualAttentionBlock", "Transformer",
           "dot_product_attention", "get_activation", "layer_norm", "quick_gelu", "write_cache"]
