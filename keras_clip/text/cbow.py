"""The continuous-bag-of-words text encoder the CLIP paper compares the transformer against."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_clip")
class CBOWTextEncoder(keras.layers.Layer):
    """Mean of the token embeddings of the real tokens (id ≠ 0), then a linear projection.

    Word order is ignored, which is the point of the baseline (CLIP paper, Fig. 2).

    Example:
        >>> cbow = CBOWTextEncoder(vocab_size=49408, width=512, output_dim=512)
        >>> feats = cbow(token_ids)   # int32 (B, 77) -> (B, 512)
    """

    def __init__(self, vocab_size, width, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.width = width
        self.output_dim = output_dim
        self.token_embedding = keras.layers.Embedding(
            vocab_size, width, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.token_embedding.build((None, None))
        self.text_projection = self.add_weight(
            name="text_projection", shape=(self.width, self.output_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.width**-0.5))
        self.built = True

    def call(self, token_ids):
        x = self.token_embedding(token_ids)  # (B, T, width)
        keep = ops.cast(ops.not_equal(token_ids, 0), x.dtype)[..., None]  # (B, T, 1)
        mean = ops.sum(x * keep, axis=1) / ops.maximum(ops.sum(keep, axis=1), 1.0)
        return ops.matmul(mean, ops.cast(self.text_projection, x.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, width=self.width, output_dim=self.output_dim)
        return config
