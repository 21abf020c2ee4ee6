"""DALL·E's discrete VAE: the model (`model`), its encoder / decoder blocks (`blocks`), training
losses (`losses`), schedules (`schedule`) and metrics (`metrics`), presets (`presets`), OpenAI
weight import (`openai_import`), TensorBoard callbacks (`callbacks`) and the training CLI
(``python -m keras_dalle.vae.train``).

Example:
    >>> vae = keras_dalle.vae.dvae_from_preset("dvae-tiny")
    >>> tokens = vae.encode(images)            # float32 [B, 16, 16, 3] in [0, 1] → int32 [B, 8, 8]
"""

from keras_dalle.vae.blocks import DVAEDecoder, DVAEEncoder, DVAEResBlock
from keras_dalle.vae.losses import map_pixels, unmap_pixels
from keras_dalle.vae.metrics import CodebookUsage, code_perplexity, psnr
from keras_dalle.vae.model import DiscreteVAE
from keras_dalle.vae.openai_import import dall_e_state_dicts, load_openai_dvae
from keras_dalle.vae.presets import dvae_from_preset, get_preset, get_training_preset
from keras_dalle.vae.schedule import VAETrainingSchedule

__all__ = ["CodebookUsage", "DVAEDecoder", "DVAEEncoder", "DVAEResBlock", "DiscreteVAE",
           "VAETrainingSchedule", "code_perplexity", "dall_e_state_dicts", "dvae_from_preset",
           "get_preset", "get_training_preset", "load_openai_dvae", "map_pixels", "psnr",
           "unmap_pixels"]
