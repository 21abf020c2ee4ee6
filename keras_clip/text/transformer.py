"""CLIP's causal text transformer tower."""

import keras
from keras import ops

from keras_clip.layers.transformer import Transformer, layer_norm


def causal_mask(length):
    """Boolean (T, T) mask, True where query i may attend key j (j ≤ i)."""
    i = ops.arange(length)
    return ops.expand_dims(i, 1) >= ops.expand_dims(i, 0)


def pad_to_longest(token_ids, multiple=16):
    """Cuts a batch of token ids after its longest text, as a tokenizer padding to the longest
    text in the batch would (transformers' ``padding="longest"``), in whole ``multiple``s.

    ``token_ids``: int (B, T). Returns ``token_ids[:, :L]``, L = the last EOT position over the
    batch + 1 (EOT is each row's largest id, the row `TextTransformer` pools), rounded up to a
    multiple of ``multiple`` and at most T; the static length becomes None. The tower's output is
    unchanged — the causal mask keeps the cut columns (padding after every EOT) out of every
    position up to EOT, and positions after EOT are never pooled — while its cost falls with
    the length (the text tower of ViT-B/32 at 77 tokens is 40% of the model's forward FLOPs).
    Rounding bounds the distinct lengths (XLA compiles once per length: at most 5 at T=77).

    Raises:
        ValueError: ``token_ids`` not of rank 2, or ``multiple`` not an int >= 1."""
    import tensorflow as tf

    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    token_ids = tf.convert_to_tensor(token_ids)
    if token_ids.shape.rank != 2:
        raise ValueError(f"token_ids must be rank 2 (B, T), got shape {tuple(token_ids.shape)}")
    t = tf.shape(token_ids)[1]
    needed = tf.maximum(tf.reduce_max(tf.argmax(token_ids, axis=-1, output_type=tf.int32)) + 1, 1)
    length = tf.minimum((needed + multiple - 1) // multiple * multiple, t)
    return token_ids[:, :length]  # (B, L)


@keras.saving.register_keras_serializable(package="keras_clip")
class TextTransformer(keras.layers.Layer):
    """Token + position embeddings → causal transformer → ``ln_final`` → EOT row → projection.

    The pooled row is the position of the largest token id (EOT, 49407, is the largest id),
    as in OpenAI's CLIP. Padding (id 0) is not masked: the causal mask already hides it
    from every position up to EOT.

    Example:
        >>> text = TextTransformer(vocab_size=49408, context_length=77, width=512,
        ...                        num_layers=12, num_heads=8, output_dim=512)
        >>> feats = text(token_ids)   # int32 (B, 77) -> (B, 512)
    """

    def __init__(self, vocab_size, context_length, width, num_layers, num_heads, output_dim,
                 mlp_ratio=4.0, activation="quick_gelu", layer_norm_epsilon=1e-5,
                 final_layer_norm_epsilon=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.output_dim = output_dim
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.final_layer_norm_epsilon = final_layer_norm_epsilon
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(
            vocab_size, width, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding", dtype=policy)
        self.transformer = Transformer(width, num_layers, num_heads, mlp_ratio, activation,
                                       layer_norm_epsilon, name="transformer", dtype=policy)
        self.ln_final = layer_norm(  # keras-hub's CLIP uses 1e-6 here (1e-5 elsewhere)
            "ln_final", layer_norm_epsilon if final_layer_norm_epsilon is None
            else final_layer_norm_epsilon, policy)

    def build(self, input_shape=None):
        self.positional_embedding = self.add_weight(
            name="positional_embedding", shape=(self.context_length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.text_projection = self.add_weight(
            name="text_projection", shape=(self.width, self.output_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.width**-0.5))
        self.token_embedding.build((None, self.context_length))
        seq = (None, self.context_length, self.width)
        self.transformer.build(seq)
        self.ln_final.build(seq)
        self.built = True

    def call(self, token_ids):
        x = self.token_embedding(token_ids)  # (B, T, width)
        length = ops.shape(token_ids)[1]
        x = x + ops.cast(self.positional_embedding[:length], x.dtype)
        x = self.transformer(x, attention_mask=causal_mask(length))
        x = self.ln_final(x)
        eot = ops.argmax(token_ids, axis=-1)  # (B,)
        pooled = ops.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]  # (B, width)
        return ops.matmul(pooled, ops.cast(self.text_projection, x.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, context_length=self.context_length,
                      width=self.width, num_layers=self.num_layers, num_heads=self.num_heads,
                      output_dim=self.output_dim, mlp_ratio=self.mlp_ratio,
                      activation=self.activation, layer_norm_epsilon=self.layer_norm_epsilon,
                      final_layer_norm_epsilon=self.final_layer_norm_epsilon)
        return config
