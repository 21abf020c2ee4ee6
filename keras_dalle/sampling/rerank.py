"""CLIP reranking of generated images: score each sample against its prompt, keep the best.

Example:
    >>> scores = clip_scores(clip, images, ["a red circle"] * len(images))   # [N]
    >>> order, best = rerank_samples(clip, images, prompts, keep=4)
"""

import functools

import numpy as np
import tensorflow as tf

from keras_clip.model import l2_normalize
from keras_clip.preprocessing import CLIPImagePreprocessor, unit_to_uint8
from keras_clip.text.tokenizer import tokenize

__all__ = ["clip_scores", "clip_image_embeddings", "clip_text_embeddings", "rerank_samples"]


@functools.lru_cache(maxsize=None)
def _preprocessor(image_size):
    return CLIPImagePreprocessor(image_size=image_size)


def clip_image_embeddings(clip, images):
    """L2-normalised float32 CLIP embeddings [N, D] of float images [N, H, W, 3] in [0, 1].

    The images go through CLIP's one image path, as OpenAI's pipeline would see them saved as
    8-bit images: quantised to uint8 levels (``unit_to_uint8``: round half up, clip), then
    ``CLIPImagePreprocessor`` (PIL's exact bicubic resize and centre crop to the CLIP model's
    size when needed, OpenAI normalisation), then the image tower. TF ops only (the DALL·E
    serving export calls it in its graph).
    """
    x = tf.convert_to_tensor(images)
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be float [N, H, W, 3] in [0, 1], got shape {x.shape}")
    x = _preprocessor(clip.image_size)(unit_to_uint8(x))
    return l2_normalize(tf.cast(clip.encode_image(x), tf.float32))


def clip_text_embeddings(clip, token_ids):
    """L2-normalised float32 CLIP embeddings [N, D] of token ids [N, context_length]."""
    return l2_normalize(tf.cast(clip.encode_text(token_ids), tf.float32))


def clip_scores(clip, images, prompts, batch_size=64):
    """CLIP score ``100 · cos(image, prompt)`` of each image with its prompt: float32 [N].

    Args:
        clip: a `keras_clip.CLIP`.
        images: float [N, H, W, 3] in [0, 1] (e.g. `DiscreteVAE.decode` output).
        prompts: N strings, the prompt of each image.
    """
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"need one prompt per image: {len(images)} images, {len(prompts)} prompts")
    unique = sorted(set(prompts))
    text = clip_text_embeddings(clip, tokenize(unique, context_length=clip.context_length,
                                               truncate=True))
    index = tf.constant([unique.index(p) for p in prompts])
    scores = []
    for start in range(0, len(prompts), batch_size):
        img = clip_image_embeddings(clip, np.asarray(images[start:start + batch_size], np.float32))
        txt = tf.gather(text, index[start:start + batch_size])
        scores.append(100.0 * tf.reduce_sum(img * txt, axis=-1))
    return tf.concat(scores, axis=0).numpy()


def rerank_samples(clip, images, prompts, keep):
    """Sort the samples of each prompt by CLIP score and keep the best ``keep``.

    Args:
        images: float [B, S, H, W, 3] — S samples for each of B prompts.
        prompts: B strings.
    Returns:
        (order int [B, keep] indices into S, best first; scores float32 [B, keep]).
    """
    images = np.asarray(images)
    b, s = images.shape[:2]
    if len(prompts) != b:
        raise ValueError(f"need one prompt per row of samples: {b} rows, {len(prompts)} prompts")
    if not 1 <= keep <= s:
        raise ValueError(f"keep must be in [1, {s}] (the number of samples), got {keep}")
    flat = clip_scores(clip, images.reshape((b * s,) + images.shape[2:]),
                       [p for p in prompts for _ in range(s)]).reshape(b, s)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :keep]
    return order, np.take_along_axis(flat, order, axis=1)
