"""Loading the saved models the sampling CLIs take (`python -m keras_dalle.sampling.generate`,
`python -m keras_dalle.fidelity`)."""

from keras_clip.model import CLIP
from keras_clip.saving import load_model
from keras_dalle.transformer.model import DALLE
from keras_dalle.vae.model import DiscreteVAE

__all__ = ["load_models"]


def load_models(model, vae, clip=None):
    """The saved DALL·E, its dVAE and (optionally) a CLIP: ``(DALLE, DiscreteVAE, CLIP or
    None)`` from their ``.keras`` paths. Raises FileNotFoundError (a missing file), TypeError
    (a .keras file holding another kind of model) or ValueError (not a .keras file), each
    naming the file."""
    return (load_model(model, DALLE), load_model(vae, DiscreteVAE),
            load_model(clip, CLIP) if clip else None)
