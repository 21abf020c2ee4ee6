"""Sampling from DALL·E: the cached decoding loop (`sampler`), prompts → reranked images
(`pipeline`), CLIP reranking (`rerank`), prompt fidelity (`fidelity`, also a CLI) and the
generate CLI (``python -m keras_dalle.sampling.generate``)."""

from keras_dalle.sampling.pipeline import generate
from keras_dalle.sampling.rerank import clip_scores, rerank_samples
from keras_dalle.sampling.sampler import filter_logits, sample_image_tokens

__all__ = ["clip_scores", "filter_logits", "generate", "rerank_samples", "sample_image_tokens"]
