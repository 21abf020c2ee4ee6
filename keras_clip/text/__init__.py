"""CLIP's text side: the OpenAI-exact BPE tokenizer in Python and in-graph (`tokenizer`), the
causal text transformer (`transformer`) and the bag-of-words encoder (`cbow`)."""

from keras_clip.text.cbow import CBOWTextEncoder
from keras_clip.text.tokenizer import (CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN, VOCAB_SIZE,
                                       CLIPTokenizer, SimpleTokenizer, tokenize)
from keras_clip.text.transformer import TextTransformer
from keras_clip.text.vocab_files import check_tokenizer_files, write_tokenizer_files

__all__ = ["CBOWTextEncoder", "CLIPTokenizer", "CONTEXT_LENGTH", "EOT_TOKEN", "SOT_TOKEN",
           "SimpleTokenizer", "TextTransformer", "VOCAB_SIZE", "check_tokenizer_files", "tokenize",
           "write_tokenizer_files"]
