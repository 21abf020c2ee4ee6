"""Prompts → images: tokenize, sample image tokens with the cached decoding loop, decode them with
the dVAE and rerank them with CLIP (Ramesh et al. 2021, section 2.5: sample many, keep the best
by CLIP score).

Example:
    >>> out = generate(dalle, ["a red circle"], vae=vae, num_samples=16, rerank=clip, keep=4)
    >>> out["images"].shape, out["scores"].shape      # (1, 4, 64, 64, 3), (1, 4)
"""

import os

import numpy as np

from keras_clip.model import CLIP
from keras_clip.text.tokenizer import VOCAB_SIZE, tokenize
from keras_clip.validation import check_positive_int
from keras_dalle.sampling.rerank import rerank_samples
from keras_dalle.sampling.sampler import check_model, check_seed, describe, sample_image_tokens
from keras_dalle.vae.model import DiscreteVAE

__all__ = ["generate"]


def generate(model, prompts, vae=None, num_samples=1, temperature=1.0, top_k=None, top_p=None,
             seed=0, image_prefix_tokens=None, use_cache=True, rerank=None, keep=None):
    """Sample images for prompts; see `keras_dalle.DALLE.generate`.

    Args:
        prompts: strings (tokenized with the CLIP BPE to ``model.text_len``) or int token ids
            [B, text_len].
        vae: a `DiscreteVAE` to decode the tokens into images (needed for reranking).
        rerank: a `keras_clip.CLIP`; with it the samples of each prompt are sorted by CLIP score
            and the best ``keep`` (an int in [1, num_samples]; default all) are returned.

    The arguments are checked before any sampling: a wrong model type (TypeError), a
    `num_samples`, `seed` or `keep` that is not an integer in range, or string prompts whose
    CLIP BPE ids do not fit the model's `text_vocab_size` (ValueError, each naming the argument).

    Returns:
        dict with "image_tokens" int32 [B, S, h, w], "images" float32 [B, S, H, W, 3] in [0, 1]
        (with a vae), and with rerank "scores" [B, S] and "order" [B, S] (indices into the
        original samples, best first); S = keep when reranking, else num_samples.
    """
    check_model(model)
    num_samples = check_positive_int("num_samples", num_samples)
    seed = check_seed(seed)
    if vae is not None and not isinstance(vae, DiscreteVAE):
        hint = ("; load a .keras file with keras_clip.saving.load_model(path, DiscreteVAE)"
                if isinstance(vae, (str, os.PathLike)) else "")
        raise TypeError(f"vae must be a keras_dalle.DiscreteVAE, got {describe(vae)}{hint}")
    if rerank is not None and not isinstance(rerank, CLIP):
        raise TypeError(f"rerank must be a keras_clip.CLIP, got {describe(rerank)}")
    if keep is not None:
        if rerank is None:
            raise ValueError("keep= selects the best samples by CLIP score: pass "
                             "rerank=clip_model")
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)):
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        if not 1 <= keep <= num_samples:
            raise ValueError(f"keep must be in [1, {num_samples}] (num_samples), got {keep}")

    texts = None
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) and isinstance(prompts[0], str):
        texts = list(prompts)
        ids = tokenize(texts, context_length=model.text_len, truncate=True)
        top = int(np.max(ids))
        if top >= model.text_vocab_size:
            raise ValueError(
                f"prompts are tokenized with CLIP's BPE ({VOCAB_SIZE:,} ids; these prompts use "
                f"ids up to {top:,}), but the model's text_vocab_size is "
                f"{model.text_vocab_size:,}: use a model with text_vocab_size >= {VOCAB_SIZE:,} "
                f"or pass token ids [B, {model.text_len}] of the model's own vocabulary")
    else:
        ids = np.asarray(prompts)
    if rerank is not None:
        if vae is None:
            raise ValueError("reranking with CLIP needs images: pass vae= as well")
        if texts is None:
            raise ValueError("reranking with CLIP needs the prompts as strings, not token ids")
    tokens = sample_image_tokens(model, ids, num_samples=num_samples, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed,
                                 image_prefix_tokens=image_prefix_tokens, use_cache=use_cache)
    out = {"image_tokens": tokens}
    if vae is not None:
        b, s, h, w = tokens.shape
        images = np.asarray(vae.decode(tokens.reshape(b * s, h, w)))
        out["images"] = images.reshape((b, s) + images.shape[1:])
    if rerank is not None:
        order, scores = rerank_samples(rerank, out["images"], texts,
                                       num_samples if keep is None else keep)
        out["order"], out["scores"] = order, scores
        out["image_tokens"] = np.take_along_axis(tokens, order[:, :, None, None], axis=1)
        out["images"] = np.take_along_axis(out["images"], order[:, :, None, None, None], axis=1)
    return out
