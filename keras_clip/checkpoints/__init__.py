"""CLIP checkpoints in and out.

One reader for every file format (`reader`), one key map (`openai`: OpenAI's and open_clip's
state-dict names), and adapters that translate the other formats to it: `transformers`
(Hugging Face folders), `open_clip_hub` (open_clip hub folders), `keras_hub` (keras-hub presets).
`load_pretrained` reads any of them; `export_checkpoint` writes transformers and open_clip
folders back.
"""

from keras_clip.checkpoints.keras_hub import is_keras_hub_preset, read_keras_hub_preset
from keras_clip.checkpoints.openai import infer_config, load_state_dict, state_dict, weight_map
from keras_clip.checkpoints.pretrained import load_clip, load_pretrained, read_pretrained
from keras_clip.checkpoints.reader import (numpy_state_dict, read_sharded_state_dict, read_state_dict,
                                           unwrap_state_dict)
from keras_clip.checkpoints.writer import export_checkpoint

__all__ = ["export_checkpoint", "infer_config", "is_keras_hub_preset", "load_clip", "load_pretrained",
           "load_state_dict", "read_keras_hub_preset",
           "numpy_state_dict", "read_pretrained", "read_sharded_state_dict", "read_state_dict",
           "state_dict", "unwrap_state_dict", "weight_map"]
