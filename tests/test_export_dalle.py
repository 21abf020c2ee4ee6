"""DALL·E `generate` SavedModel: prompts in, CLIP-reranked PNGs and scores out, stock ops only."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SavedModel uses TF Text ops)

from export.dalle_saved_model import export_dalle
from keras_clip.model import CLIP
from keras_dalle.sampling.generate import generate
from keras_dalle.transformer.model import DALLE
from keras_dalle.vae.presets import dvae_from_preset
from test_export_saved_model import TF_TEXT_OPS, _core_ops, _graph_ops


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(1)
    vae = dvae_from_preset("dvae-tiny")
    dalle = DALLE.from_preset("dalle-tiny", text_vocab_size=49408, grid_height=8, grid_width=8,
                              image_vocab_size=vae.vocab_size)
    clip = CLIP.from_preset("ViT-Tiny")
    path = export_dalle(dalle, vae, str(tmp_path_factory.mktemp("serving") / "dalle"), clip=clip)
    return dalle, vae, clip, path, tf.saved_model.load(path)


def test_generate_signature_returns_reranked_pngs_with_the_python_scores(exported):
    dalle, vae, clip, path, loaded = exported
    assert path.endswith("/1")
    prompts = ["a red circle", "a blue square"]
    out = loaded.signatures["generate"](prompts=tf.constant(prompts), num_samples=tf.constant(3),
                                        keep=tf.constant(2), seed=tf.constant(0))
    pngs, scores = out["images"].numpy(), out["scores"].numpy()
    assert pngs.shape == (2, 2) and scores.shape == (2, 2)
    assert np.all(scores[:, 0] >= scores[:, 1])  # best first
    images = np.stack([[tf.io.decode_png(p).numpy() for p in row] for row in pngs])
    assert images.shape == (2, 2, 16, 16, 3)
    # The same sampler, decoder and reranker as the Python API (which runs the loop under XLA).
    want = generate(dalle, prompts, vae=vae, num_samples=3, seed=0, rerank=clip, keep=2)
    np.testing.assert_allclose(scores, want["scores"], atol=1e-3)
    np.testing.assert_array_less(
        np.abs(images.astype(np.float64) - np.round(np.clip(want["images"], 0, 1) * 255)), 1.5)


def test_generate_rejects_bad_requests_by_name(exported):
    loaded = exported[-1]
    fn = loaded.signatures["generate"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="keep must be <= num_samples"):
        fn(prompts=tf.constant(["a red circle"]), num_samples=tf.constant(2), keep=tf.constant(3),
           seed=tf.constant(0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="prompts: empty batch"):
        fn(prompts=tf.constant([], tf.string), num_samples=tf.constant(2), keep=tf.constant(1),
           seed=tf.constant(0))


def test_generate_export_uses_only_tf_core_and_tf_text_ops(exported):
    ops = _graph_ops(exported[3])
    outside = ops - _core_ops() - TF_TEXT_OPS
    assert not outside, f"ops outside TF core + TF Text: {outside}"
    assert "While" in ops or "StatelessWhile" in ops  # the sampling loop is in the graph
    assert not {o for o in ops if "Xla" in o}
