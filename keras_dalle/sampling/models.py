"""What the sampling CLIs (`python -m keras_dalle.sampling.generate`, `python -m
keras_dalle.fidelity`) share: loading the saved models they take, and their sampling options."""

from keras_clip.cli import float_in, positive_int
from keras_clip.model import CLIP
from keras_clip.saving import load_model
from keras_dalle.transformer.model import DALLE
from keras_dalle.vae.model import DiscreteVAE

__all__ = ["add_sampling_options", "check_top_k", "load_models"]


def load_models(model, vae, clip=None):
    """The saved DALL·E, its dVAE and (optionally) a CLIP: ``(DALLE, DiscreteVAE, CLIP or
    None)`` from their ``.keras`` paths. Raises FileNotFoundError (a missing file), TypeError
    (a .keras file holding another kind of model) or ValueError (not a .keras file, or not a
    readable one), each naming the file."""
    return (load_model(model, DALLE), load_model(vae, DiscreteVAE),
            load_model(clip, CLIP) if clip else None)


def add_sampling_options(parser):
    """Adds ``--temperature`` (>= 0; 0 = greedy), ``--top-k`` (>= 1) and ``--top-p`` (in
    (0, 1]) to an argparse parser, checked as they are parsed — before any model is loaded —
    as `keras_dalle.sampling.sampler.sample_image_tokens` checks them. The bound of
    ``--top-k`` that needs the model (its image vocabulary) is `check_top_k`'s."""
    parser.add_argument("--temperature", type=float_in(0.0), default=1.0,
                        help="softmax temperature, >= 0 (0 = greedy)")
    parser.add_argument("--top-k", type=positive_int, default=None,
                        help="sample among the k most likely image tokens (1 .. the image "
                             "vocabulary size); default: all")
    parser.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=None,
                        help="nucleus sampling: the smallest set of tokens whose probability "
                             "reaches p, in (0, 1]; default: off")
    return parser


def check_top_k(parser, top_k, model):
    """A usage error (``parser.error``, exit code 2) when ``--top-k`` exceeds the loaded
    DALL·E's image vocabulary."""
    if top_k is not None and top_k > model.image_vocab_size:
        parser.error(f"argument --top-k: expected at most the model's image vocabulary size "
                     f"{model.image_vocab_size}, got {top_k}")
