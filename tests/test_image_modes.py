"""CLIPImagePreprocessor against OpenAI's pipeline for every image mode PIL opens.

OpenAI's (and open_clip's) preprocessing is ``Image.open(f)`` → ``Resize(size, BICUBIC)`` →
``CenterCrop(size)`` → ``convert("RGB")`` → ``ToTensor`` → ``Normalize``: the resize runs in the
mode the file opened in (premultiplied for RGBA/LA, nearest for P/1, in CMYK for CMYK JPEGs).
``openai_reference`` below is that pipeline with PIL and numpy only (torchvision's ``Resize(int)``
and ``CenterCrop`` arithmetic; ``Image.resize`` is asked for BICUBIC and switches to NEAREST for P
and 1 itself, as under torchvision).

Measured: identical 8-bit levels for every mode here (Pillow 13). Gate, for every mode and size:
no value more than one level off the reference, and ≤ 0.1% of values off at all. The README's
"Image preprocessing" table comes from ``test_mode_table``:

    .venv/bin/python -m pytest -q -s tests/test_image_modes.py -k table
"""

import functools
import io
import struct
import zlib

import keras
import numpy as np
import pytest
import skimage.data as skdata  # a dev extra: make test installs it
import tensorflow as tf
from PIL import Image

from keras_clip.preprocessing import (OPENAI_MEAN, OPENAI_STD, CLIPImagePreprocessor,
                                      _jpeg_cmyk, _nearest_index, preprocess_images)

# PIL's own advice when the reference converts a P image with tRNS bytes; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")

MEAN = np.array(OPENAI_MEAN, np.float64)
STD = np.array(OPENAI_STD, np.float64)
GATE = 1e-3  # fraction of values allowed to differ (by one level at most)


# --- the reference ----------------------------------------------------------------------------

def openai_reference(data, size, image=None):
    """Encoded bytes (or an opened PIL image) → uint8 (size, size, 3), OpenAI's pipeline."""
    im = image if image is not None else Image.open(io.BytesIO(data))
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    im = im.resize((new_w, new_h), Image.BICUBIC)  # PIL itself uses NEAREST for P and 1
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=None)
def layer(size):
    return CLIPImagePreprocessor(image_size=size)


def ours(data, size):
    """Encoded bytes → float64 (size, size, 3) in 0..255 levels (normalisation undone)."""
    out = layer(size)(tf.constant([data])).numpy()[0].astype(np.float64)
    return (out * STD + MEAN) * 255.0


def diff_stats(got, expected):
    d = np.abs(got - expected.astype(np.float64))
    d = np.where(d < 1e-3, 0.0, d)  # float32 normalisation round trip
    return {"mean": d.mean(), "max": d.max(), "differ": (d > 0.5).mean(),
            "over_one": (d > 1.5).mean(), "n": d.size}


# --- sources ----------------------------------------------------------------------------------

def encode(image, fmt, **options):
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def png16(array, colour_type):
    """uint16 (H, W[, C]) → a 16-bit PNG (PIL cannot write 16-bit RGB)."""
    h, w = array.shape[:2]
    rows = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def gcr_cmyk(rgb):
    """uint8 RGB → CMYK with grey-component replacement (K and C/M/Y all vary, unlike PIL's
    own RGB → CMYK, which leaves K at 0)."""
    x = rgb.astype(np.float64) / 255.0
    k = 1.0 - x.max(-1, keepdims=True)
    cmy = (1.0 - x - k) / np.maximum(1.0 - k, 1e-6)
    return np.round(np.concatenate([cmy, k], -1) * 255.0).astype(np.uint8)


def horizontal_ramp(h, w):
    return np.broadcast_to(np.linspace(0, 255, w).round().astype(np.uint8), (h, w))


def vertical_ramp(h, w):
    return horizontal_ramp(w, h).T


def quantized(rgb):
    return Image.fromarray(rgb).quantize(256, dither=Image.Dither.NONE)


def with_trns(p_image):
    alpha = bytes((i * 37) % 256 for i in range(256))  # every index its own alpha, 0 included
    return encode(p_image, "PNG", transparency=alpha)


