"""CLIP's text side: the OpenAI-exact BPE tokenizer in Python and in-graph (`tokenizer`), the
causal text transformer (`transformer`) and the bag-of-words encoder (`cbow`)."""

from keras_clip.text.cbow import CBOWTextEncoder
from keras_clip.text.tokenizer import (CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN, VOCAB_SIZE,
                                       CLIPTokenizer, SimpleTokenizer, tokenize)
from keras_clip.text.transformer import TextTransformer

__all__ = ["CBOWTextEncoder", "CLIPTokenizer", "CONTEXT_LENGTH", "EOT_TOKEN", "SOT_TOKEN",
           "SimpleTokenizer", "TextTransformer", "VOCAB_SIZE", "tokenize"]
