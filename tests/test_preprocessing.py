"""CLIPImagePreprocessor: input kinds, torchvision rounding rules, parity with OpenAI's PIL
pipeline, errors, tf.data / tf.function / SavedModel use."""

import io

import keras
import numpy as np
import pytest
import skimage.data as skdata  # a dev extra: make test installs it
import tensorflow as tf
from PIL import Image

from keras_clip.preprocessing import (OPENAI_MEAN, OPENAI_STD, CLIPImagePreprocessor,
                                      _resized_hw, preprocess_images)


MEAN = np.array(OPENAI_MEAN, np.float32)
STD = np.array(OPENAI_STD, np.float32)


def encode(image, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def pil_reference(image, size):
    """OpenAI's Resize(BICUBIC) → CenterCrop → ToTensor → Normalize with PIL only.

    Bit-identical to torchvision's and open_clip's transforms (checked by
    benchmarks/preprocessing_parity.py --verify-torchvision).
    """
    im = Image.fromarray(image).convert("RGB")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    im = im.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / np.float32(255)
    return (x - MEAN) / STD


@pytest.fixture(scope="module")
def chelsea():
    return skdata.chelsea()  # (300, 451, 3) uint8


@pytest.fixture(scope="module")
def pre():
    return CLIPImagePreprocessor()


def test_bytes_uint8_float_inputs_agree(pre, chelsea):
    from_bytes = pre(tf.constant([encode(chelsea)])).numpy()
    from_uint8 = pre(chelsea[None]).numpy()
    from_float = pre(chelsea[None].astype(np.float32) / 255.0).numpy()
    from_f64 = pre(chelsea[None].astype(np.float64) / 255.0).numpy()
    np.testing.assert_array_equal(from_bytes, from_uint8)
    np.testing.assert_array_equal(from_float, from_uint8)
    np.testing.assert_array_equal(from_f64, from_uint8)
    np.testing.assert_array_equal(pre([encode(chelsea)]).numpy(), from_uint8)  # list of bytes


def pil_decode(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("fmt, mode, options", [
    ("JPEG", "RGB", {"quality": 90}),
    ("JPEG", "RGB", {"quality": 75, "progressive": True}),
    ("JPEG", "L", {}),
    ("PNG", "RGBA", {}),  # opaque: resized premultiplied, which changes nothing
    ("BMP", "RGB", {}),
    ("WEBP", "RGB", {"quality": 90}),
])
def test_decoding_matches_pil(pre, fmt, mode, options):
    # Modes PIL resizes as plain RGB/L: the bytes give what the decoded pixels give. (P, 1,
    # CMYK and transparent images resize differently: tests/test_image_modes.py.)
    # TF's default JPEG DCT is ~1 level off PIL; the layer decodes JPEG with the accurate one.
    image = np.ascontiguousarray(skdata.coffee()[::2, ::2])
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, fmt, **options)
    data = buf.getvalue()
    np.testing.assert_array_equal(pre(tf.constant([data])).numpy(),
                                  pre(pil_decode(data)[None]).numpy())


def test_output_shape_dtype_and_normalisation():
    for size, (h, w) in [(224, (300, 451)), (224, (451, 300)), (336, (100, 80)), (32, (32, 32))]:
        value = 200
        images = np.full((2, h, w, 3), value, np.uint8)
        out = CLIPImagePreprocessor(image_size=size)(images).numpy()
        assert out.shape == (2, size, size, 3) and out.dtype == np.float32
        # A constant image stays constant through resize and crop.
        np.testing.assert_allclose(out, np.broadcast_to((value / 255.0 - MEAN) / STD, out.shape),
                                   atol=1e-6)


def test_resized_size_follows_torchvision():
    for h, w in [(300, 451), (451, 300), (427, 640), (500, 741), (224, 225), (1, 1000), (999, 7)]:
        for size in (224, 336):
            short, long = min(h, w), max(h, w)
            new_long = int(size * long / short)
            expected = (new_long, size) if w <= h else (size, new_long)
            got = tuple(int(v) for v in _resized_hw(tf.constant(h), tf.constant(w), size))
            assert got == expected, (h, w, size)


@pytest.mark.parametrize("width, left", [(225, 0), (226, 1), (227, 2), (229, 2), (231, 4)])
def test_center_crop_rounds_half_to_even(width, left):
    # Shorter side already 224 → no resize; torchvision's int(round((w - 224) / 2.0)) offsets.
    image = np.random.default_rng(width).integers(0, 256, (1, 224, width, 3), np.uint8)
    out = CLIPImagePreprocessor()(image).numpy()
    expected = (image[:, :, left:left + 224] / np.float32(255) - MEAN) / STD
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("name, size", [("chelsea", 224), ("astronaut", 224), ("coffee", 336)])
def test_parity_with_openai_pil_pipeline(name, size):
    # Measured on every skimage photo (benchmarks/preprocessing_parity.py): identical 8-bit
    # levels (PIL's fixed-point resampling reproduced); only float32 rounding of the
    # normalisation remains (< 1e-6).
    image = getattr(skdata, name)()
    ours = CLIPImagePreprocessor(image_size=size)(tf.constant([encode(image)])).numpy()[0]
    diff = np.abs(ours - pil_reference(image, size))
    assert diff.max() < 1e-5


def test_grayscale_bytes_and_arrays_become_rgb(pre):
    gray = skdata.camera()[::2, ::2]  # (256, 256) uint8
    from_bytes = pre(tf.constant([encode(gray)])).numpy()
    from_array = pre(gray[None, ..., None]).numpy()
    np.testing.assert_array_equal(from_bytes, from_array)
    assert from_bytes.shape == (1, 224, 224, 3)
    diff = np.abs(from_bytes[0] - pil_reference(gray, 224))
    assert diff.max() < 1e-5  # measured: identical levels


def test_variable_size_batch_of_bytes(pre, chelsea):
    images = [chelsea, skdata.astronaut()[:300, :200], skdata.coffee()]
    batch = pre(tf.constant([encode(i) for i in images])).numpy()
    assert batch.shape == (3, 224, 224, 3)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batch[i], pre(image[None]).numpy()[0])