def animated_gif(rgb):
    frames = [quantized(np.roll(rgb, 7 * i, axis=1)) for i in range(3)]
    # The first frame's transparent index: PIL keeps its palette colour, TF would paint black.
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80,
                  transparency=int(np.asarray(frames[0])[0, 0]))


def grey_ramp_gif(rgb):
    grey = np.asarray(Image.fromarray(rgb).convert("L")).copy()
    grey.flat[:256] = np.arange(256)  # every level used: PIL writes (and reopens) mode L
    return encode(Image.fromarray(grey), "GIF")


def ycck(jpeg):
    """The CMYK JPEG's Adobe marker switched to transform 2: libjpeg reads the planes as YCCK."""
    at = jpeg.index(b"Adobe") + 11
    return jpeg[:at] + b"\x02" + jpeg[at + 1:]


def without_adobe(jpeg):
    start = jpeg.index(b"\xff\xee")
    end = start + 2 + int.from_bytes(jpeg[start + 2:start + 4], "big")
    return jpeg[:start] + jpeg[end:]


def rgba(rgb, alpha):
    return Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")


def la(x):
    return Image.fromarray(np.dstack([np.asarray(Image.fromarray(x).convert("L")),
                                      vertical_ramp(*x.shape[:2])]), "LA")


def cmyk_jpeg(x, **options):
    return encode(Image.fromarray(gcr_cmyk(x), "CMYK"), "JPEG", **options)


def transparent_white_left_half(x):
    opaque = horizontal_ramp(*x.shape[:2]) >= 128
    return rgba(np.where(opaque[..., None], x, 255), np.where(opaque, 255, 0))


MODES = {
    # name: (the mode PIL opens it in, uint8 RGB (H, W, 3) → encoded bytes)
    "RGB PNG": ("RGB", lambda x: encode(Image.fromarray(x), "PNG")),
    "RGB JPEG (q90)": ("RGB", lambda x: encode(Image.fromarray(x), "JPEG", quality=90)),
    "L PNG": ("L", lambda x: encode(Image.fromarray(x).convert("L"), "PNG")),
    "RGBA PNG, opaque": ("RGBA", lambda x: encode(rgba(x, np.full(x.shape[:2], 255)), "PNG")),
    "RGBA PNG, alpha ramp 0→255": (
        "RGBA", lambda x: encode(rgba(x, horizontal_ramp(*x.shape[:2])), "PNG")),
    "RGBA PNG, white transparent background": (
        "RGBA", lambda x: encode(transparent_white_left_half(x), "PNG")),
    "LA PNG": ("LA", lambda x: encode(la(x), "PNG")),
    "P PNG": ("P", lambda x: encode(quantized(x), "PNG")),
    "P PNG with tRNS": ("P", lambda x: with_trns(quantized(x))),
    "1 PNG": ("1", lambda x: encode(Image.fromarray(x).convert("1"), "PNG")),
    "CMYK JPEG": ("CMYK", lambda x: cmyk_jpeg(x, quality=90)),
    "CMYK JPEG, YCCK": ("CMYK", lambda x: ycck(cmyk_jpeg(x))),
    "CMYK JPEG, no Adobe marker": ("CMYK", lambda x: without_adobe(cmyk_jpeg(x))),
    "GIF, animated, first frame (P, transparency)": ("P", animated_gif),
    "GIF, grey ramp palette (L)": ("L", grey_ramp_gif),
    "16-bit RGB PNG": ("RGB", lambda x: png16(x.astype(np.uint16) * 257 + 100, 2)),
    "WebP RGBA lossless": ("RGBA", lambda x: encode(rgba(x, horizontal_ramp(*x.shape[:2])),
                                                    "WEBP", lossless=True)),
    "WebP RGBA lossy (q90)": ("RGBA", lambda x: encode(rgba(x, horizontal_ramp(*x.shape[:2])),
                                                       "WEBP", quality=90)),
}


