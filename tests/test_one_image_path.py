"""One image path (issue 13): every place that turns images into CLIP inputs goes through
`keras_clip.preprocessing` — reranking, training batches, the shapes data, TFLite — and no other
module resizes or normalises images for CLIP."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.model import CLIP
from keras_clip.preprocessing import (OPENAI_MEAN, OPENAI_STD, CLIPImagePreprocessor,
                                      normalize_uint8, unit_to_uint8)
from keras_dalle.sampling.rerank import clip_image_embeddings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip():
    keras.utils.set_random_seed(0)
    return CLIP.from_preset("ViT-Tiny")  # image_size 32


def _quantise(x):
    """Reference: float [0, 1] → 8-bit levels, round half up, clipped (numpy)."""
    x = np.asarray(x, np.float32)
    return np.clip(np.floor(x * np.float32(255) + np.float32(0.5)), 0, 255).astype(np.uint8)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_unit_to_uint8_rounds_half_up_and_clips():
    levels = np.arange(256)
    x = np.concatenate([levels / 255, (levels + 0.5) / 255, [-0.3, 1.7, 0.5, 126.5 / 255]])
    x = x.astype(np.float32)
    got = unit_to_uint8(x).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _quantise(x))
    np.testing.assert_array_equal(got[:256], levels)  # uint8 / 255 comes back exactly
    np.testing.assert_array_equal(got[-4:], [0, 255, 128, 127])  # half up (not to even)


@pytest.mark.parametrize("hw", [(16, 16), (32, 32), (24, 40)])
def test_rerank_embeddings_are_clip_embeddings_of_the_preprocessed_quantised_images(clip, hw):
    rng = np.random.default_rng(hw[1])
    images = rng.uniform(-0.02, 1.02, (3,) + hw + (3,)).astype(np.float32)  # dVAE-like floats
    images[0, :2, :2] = np.float32(126.5 / 255)  # exact ties: round half up
    pixels = _quantise(images)
    want = clip.encode_image(CLIPImagePreprocessor(image_size=clip.image_size)(pixels))
    got = clip_image_embeddings(clip, images).numpy()
    np.testing.assert_allclose(got, _unit(want), rtol=0, atol=1e-6)
    # In a graph (the DALL·E serving export calls it inside its tf.function), unknown sizes.
    fn = tf.function(lambda x: clip_image_embeddings(clip, x),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    np.testing.assert_allclose(fn(images).numpy(), got, rtol=0, atol=1e-6)


def test_rerank_no_longer_uses_a_plain_tf_resize(clip):
    # The old path (one-pass float tf.image.resize) gives other CLIP inputs for the same images.
    images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    exact = CLIPImagePreprocessor(image_size=32)(_quantise(images)).numpy()
    naive = tf.clip_by_value(tf.image.resize(images, (32, 32), "bicubic", antialias=True), 0, 1)
    naive = ((naive - np.float32(OPENAI_MEAN)) / np.float32(OPENAI_STD)).numpy()
    assert np.abs(exact - naive).max() > 0.05


@pytest.mark.parametrize("channels", [3, 4, 1, 2])
def test_arrays_at_size_skip_the_resize_and_match_the_resize_path(channels):
    # uint8 arrays already at the model's size: the layer's static shortcut, normalize_uint8 and
    # the full (dynamic-shape) resize path give the same numbers.
    pre = CLIPImagePreprocessor(image_size=32)
    rng = np.random.default_rng(channels)
    images = rng.integers(0, 256, (2, 32, 32, channels), dtype=np.uint8)
    images[..., 3 if channels == 4 else 1:][:, :4] = 0  # some fully transparent pixels
    fast = pre(images).numpy()
    # Both in graphs (Grappler may rewrite the normalisation's division: last-bit differences
    # from eager): the static-size shortcut against the dynamic-size resize path.
    static, dynamic = (tf.function(pre, input_signature=[tf.TensorSpec(shape, tf.uint8)])(images)
                       for shape in ([2, 32, 32, channels], [None, None, None, channels]))
    np.testing.assert_array_equal(static.numpy(), dynamic.numpy())
    rgb = images[..., :3] if channels >= 3 else np.repeat(images[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(fast, normalize_uint8(rgb).numpy())
    np.testing.assert_array_equal(fast, pre(images.astype(np.float32) / 255.0).numpy())


def test_normalize_uint8_is_totensor_normalize_and_rejects_floats():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    want = (images.astype(np.float32) / np.float32(255) - np.float32(OPENAI_MEAN)) / np.float32(
        OPENAI_STD)
    np.testing.assert_array_equal(normalize_uint8(images).numpy(), want)
    unit = normalize_uint8(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).numpy()
    np.testing.assert_array_equal(unit, images.astype(np.float32) / np.float32(255))
    with pytest.raises(ValueError, match="expected uint8"):
        normalize_uint8(images.astype(np.float32))


def test_training_batches_are_normalised_by_the_preprocessing_module(clip):
    # CLIP.fit on uint8 batches: the same numbers as the layer (and as before: /255, mean/std).
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = clip._normalise_batch(tf.constant(images)).numpy()
    np.testing.assert_array_equal(got, CLIPImagePreprocessor(image_size=32)(images).numpy())
    old = (tf.cast(images, "float32") / 255.0 - tf.constant(OPENAI_MEAN)) / tf.constant(OPENAI_STD)
    np.testing.assert_array_equal(got, old.numpy())
    floats = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(clip._normalise_batch(tf.constant(floats)).numpy(), floats)


# Anything that resizes or normalises images for CLIP outside keras_clip/preprocessing.py.
# (benchmarks/ keeps a deliberate naive tf.image.resize row for comparison.)
SECOND_PATH = re.compile(
    r"OPENAI_MEAN|OPENAI_STD"                                # CLIP's mean/std by name
    r"|0\.4814|0\.4578|0\.4082|0\.2686|0\.2613|0\.2757"      # ... or by value
    r"|image\.resize|crop_and_resize|resize_with_pad|resize_with_crop_or_pad"  # tf / keras.ops
    r"|layers\.Resizing|layers\.Normalization\(")


def _package_sources():
    for package in ("keras_clip", "keras_dalle", "export"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    yield os.path.relpath(path, ROOT), path


def test_no_second_image_path_outside_the_preprocessing_module():
    sources = dict(_package_sources())
    assert "keras_clip/preprocessing.py" in sources and "export/tflite.py" in sources
    found = []
    for rel, path in sorted(sources.items()):
        if rel == "keras_clip/preprocessing.py":
            continue
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if SECOND_PATH.search(line):
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, ("images must reach CLIP through keras_clip.preprocessing "
                       "(CLIPImagePreprocessor, unit_to_uint8, normalize_uint8), not:\n"
                       + "\n".join(found))


def test_the_static_check_catches_a_second_path():
    for line in ("x = tf.image.resize(x, (224, 224))", "from keras_clip.preprocessing import "
                 "OPENAI_MEAN", "mean = (0.48145466, 0.4578275, 0.40821073)",
                 "keras.ops.image.resize(x, (s, s))", "keras.layers.Resizing(224, 224)"):
        assert SECOND_PATH.search(line), line
    for line in ("keras.layers.LayerNormalization(epsilon=1e-5)", "x = x / 255.0",
                 "pre = CLIPImagePreprocessor(image_size)"):
        assert not SECOND_PATH.search(line), line


def test_tflite_inputs_come_from_the_preprocessor(clip):
    from export import tflite as T
    from keras_clip.data.shapes import generate_shapes
    from keras_clip.preprocessing import preprocess_images
    got = T.evaluation_inputs(clip, "image")
    np.testing.assert_array_equal(got["photos"], preprocess_images(T.photo_images(), 32))
    shapes = generate_shapes(T.NUM_SHAPES, split="val", image_size=32, seed=0)["images"]
    np.testing.assert_array_equal(got["shapes"], CLIPImagePreprocessor(32)(shapes).numpy())
    calibration = T.representative_inputs(clip, "image", "photos", num=3)
    assert calibration.shape == (3, 32, 32, 3) and calibration.dtype == np.float32
    crops = T._photo_crops(3)
    np.testing.assert_array_equal(calibration, preprocess_images(crops, 32))
