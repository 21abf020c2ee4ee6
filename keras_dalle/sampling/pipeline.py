"""Prompts → images: tokenize, sample image tokens with the cached decoding loop, decode them with
the dVAE and rerank them with CLIP (Ramesh et al. 2021, section 2.5: sample many, keep the best
by CLIP score).

Example:
    >>> out = generate(dalle, ["a red circle"], vae=vae, num_samples=16, rerank=clip, keep=4)
    >>> out["images"].shape, out["scores"].shape      # (1, 4, 64, 64, 3), (1, 4)
"""

import numpy as np

from keras_clip.text.tokenizer import tokenize
from keras_dalle.sampling.rerank import rerank_samples
from keras_dalle.sampling.sampler import sample_image_tokens

__all__ = ["generate"]


def generate(model, prompts, vae=None, num_samples=1, temperature=1.0, top_k=None, top_p=None,
             seed=0, image_prefix_tokens=None, use_cache=True, rerank=None, keep=None):
    """Sample images for prompts; see `keras_dalle.DALLE.generate`.

    Args:
        prompts: strings (tokenized with the CLIP BPE to ``model.text_len``) or int token ids
            [B, text_len].
        vae: a `DiscreteVAE` to decode the tokens into images (needed for reranking).
        rerank: a `keras_clip.CLIP`; with it the samples of each prompt are sorted by CLIP score
            and the best ``keep`` (default all) are returned.

    Returns:
        dict with "image_tokens" int32 [B, S, h, w], "images" float32 [B, S, H, W, 3] in [0, 1]
        (with a vae), and with rerank "scores" [B, S] and "order" [B, S] (indices into the
        original samples, best first); S = keep when reranking, else num_samples.
    """
    texts = None
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) and isinstance(prompts[0], str):
        texts = list(prompts)
        ids = tokenize(texts, context_length=model.text_len, truncate=True)
    else:
        ids = np.asarray(prompts)
    tokens = sample_image_tokens(model, ids, num_samples=num_samples, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed,
                                 image_prefix_tokens=image_prefix_tokens, use_cache=use_cache)
    out = {"image_tokens": tokens}
    if vae is not None:
        b, s, h, w = tokens.shape
        images = np.asarray(vae.decode(tokens.reshape(b * s, h, w)))
        out["images"] = images.reshape((b, s) + images.shape[1:])
    if rerank is not None:
        if vae is None:
            raise ValueError("reranking with CLIP needs images: pass vae= as well")
        if texts is None:
            raise ValueError("reranking with CLIP needs the prompts as strings, not token ids")
        order, scores = rerank_samples(rerank, out["images"], texts, keep or num_samples)
        out["order"], out["scores"] = order, scores
        out["image_tokens"] = np.take_along_axis(tokens, order[:, :, None, None], axis=1)
        out["images"] = np.take_along_axis(out["images"], order[:, :, None, None, None], axis=1)
    elif keep is not None:
        raise ValueError("keep= selects the best samples by CLIP score: pass rerank=clip_model")
    return out