@functools.lru_cache(maxsize=None)
def photo(kind):
    """Non-square sources: "down" 300×451 → 224 (downscale), "up" 100×75 → 336 (upscale),
    "tall" 600×250 → 224 (the height shrinks by more than twice as many pixels as the width,
    63 > 2 × 26: Pillow 13 resizes the height first)."""
    chelsea = skdata.chelsea()
    if kind == "tall":
        return np.ascontiguousarray(np.concatenate([chelsea, chelsea[::-1]], 0)[:, 100:350])
    return chelsea if kind == "down" else np.ascontiguousarray(chelsea[::3, 100:325:3])


SIZES = {"down": 224, "up": 336, "tall": 224}


def failing_case():
    """Issue 13's case: 40×40, white fully transparent background, opaque red 20×20 square."""
    x = np.zeros((40, 40, 4), np.uint8)
    x[...] = (255, 255, 255, 0)
    x[10:30, 10:30] = (255, 0, 0, 255)
    return encode(Image.fromarray(x, "RGBA"), "PNG")


def grey16():
    g = skdata.camera()[::4, ::3].astype(np.uint16)  # (128, 171)
    return g * 257 + (np.arange(g.size).reshape(g.shape) % 251).astype(np.uint16)


@functools.lru_cache(maxsize=None)
def measure(mode, kind):
    if mode == "RGBA PNG, transparent square (issue 13)":
        data, size, pil_mode = failing_case(), {"down": 32, "up": 64, "tall": 16}[kind], "RGBA"
    else:
        pil_mode, build = MODES[mode]
        data, size = build(photo(kind)), SIZES[kind]
    assert Image.open(io.BytesIO(data)).mode == pil_mode  # the test covers what it says
    return diff_stats(ours(data, size), openai_reference(data, size))


ALL_MODES = ["RGBA PNG, transparent square (issue 13)", *MODES]


@pytest.mark.parametrize("kind", ["down", "up", "tall"])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_mode_matches_openai_pipeline(mode, kind):
    s = measure(mode, kind)
    assert s["max"] <= 1 and s["differ"] <= GATE, s


def test_issue_13_transparent_background_is_black():
    data = failing_case()
    got = ours(data, 32).round()
    np.testing.assert_array_equal(got[0, 0], [0, 0, 0])  # OpenAI's: transparent → black
    np.testing.assert_array_equal(got, openai_reference(data, 32))


def test_16_bit_grey_png_is_scaled_not_clamped():
    # Deliberate difference: PIL opens 16-bit grey as "I;16" and convert("RGB") clamps every value
    # above 255 to white; we keep the high byte (an 8-bit image), as decode_png does for RGB.
    g16 = grey16()
    data = encode(Image.fromarray(g16), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    as_8_bit = Image.fromarray((g16 >> 8).astype(np.uint8))
    s = diff_stats(ours(data, 64), openai_reference(None, 64, image=as_8_bit))
    assert s["max"] <= 1 and s["differ"] <= GATE, s
    assert (openai_reference(data, 64) == 255).mean() > 0.99  # what OpenAI's pipeline gives


# --- pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [lambda j: j, ycck, without_adobe])
def test_cmyk_planes_are_pils_exactly(variant):
    rng = np.random.default_rng(0)
    cmyk = rng.integers(0, 256, (24, 40, 4), np.uint8)
    data = variant(encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95))
    expected = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(_jpeg_cmyk(tf.constant(data)).numpy(), expected)


def test_nearest_index_is_pils():
    for n_in in [1, 2, 3, 7, 40, 75, 99, 100, 300, 451, 641, 1000, 1999]:
        for n_out in [1, 5, 32, 64, 224, 298, 336, 1000]:
            source = Image.fromarray(np.arange(n_in, dtype=np.int32)[None], "I")
            expected = np.asarray(source.resize((n_out, 1), Image.NEAREST))[0]
            got = _nearest_index(tf.constant(n_in), tf.constant(n_out)).numpy()
            np.testing.assert_array_equal(got, expected, err_msg=f"{n_in} → {n_out}")


