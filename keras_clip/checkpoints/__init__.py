"""CLIP checkpoints: one reader for every file format (`reader`) and one key map per source
format (`openai`: OpenAI's and open_clip's state dicts, read and written)."""

from keras_clip.checkpoints.openai import (infer_config, load_pretrained, load_state_dict, state_dict,
                                          weight_map)
from keras_clip.checkpoints.reader import numpy_state_dict, read_state_dict, unwrap_state_dict

__all__ = ["infer_config", "load_pretrained", "load_state_dict", "numpy_state_dict",
           "read_state_dict", "state_dict", "unwrap_state_dict", "weight_map"]