def test_antialias_false_is_supported_but_further_from_pil(chelsea):
    # Measured: antialias=False is 0.02929 mean |d| over all photos vs ~0 for the default.
    x = chelsea[None]
    aa = CLIPImagePreprocessor()(x).numpy()[0]
    no_aa = CLIPImagePreprocessor(antialias=False)(x).numpy()[0]
    ref = pil_reference(chelsea, 224)
    assert np.abs(no_aa - ref).mean() > np.abs(aa - ref).mean()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 3), np.uint8), "rank 4"),
    (np.zeros((1, 1, 8, 8, 3), np.uint8), "rank 4"),
    (np.zeros((1, 8, 8, 5), np.uint8), "got 5"),
    (np.zeros((1, 8, 8, 6), np.float32), "got 6"),
    (np.zeros((1, 8, 8, 3), np.int32), "int32"),
    (np.zeros((1, 8, 8, 3), bool), "bool"),
    (tf.constant([[b"a", b"b"]]), "1-D batch"),
    (tf.constant(b"scalar"), "1-D batch"),
])
def test_bad_inputs_raise_value_error(pre, bad, message):
    with pytest.raises(ValueError, match=message):
        pre(bad)


def test_non_image_bytes_raise_value_error_naming_the_input(pre, chelsea):
    with pytest.raises(ValueError, match=r"input 1 .*not a decodable image"):
        pre(tf.constant([encode(chelsea), b"this is not an image"]))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="image_size"):
        CLIPImagePreprocessor(image_size=0)
    with pytest.raises(ValueError, match="mean and std"):
        CLIPImagePreprocessor(mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="resize_method"):
        CLIPImagePreprocessor(resize_method="cubic")


def test_tf_function_with_string_input(pre, chelsea):
    fn = tf.function(pre, input_signature=[tf.TensorSpec([None], tf.string)])
    images = tf.constant([encode(chelsea), encode(skdata.astronaut())])
    # Graph rewrites may reorder the final normalisation: allow float32 rounding.
    np.testing.assert_allclose(fn(images).numpy(), pre(images).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError):  # the decode op's error in a graph
        fn(tf.constant([b"junk"]))


def test_tf_data_map(pre, chelsea):
    data = [encode(chelsea), encode(skdata.astronaut()[:200])]
    batched = tf.data.Dataset.from_tensor_slices(data).batch(2).map(pre)
    per_example = tf.data.Dataset.from_tensor_slices(data).map(lambda s: pre(s[None])[0]).batch(2)
    eager = pre(tf.constant(data)).numpy()
    np.testing.assert_allclose(next(iter(batched)).numpy(), eager, rtol=0, atol=1e-6)
    np.testing.assert_allclose(next(iter(per_example)).numpy(), eager, rtol=0, atol=1e-6)


def test_saved_model_round_trip(tmp_path, pre, chelsea):
    archive = keras.export.ExportArchive()
    archive.track(pre)
    archive.add_endpoint("serve", lambda s: pre(s),
                         input_signature=[tf.TensorSpec([None], tf.string)])
    archive.write_out(str(tmp_path / "pre"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "pre"))
    images = tf.constant([encode(chelsea)])
    np.testing.assert_allclose(loaded.serve(images).numpy(), pre(images).numpy(), rtol=0, atol=1e-6)


def test_config_round_trip_and_functional_model(chelsea):
    layer = CLIPImagePreprocessor(image_size=64, antialias=False, name="pre")
    config = layer.get_config()
    assert {k: config[k] for k in ("image_size", "resize_method", "antialias")} == {
        "image_size": 64, "resize_method": "bicubic", "antialias": False}
    assert tuple(config["mean"]) == OPENAI_MEAN and tuple(config["std"]) == OPENAI_STD
    clone = CLIPImagePreprocessor.from_config(config)
    inputs = keras.Input(shape=(), dtype="string")
    model = keras.Model(inputs, clone(inputs))
    images = tf.constant([encode(chelsea)])
    np.testing.assert_allclose(model(images).numpy(), layer(images).numpy(), rtol=0, atol=1e-6)


def test_preprocess_images_convenience(chelsea, tmp_path):
    expected = CLIPImagePreprocessor()(chelsea[None]).numpy()
    out = preprocess_images(chelsea)
    assert isinstance(out, np.ndarray) and out.shape == (1, 224, 224, 3)
    np.testing.assert_array_equal(out, expected)
    path = tmp_path / "cat.png"
    path.write_bytes(encode(chelsea))
    mixed = preprocess_images([chelsea, skdata.astronaut()])
    assert mixed.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(mixed[:1], expected)
    np.testing.assert_array_equal(preprocess_images([str(path)]), expected)
    np.testing.assert_array_equal(preprocess_images([Image.fromarray(chelsea)]), expected)
    assert preprocess_images(chelsea[None], image_size=336).shape == (1, 336, 336, 3)