def test_arrays_with_alpha_match_png_bytes():
    x = photo("up")
    alpha = horizontal_ramp(*x.shape[:2])
    grey = np.asarray(Image.fromarray(x).convert("L"))
    pre = layer(224)
    for array, mode in [(np.dstack([x, alpha]), "RGBA"), (np.dstack([grey, alpha]), "LA")]:
        from_bytes = pre(tf.constant([encode(Image.fromarray(array, mode), "PNG")])).numpy()
        np.testing.assert_array_equal(pre(array[None]).numpy(), from_bytes)
        np.testing.assert_array_equal(pre(array[None] / 255.0).numpy(), from_bytes)


def mixed_batch():
    x, y = photo("down"), photo("up")
    names = [("RGB JPEG (q90)", x), ("P PNG with tRNS", y), ("CMYK JPEG", y), ("LA PNG", x),
             ("GIF, animated, first frame (P, transparency)", x), ("1 PNG", y),
             ("WebP RGBA lossy (q90)", y)]
    return [failing_case()] + [MODES[name][1](image) for name, image in names]


def test_mixed_modes_in_one_batch_eager_graph_and_saved_model(tmp_path):
    pre = layer(224)
    data = mixed_batch()
    batch = pre(tf.constant(data)).numpy()
    for i, item in enumerate(data):
        np.testing.assert_array_equal(batch[i], pre(tf.constant([item])).numpy()[0])
        expected = (openai_reference(item, 224) / 255.0 - MEAN) / STD
        np.testing.assert_allclose(batch[i], expected, rtol=0, atol=1e-5, err_msg=str(i))

    fn = tf.function(pre, input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_allclose(fn(tf.constant(data)).numpy(), batch, rtol=0, atol=1e-5)

    archive = keras.export.ExportArchive()
    archive.track(pre)
    archive.add_endpoint("serve", lambda s: pre(s),
                         input_signature=[tf.TensorSpec([None], tf.string)])
    archive.write_out(str(tmp_path / "pre"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "pre"))
    np.testing.assert_allclose(loaded.serve(tf.constant(data)).numpy(), batch, rtol=0, atol=1e-5)

    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4).map(pre)
    np.testing.assert_allclose(np.concatenate(list(dataset.as_numpy_iterator())), batch,
                               rtol=0, atol=1e-5)


def test_preprocess_images_takes_pil_images_in_their_mode():
    x = photo("up")
    images = [rgba(x, horizontal_ramp(*x.shape[:2])), quantized(x),
              Image.fromarray(x).convert("1"), Image.fromarray(x).convert("L")]
    got = preprocess_images(images)
    for i, image in enumerate(images):
        expected = (openai_reference(None, 224, image=image) / 255.0 - MEAN) / STD
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-5, err_msg=image.mode)


# --- the README table -------------------------------------------------------------------------

def test_mode_table():
    """Prints the README table (run with -s): the three sources (down, up, tall) per mode."""
    rows = ["| source (PIL mode) | mean abs diff (levels) | max abs diff | values that differ "
            "| > 1 level |", "|---|---|---|---|---|"]
    for mode in ALL_MODES:
        stats = [measure(mode, kind) for kind in ("down", "up", "tall")]
        n = sum(s["n"] for s in stats)
        mean = sum(s["mean"] * s["n"] for s in stats) / n
        differ = sum(s["differ"] * s["n"] for s in stats) / n
        over = sum(s["over_one"] * s["n"] for s in stats) / n
        worst = max(s["max"] for s in stats)
        rows.append(f"| {mode} | {mean:.4f} | {worst:.0f} | {100 * differ:.3f}% "
                    f"| {100 * over:.3f}% |")
        assert worst <= 1 and differ <= GATE, mode
    g16 = grey16()
    data = encode(Image.fromarray(g16), "PNG")
    vs_openai = diff_stats(ours(data, 64), openai_reference(data, 64))
    rows.append(f"| 16-bit grey PNG (I;16) — deliberate: OpenAI's is white | "
                f"{vs_openai['mean']:.1f} | {vs_openai['max']:.0f} | "
                f"{100 * vs_openai['differ']:.1f}% | {100 * vs_openai['over_one']:.1f}% |")
    print("\n" + "\n".join(rows))
