"""CLIP image preprocessing in TensorFlow ops (fits in a SavedModel for TF Serving).

Reproduces OpenAI's (and open_clip's) PIL pipeline ``Image.open(f)`` → ``Resize(size, BICUBIC)``
→ ``CenterCrop(size)`` → ``convert("RGB")`` → ``ToTensor`` → ``Normalize(mean, std)`` for every
image mode PIL opens: the shorter side is resized to ``image_size`` (the longer side is
``int(long * size / short)``, as torchvision computes it), then the centre is cropped
(``top = int(round((h - size) / 2))``) and normalised to float32 NHWC.

The resize happens *before* the conversion to RGB, in the mode PIL opened the file in, so the
layer reads the mode from the encoded bytes (PNG IHDR, JPEG component count, GIF palette) and
resizes the way PIL's ``Image.resize`` does for it:

* RGB, L (and 16-bit RGB, high byte): bicubic, PIL's two fixed-point 1-D passes reproduced
  exactly (``_pil_pass``).
* RGBA, LA (PNG colour types 4/6, WebP): the same on premultiplied alpha, then alpha is dropped
  (fully transparent pixels turn black, as in PIL).
* P, 1 (palette PNG, 1-bit PNG, GIF unless its palette is the grey ramp): nearest neighbour,
  whatever filter is asked for (``Image.resize`` forces it); palette transparency is ignored
  (the palette colour is used).
* CMYK/YCCK JPEG: bicubic on the CMYK planes (recovered exactly, ``_jpeg_cmyk``), then PIL's
  CMYK → RGB.

Deliberate difference: 16-bit greyscale PNGs are scaled to 8 bits (the high byte) where PIL's
``convert("RGB")`` clamps every value above 255 to white.

Measured against PIL 13 (tests/test_image_modes.py, benchmarks/preprocessing_parity.py):
identical 8-bit levels for every mode above; see the README's "Image preprocessing" table.
Not covered: palette BMPs (TF's BMP decoder ignores the palette), animated WebP/PNG beyond the
first frame, GIF first frames smaller than the canvas.

This is the one image path of the project: training, evaluation, DALL·E reranking, TFLite
calibration/parity and the export signatures all go through ``CLIPImagePreprocessor`` (or, for
uint8 images already at the model's size, ``normalize_uint8``, the same ``ToTensor`` +
``Normalize`` arithmetic). ``tests/test_one_image_path.py`` checks that no other module resizes
or normalises images for CLIP.

Example:
    >>> pre = CLIPImagePreprocessor(image_size=224)
    >>> x = pre(tf.constant([open("cat.jpg", "rb").read()]))   # (1, 224, 224, 3) float32
    >>> x = preprocess_images(uint8_images)                      # (B, 224, 224, 3) numpy
    >>> x = pre(unit_to_uint8(decoded))       # float [0, 1] images (dVAE output): as 8-bit PIL
    >>> x = normalize_uint8(uint8_at_224)     # uint8 already 224 px: ToTensor + Normalize only
"""

import io

import keras
import numpy as np
import tensorflow as tf

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def openai_normalization():
    """``(mean, std)``: OpenAI's per-channel normalisation (lists of 3 floats, for [0, 1]
    pixels), which `CLIPImagePreprocessor` applies. For describing this preprocessing in other
    formats' configs (open_clip's ``preprocess_cfg``, transformers' ``preprocessor_config.json``)
    and checking theirs against it; images themselves go through the preprocessor."""
    return list(OPENAI_MEAN), list(OPENAI_STD)

_RESIZE_METHODS = ("bicubic", "bilinear", "nearest", "area", "lanczos3", "lanczos5",
                   "gaussian", "mitchellcubic")
_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_ARRAY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def unit_to_uint8(images):
    """Float images in [0, 1] → uint8 8-bit levels: ``floor(x * 255 + 0.5)`` (round half up),
    clipped to 0..255. TF ops.

    OpenAI's pipeline starts from a PIL image, i.e. 8-bit levels; this is the uint8 image a float
    image (e.g. ``DiscreteVAE.decode`` output) stands for. ``uint8 / 255`` floats come back
    exactly. ``CLIPImagePreprocessor`` applies it to every float input.
    """
    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    return tf.cast(tf.clip_by_value(tf.floor(x * 255.0 + 0.5), 0.0, 255.0), tf.uint8)


def _normalize_levels(levels, mean, std):
    """float32 8-bit levels (0..255) → ``Normalize(mean, std)(ToTensor(image))``: the one
    implementation of CLIP's normalisation (the layer, ``normalize_uint8``)."""
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (levels / 255.0 - mean) / std


def normalize_uint8(images, mean=OPENAI_MEAN, std=OPENAI_STD):
    """uint8 images (..., 3) already at the model's size → CLIP-normalised float32.

    torchvision's ``ToTensor`` + ``Normalize``, nothing else: for pixels that need no resize or
    crop (e.g. the built-in shapes data, drawn at the model's size) this is exactly what
    ``CLIPImagePreprocessor(image_size)`` gives, without its resize machinery. TF ops.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise ValueError(f"normalize_uint8: expected uint8 pixels, got {images.dtype.name} (float "
                         "images in [0, 1]: CLIPImagePreprocessor, or unit_to_uint8 first)")
    if images.shape.rank is not None and images.shape[-1] not in (None, 3):
        raise ValueError(f"normalize_uint8: expected RGB images (..., 3), got shape {images.shape}")
    return _normalize_levels(tf.cast(images, tf.float32), mean, std)


def _resized_hw(h, w, size):
    """torchvision ``Resize(int)`` output size: shorter side → size, longer side truncated."""
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    # float64 division of exact integers = Python's `int(size * long / short)`.
    new_long = tf.cast(tf.floor(tf.cast(size * long, tf.float64) / tf.cast(short, tf.float64)),
                       tf.int32)
    new_h = tf.where(w <= h, new_long, size)
    new_w = tf.where(w <= h, size, new_long)
    return new_h, new_w


def _center_offset(n, size):
    # tf.round is round-half-to-even, like Python's round() in torchvision's CenterCrop.
    return tf.cast(tf.round(tf.cast(n - size, tf.float64) / 2.0), tf.int32)


# ---------------------------------------------------------------------------------------------
# Resizing in PIL's mode. How PIL's ``Image.resize`` treats each mode (Image.py):
#   _RGB      RGB, L, 16-bit RGB: bicubic on the pixels as they are
#   _RGBA     RGBA, LA: converted to premultiplied alpha, bicubic, converted back
#   _PALETTE  P, 1: NEAREST, whatever filter was asked for
#   _CMYK     CMYK: bicubic on the four planes
# An unchanged size is a plain copy in every mode. convert("RGB") comes after the centre crop.
# ---------------------------------------------------------------------------------------------

_RGB, _RGBA, _PALETTE, _CMYK = range(4)


def _cond(pred, true_fn, false_fn):
    """tf.cond, or plain Python when `pred` is a Python bool (array inputs: mode known)."""
    if isinstance(pred, bool):
        return true_fn() if pred else false_fn()
    return tf.cond(pred, true_fn, false_fn)


class _PILResize:
    """torchvision ``Resize(size) → CenterCrop(size)`` then ``convert("RGB")``, per PIL mode."""

    def __init__(self, size, method="bicubic", antialias=True):
        self.size, self.method, self.antialias = size, method, antialias

    def __call__(self, x, mode):
        """x: uint8 (B, H, W, C) with C = 3 for _RGB (or 1, grey) and _PALETTE (palette
        applied), 4 for _RGBA (straight alpha) and _CMYK (PIL's planes).
        mode: a Python int (arrays), or an int32 scalar tensor (encoded inputs).

        Returns float32 (B, size, size, 3) levels.
        """
        shape = tf.shape(x)
        h, w = shape[1], shape[2]
        new_h, new_w = _resized_hw(h, w, self.size)
        same = (new_h == h) & (new_w == w)  # PIL: a copy, so no premultiplication either
        if isinstance(mode, int):
            premultiply = ~same if mode == _RGBA else False
            index_only = True if mode == _PALETTE else same
        else:
            premultiply = (mode == _RGBA) & ~same
            index_only = (mode == _PALETTE) | same
        x = _cond(premultiply, lambda: _premultiply(x), lambda: x)
        # Resized and centre-cropped in one go: only the crop window is computed. NEAREST at an
        # unchanged size is the identity, i.e. PIL's copy.
        window = (new_h, new_w, _center_offset(new_h, self.size),
                  _center_offset(new_w, self.size))
        x = _cond(index_only, lambda: _nearest(x, *window, self.size),
                  lambda: self._resample(x, *window))  # (B, size, size, C)
        to_rgb = [lambda: x[..., :3],
                  lambda: _cond(premultiply, lambda: _unpremultiply(x), lambda: x[..., :3]),
                  lambda: x[..., :3],
                  lambda: _cmyk_to_rgb(x)]
        if isinstance(mode, int):
            x = to_rgb[mode]()
        else:
            x = tf.switch_case(mode, to_rgb)
        if x.shape[-1] == 1:  # an L array: convert("RGB") repeats the grey
            x = tf.tile(x, [1, 1, 1, 3])
        return tf.ensure_shape(tf.cast(x, tf.float32), [None, self.size, self.size, 3])

    def _resample(self, x, new_h, new_w, top, left):
        """uint8 (B, H, W, C) → uint8 (B, size, size, C): ``Image.resize(BICUBIC)`` to
        (new_h, new_w), then the crop at (top, left).

        Bicubic with antialias (the default) is PIL's ImagingResample to the bit: two 1-D
        passes, each with PIL's fixed-point weights and stored as uint8 (``_pil_pass``),
        computed for the crop window only (every output pixel is its own sum, so this changes
        nothing). The order is Pillow 13's (ImagingResampleInner): the width first, unless the
        height shrinks by more than twice as many pixels as the width, H − new_h > 2 (W −
        new_w), which runs the height first; the uint8 rounding between the passes makes the
        order visible. Pillow ≤ 12 always runs the width first. Other methods use
        tf.image.resize with width-then-height passes and per-pass uint8 rounding (close to
        PIL's filter of that name, not identical).
        """
        size = self.size
        if self.method == "bicubic" and self.antialias:
            shape = tf.shape(x)
            columns = _pil_weights(shape[2], new_w, left, size)  # (size, W)
            rows = _pil_weights(shape[1], new_h, top, size)      # (size, H)
            shrink_h, shrink_w = shape[1] - new_h, shape[2] - new_w
            height_first = (shrink_h > 0) & (shrink_h > 2 * shrink_w)
            return tf.cond(height_first, lambda: _two_passes(x, rows, 1, columns, 2),
                           lambda: _two_passes(x, columns, 2, rows, 1))

        def resize(y, hw):  # PIL keeps each pass in uint8: round, and clip the overshoot.
            y = tf.image.resize(y, hw, method=self.method, antialias=self.antialias)
            return tf.clip_by_value(tf.floor(y + 0.5), 0.0, 255.0)

        x = resize(tf.cast(x, tf.float32), tf.stack([tf.shape(x)[1], new_w]))
        x = resize(x, tf.stack([new_h, new_w]))
        return tf.cast(x[:, top:top + size, left:left + size], tf.uint8)


def _premultiply(x):
    """uint8 (..., 4) RGBA → RGBa, PIL's convert("RGBa"): colour × alpha / 255, rounded."""
    rgb, a = tf.cast(x[..., :3], tf.int32), tf.cast(x[..., 3:], tf.int32)
    return tf.cast(tf.concat([(2 * rgb * a + 255) // 510, a], -1), tf.uint8)


def _unpremultiply(x):
    """(..., 4) RGBa → uint8 (..., 3) RGB, PIL's convert("RGBA") then convert("RGB"): colour ×
    255 / alpha truncated and capped at 255; alpha 0 and 255 leave the colour as it is."""
    rgb, a = tf.cast(x[..., :3], tf.int32), tf.cast(x[..., 3:], tf.int32)
    straight = tf.minimum(255 * rgb // tf.maximum(a, 1), 255)
    return tf.cast(tf.where((a == 0) | (a == 255), rgb, straight), tf.uint8)


def _cmyk_to_rgb(x):
    """(..., 4) CMYK → uint8 (..., 3), PIL's convert("RGB"): R = 255 - K - round(C (255 - K) /
    255), and the same for G/M and B/Y."""
    x = tf.cast(x, tf.int32)
    cmy, nk = x[..., :3], 255 - x[..., 3:]
    return tf.cast(tf.clip_by_value(nk - (2 * cmy * nk + 255) // 510, 0, 255), tf.uint8)


def _nearest(x, new_h, new_w, top, left, size):
    """(B, H, W, C) → (B, size, size, C): PIL's NEAREST resize to (new_h, new_w) (P and 1
    modes), cropped at (top, left)."""
    shape = tf.shape(x)
    rows = _nearest_index(shape[1], new_h)[top:top + size]    # (size,)
    cols = _nearest_index(shape[2], new_w)[left:left + size]  # (size,)
    return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


_PRECISION_BITS = 22  # PIL's 8-bit resampling: weights × 2**22 as integers


def _bicubic(x):
    """float64: PIL's bicubic kernel (a = -0.5), evaluated in the same order."""
    x = tf.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _pil_weights(n_in, n_out, start, count):
    """PIL's bicubic weights for outputs start … start + count - 1 of a resize n_in → n_out:
    a float64 SparseTensor (count, n_in) holding integers (weight × 2**22).

    Mirrors ImagingResample's coefficient set-up: support 2 × max(scale, 1) around each output
    centre ``(i + 0.5) * scale``, taps from ``int(centre - support + 0.5)``, weights normalised by
    their sequential sum, then scaled by 2**22 and rounded half away from zero.
    """
    scale = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
    filter_scale = tf.maximum(scale, 1.0)
    support = 2.0 * filter_scale
    taps = tf.range(tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1)       # (K,)
    centre = (tf.cast(tf.range(start, start + count), tf.float64) + 0.5) * scale  # (count,)
    first = tf.maximum(tf.cast(centre - support + 0.5, tf.int32), 0)         # C's truncation
    used = taps[None, :] < (tf.minimum(tf.cast(centre + support + 0.5, tf.int32), n_in)
                            - first)[:, None]                                 # (count, K)
    source = taps[None, :] + first[:, None]                                   # (count, K)
    w = _bicubic((tf.cast(source, tf.float64) - centre[:, None] + 0.5) * (1.0 / filter_scale))
    w = tf.where(used, w, 0.0)
    with tf.device("/CPU:0"):  # a sequential sum, like PIL's loop (a GPU scan is a tree)
        total = tf.math.cumsum(w, axis=1)[:, -1:]
    w = tf.where(total != 0.0, w / total, w) * float(1 << _PRECISION_BITS)
    w = tf.where(w < 0.0, w - 0.5, w + 0.5)
    w = tf.cast(tf.cast(w, tf.int64), tf.float64)  # C's (int) truncates towards 0
    rows = tf.broadcast_to(tf.range(count)[:, None], tf.shape(used))
    indices = tf.stack([tf.boolean_mask(rows, used), tf.boolean_mask(source, used)], 1)
    return tf.SparseTensor(tf.cast(indices, tf.int64), tf.boolean_mask(w, used),
                           tf.cast(tf.stack([count, n_in]), tf.int64))


def _pil_pass(x, weights, axis):
    """One of ImagingResample's 1-D passes: levels (B, H, W, C) → uint8, with `axis` (1 =
    height, 2 = width) mapped through `weights` (SparseTensor (n_out, n_in) from _pil_weights).

    Integer arithmetic as PIL's: sum(pixel × weight) + 2**21, shifted right by 22, clipped to
    0..255 (the products and sums are integers well inside float64's exact range).
    """
    perm = [axis] + [i for i in range(4) if i != axis]
    x = tf.transpose(x, perm)  # (n_in, …): the resized axis first; uint8 stays 1 byte here
    shape = tf.shape(x)
    flat = tf.cast(tf.reshape(x, [shape[0], -1]), tf.float64)  # (n_in, rest)
    y = tf.sparse.sparse_dense_matmul(weights, flat)  # (n_out, rest)
    half, one = float(1 << (_PRECISION_BITS - 1)), float(1 << _PRECISION_BITS)
    y = tf.cast(tf.clip_by_value(tf.floor((y + half) / one), 0.0, 255.0), tf.uint8)
    y = tf.reshape(y, tf.concat([[tf.shape(y)[0]], shape[1:]], 0))
    return tf.transpose(y, np.argsort(perm))


def _two_passes(x, first, first_axis, second, second_axis):
    """``_pil_pass`` along ``first_axis`` (1 = height, 2 = width) with the weights ``first``,
    then along ``second_axis`` with ``second``. The first pass is computed only for the
    positions of the other axis that the second pass reads (its weights' non-zero columns)."""
    lo = tf.reduce_min(second.indices[:, 1])
    hi = tf.reduce_max(second.indices[:, 1]) + 1
    second = tf.SparseTensor(second.indices - tf.stack([tf.constant(0, tf.int64), lo]),
                             second.values, tf.stack([second.dense_shape[0], hi - lo]))
    x = x[:, lo:hi] if second_axis == 1 else x[:, :, lo:hi]
    x = _pil_pass(x, first, first_axis)      # (B, used, size, C) or (B, size, used, C)
    return _pil_pass(x, second, second_axis)  # (B, size, size, C)


def _nearest_index(n_in, n_out):
    """int32 (n_out,): the source index PIL's NEAREST resize reads for each output pixel."""
    step = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
    steps = tf.concat([[step * 0.5], tf.fill([n_out - 1], step)], 0)
    # The CPU cumsum of a row is a sequential sum: the same float64 additions as PIL's loop.
    with tf.device("/CPU:0"):
        position = tf.math.cumsum(steps)
    return tf.minimum(tf.cast(tf.floor(position), tf.int32), n_in - 1)


# ---------------------------------------------------------------------------------------------
# Reading the encoded bytes: which format, which PIL mode.
# ---------------------------------------------------------------------------------------------

def _bytes(data):
    """Scalar tf.string → int32 (N,) byte values."""
    return tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)


def _at(b, i):
    """b[i] for int32 byte values b (N,), with i clamped into range (bytes past the end of a
    truncated file read as its last byte; the decoder then reports the damage)."""
    return tf.gather(b, tf.clip_by_value(i, 0, tf.size(b) - 1))


def _matches(b, offset, expected):
    """True if bytes b[offset:offset + len(expected)] equal `expected` (Python bytes)."""
    got = _at(b, offset + tf.range(len(expected)))
    return tf.reduce_all(tf.equal(got, tf.constant(list(expected), tf.int32)))


def _byte_string(value):
    """int32 0..255 (any shape) → one-byte tf.string(s)."""
    return tf.gather(tf.constant([bytes([i]) for i in range(256)]), value)


def _set_byte(data, offset, value):
    """tf.string(s) with the byte at `offset` replaced by `value` (unchanged where offset < 0).
    data, offset and value broadcast against each other (one string or a vector of them)."""
    n = tf.strings.length(data)
    offset = tf.broadcast_to(offset, tf.shape(n))
    safe = tf.maximum(offset, 0)
    patched = tf.strings.join([tf.strings.substr(data, tf.zeros_like(safe), safe),
                               _byte_string(value),
                               tf.strings.substr(data, safe + 1, n - safe - 1)])
    return tf.where(offset >= 0, patched, data)


def _insert(data, offset, piece):
    """tf.string(s) with `piece` inserted before byte `offset` (broadcast as in _set_byte)."""
    n = tf.strings.length(data)
    offset = tf.broadcast_to(offset, tf.shape(n))
    return tf.strings.join([tf.strings.substr(data, tf.zeros_like(offset), offset), piece,
                            tf.strings.substr(data, offset, n - offset)])


_PNG, _JPEG, _GIF, _WEBP, _OTHER = range(5)


def _format(data):
    """Scalar tf.string → int32 format id (_PNG, _JPEG, _GIF, _WEBP or _OTHER) from the magic."""
    head = _bytes(tf.strings.substr(tf.strings.join([data, b"\0" * 12]), 0, 12))  # (12,)
    is_png = _matches(head, 0, b"\x89PNG\r\n\x1a\n")
    is_gif = _matches(head, 0, b"GIF8")
    is_webp = _matches(head, 0, b"RIFF") & _matches(head, 8, b"WEBP")
    return tf.where(is_png, _PNG, tf.where(
        tf.io.is_jpeg(data), _JPEG, tf.where(is_gif, _GIF, tf.where(is_webp, _WEBP, _OTHER))))


def _png(data):
    """PNG → (uint8 (H, W, 3 or 4), mode). The IHDR bit depth and colour type sit at bytes 24
    and 25 of every PNG; PIL opens colour types 4/6 as LA/RGBA, 3 as P, 0 at 1 bit as "1", the
    rest as L/RGB (16-bit: "I;16", and RGB from the high byte, which decode_png also takes)."""
    head = _bytes(tf.strings.substr(data, 0, 26))  # (26,)
    depth, colour = _at(head, 24), _at(head, 25)
    has_alpha = (colour == 4) | (colour == 6)
    paletted = (colour == 3) | ((colour == 0) & (depth == 1))
    pixels = tf.cond(has_alpha, lambda: tf.io.decode_png(data, channels=4),
                     lambda: tf.io.decode_png(data, channels=3))  # P: the palette applied
    return pixels, tf.where(has_alpha, _RGBA, tf.where(paletted, _PALETTE, _RGB))


def _gif(data):
    """GIF → (uint8 (H, W, 3), mode): the first frame.

    PIL opens the first frame as "P", or as "L" when its palette is the grey ramp 0, 1, 2, …
    Its transparent index keeps the palette colour in PIL, while tf.io.decode_gif paints it
    black: the frame's transparency flag is cleared before decoding.
    """
    b = _bytes(data)
    n = tf.size(b)
    screen_flags = _at(b, 10)
    has_global = tf.bitwise.bitwise_and(screen_flags, 0x80) > 0
    global_entries = tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(screen_flags, 7))

    def after_sub_blocks(q):  # q at a sub-block length byte → just past the 0 terminator
        return tf.while_loop(lambda q: (q < n) & (_at(b, q) != 0),
                             lambda q: (q + _at(b, q) + 1,), (q,))[0] + 1

    def extension(pos, gce):  # 0x21 label …: remember a graphic control extension's flags byte
        gce = tf.where(_at(b, pos + 1) == 0xF9, pos + 3, gce)
        return after_sub_blocks(pos + 2), gce

    start = 13 + tf.where(has_global, 3 * global_entries, 0)
    pos, gce = tf.while_loop(lambda pos, gce: (pos < n) & (_at(b, pos) == 0x21), extension,
                             (start, tf.constant(-1)))
    # pos: the first image descriptor (0x2C, 9 bytes, then an optional local colour table).
    image_flags = _at(b, pos + 9)
    has_local = tf.bitwise.bitwise_and(image_flags, 0x80) > 0
    entries = tf.where(has_local, tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(image_flags, 7)),
                       tf.where(has_global, global_entries, 0))
    table = tf.where(has_local, pos + 10, 13)
    index = tf.range(entries)
    colours = _at(b, table + 3 * index[:, None] + tf.range(3))  # (entries, 3)
    grey_ramp = tf.reduce_all(tf.equal(colours, index[:, None]))

    flags = _at(b, gce)
    opaque = _set_byte(data, tf.where(tf.bitwise.bitwise_and(flags, 1) > 0, gce, -1),
                       tf.bitwise.bitwise_and(flags, 0xFE))
    return tf.io.decode_gif(opaque)[0], tf.where(grey_ramp, _RGB, _PALETTE)


def _webp(data):
    """WebP → (uint8 (H, W, 4), _RGBA). PIL opens it as RGBA when it has alpha; opaque RGB is
    the same through the premultiplied path (alpha 255 changes nothing)."""
    x = tf.io.decode_image(data, channels=0, expand_animations=False)  # (H, W, 3 or 4)
    x = tf.cond(tf.shape(x)[2] == 4, lambda: x,
                lambda: tf.concat([x[..., :3], tf.fill(tf.shape(x[..., :1]),
                                                       tf.constant(255, tf.uint8))], -1))
    return x, tf.constant(_RGBA)


def _jpeg(data):
    """JPEG → (uint8 (H, W, 3 or 4), mode): Y/YCbCr/RGB as RGB, 4 components (CMYK, YCCK) as
    PIL's CMYK planes. Decoded with libjpeg's accurate integer IDCT, as PIL (TF's default fast
    DCT is ~1 level off on average, up to 17)."""
    cmyk = tf.io.extract_jpeg_shape(data)[2] == 4
    pixels = tf.cond(cmyk, lambda: _jpeg_cmyk(data),
                     lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"))
    return pixels, tf.where(cmyk, _CMYK, _RGB)


def _other(data):
    """BMP (TF's decoder: 8-bit grey, 24/32-bit RGB) → (uint8 (H, W, 3), _RGB)."""
    return tf.io.decode_image(data, channels=3, expand_animations=False), tf.constant(_RGB)


def _decode(data):
    """Scalar tf.string → (uint8 (H, W, C) pixels, int32 PIL mode id) as ``Image.open`` holds
    them: C = 3 for _RGB and _PALETTE (palette applied), 4 for _RGBA and _CMYK."""
    branches = [_png, _jpeg, _gif, _webp, _other]  # in _format's order
    pixels, mode = tf.switch_case(_format(data), [lambda f=f: f(data) for f in branches])
    return tf.ensure_shape(pixels, [None, None, None]), mode


@tf.autograph.experimental.do_not_convert
def _decode_resize(data, resize):
    """Scalar tf.string → float32 (size, size, 3) levels, as OpenAI's pipeline would give."""
    pixels, mode = _decode(data)
    return resize(pixels[None], mode)[0]


# ---------------------------------------------------------------------------------------------
# CMYK JPEGs. tf.io.decode_jpeg only returns RGB (R = K * C / 255 truncated), but PIL resizes the
# CMYK planes themselves. They are recovered exactly from four decodes of patched copies of the
# file: a zero quantisation table makes a component a constant 128, and with one factor fixed
# at 128, the two products TF computes (with and without an Adobe marker) give the other.
# ---------------------------------------------------------------------------------------------

def _jpeg_segments(b):
    """JPEG bytes (N,) → int32 offsets (SOF, last Adobe APP14 or -1, first SOS).

    Walks the marker segments before the first scan (ITU T.81 B.1): FF xx, then a 2-byte length
    for all but the stand-alone markers; fill bytes and stray bytes are stepped over one by one.
    """
    def step(pos, sof, adobe):
        marker = _at(b, pos + 1)
        length = 256 * _at(b, pos + 2) + _at(b, pos + 3)
        is_marker = (_at(b, pos) == 0xFF) & (marker != 0xFF) & (marker != 0)
        alone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
        is_sof = ((marker >= 0xC0) & (marker <= 0xCF) & (marker != 0xC4) & (marker != 0xC8)
                  & (marker != 0xCC))
        is_adobe = (marker == 0xEE) & (length >= 14) & _matches(b, pos + 4, b"Adobe")
        sof = tf.where(is_marker & is_sof, pos, sof)
        adobe = tf.where(is_marker & is_adobe, pos, adobe)
        return pos + tf.where(is_marker, tf.where(alone, 2, 2 + length), 1), sof, adobe

    not_sos = lambda pos, sof, adobe: (pos < tf.size(b)) & ~(  # noqa: E731
        (_at(b, pos) == 0xFF) & (_at(b, pos + 1) == 0xDA))
    pos, sof, adobe = tf.while_loop(not_sos, step, (2, -1, -1))
    return sof, adobe, pos


def _jpeg_cmyk(data):
    """4-component JPEG → uint8 (H, W, 4): the CMYK planes PIL's ``Image.open`` holds.

    PIL asks libjpeg for CMYK (which turns YCCK into CMYK) and stores it inverted ("CMYK;I",
    Adobe's convention, with or without the marker).
    """
    b = _bytes(data)
    sof, adobe, sos = _jpeg_segments(b)
    tables = _at(b, sof + 12 + 3 * tf.range(4))  # (4,) quantisation table id of each component
    transform = tf.where(adobe >= 0, _at(b, adobe + 15), 0)
    without_adobe = _set_byte(data, tf.where(adobe >= 0, adobe + 4, -1), ord("X"))  # "Xdobe"

    # Four copies (V = 4): K planes zeroed (0, 1) or C/M/Y zeroed (2, 3); with an Adobe marker
    # (0, 2, TF computes K * C / 255) or without (1, 3, (255 - K) (255 - C) / 255).
    zero_k = tf.constant([True, True, False, False])
    with_adobe = tf.constant([True, False, True, False])
    ids = tf.range(4)
    free_for_k = tf.reduce_all(tf.not_equal(ids[:, None], tables[None, :3]), axis=1)  # (4,)
    table_k = tf.argmax(tf.cast(free_for_k, tf.int32), output_type=tf.int32)  # unused by C/M/Y
    table_cmy = tf.where(tables[3] == 0, 1, 0)  # unused by K
    zero_table = tf.where(zero_k, table_k, table_cmy)  # (V,)
    zeroed = tf.equal(zero_k[:, None], ids[None, :] == 3)  # (V, 4): components using it
    copies = tf.fill([4], without_adobe)  # (V,)
    for c in range(4):  # point the zeroed components at the zero table (others: unchanged)
        copies = _set_byte(copies, sof + 12 + 3 * c,
                           tf.where(zeroed[:, c], zero_table, tables[c]))
    dqt = tf.strings.join([b"\xff\xdb\x00\x43", _byte_string(zero_table), b"\0" * 64])
    # APP14 "Adobe", transform 0: the planes come out as stored (no YCC → RGB).
    app14 = tf.where(with_adobe, b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00", b"")
    copies = _insert(copies, sos, tf.strings.join([dqt, app14]))
    rgb = [tf.cast(tf.io.decode_jpeg(copies[v], channels=3, dct_method="INTEGER_ACCURATE"),
                   tf.int32) for v in range(4)]  # 4 × (H, W, 3)

    def unmix(with_marker, without_marker):
        """v from floor(128 v / 255) and floor(127 (255 - v) / 255): one or two candidates for
        the first, the second picks (the pair is distinct for each v in 0..255)."""
        low = (255 * with_marker + 127) // 128  # ceil(255 a / 128)
        return tf.where(127 * (255 - low) // 255 == without_marker, low, low + 1)

    planes = unmix(rgb[0], rgb[1])  # (H, W, 3): C, M, Y (or Y, Cb, Cr)
    k = unmix(rgb[2], rgb[3])[..., :1]  # (H, W, 1)
    planes = tf.cond(transform != 0, lambda: 255 - _ycc_to_rgb(planes), lambda: planes)
    return tf.cast(255 - tf.concat([planes, k], -1), tf.uint8)


def _ycc_to_rgb(ycc):
    """int32 (..., 3) JFIF YCbCr → RGB with libjpeg's arithmetic: coefficients in 16-bit fixed
    point (round(c * 2**16)), products rounded, results clipped to 0..255."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    half = 1 << 15
    r = y + (91881 * cr + half) // 65536                 # 1.402
    g = y + (-22554 * cb - 46802 * cr + half) // 65536   # 0.34414, 0.71414
    b = y + (116130 * cb + half) // 65536                # 1.772
    return tf.clip_by_value(tf.stack([r, g, b], -1), 0, 255)


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIPImagePreprocessor(keras.layers.Layer):
    """Encoded images or pixel arrays → CLIP-normalised float32 (B, size, size, 3).

    Accepts:
      * tf.string (B,): encoded PNG/JPEG/GIF/WebP/BMP bytes; images may differ in size and mode
        (one batch may mix RGB, RGBA, palette, CMYK, …). Each is resized in the mode PIL opens
        it in, as OpenAI's pipeline does (see the module docstring).
      * uint8 (B, H, W, C) with C = 3 (RGB), 1 (L, grey), 4 (RGBA, straight alpha: resized
        premultiplied, then alpha dropped, like an RGBA PNG) or 2 (LA, likewise).
      * float (B, H, W, C), same channel meanings, assumed in [0, 1].

    Every input is processed as PIL processes a uint8 image (float inputs are first rounded to
    8-bit levels by ``unit_to_uint8``, as OpenAI's PIL pipeline would store them), so bytes,
    uint8 and ``uint8 / 255`` floats give identical outputs: the same 8-bit levels as OpenAI's
    preprocessing (PIL 13) with the defaults (bicubic, antialias). Other ``resize_method`` values
    and ``antialias=False`` go through tf.image.resize and are only close to PIL's filter of that
    name.

    Only TF core ops (no py_function): it runs in tf.data, tf.function and SavedModels served by
    TF Serving.

    Example:
        >>> pre = CLIPImagePreprocessor(image_size=336)
        >>> pre(np.zeros((2, 480, 640, 3), np.uint8)).shape
        TensorShape([2, 336, 336, 3])
    """

    def __init__(self, image_size=224, mean=OPENAI_MEAN, std=OPENAI_STD,
                 resize_method="bicubic", antialias=True, **kwargs):
        super().__init__(**kwargs)
        if int(image_size) != image_size or image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={mean!r}, std={std!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {std!r}")
        if resize_method not in _RESIZE_METHODS:
            raise ValueError(f"resize_method must be one of {_RESIZE_METHODS}, "
                             f"got {resize_method!r}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize_method = resize_method
        self.antialias = bool(antialias)
        self._resize = _PILResize(self.image_size, resize_method, self.antialias)
        self.built = True  # no weights

    def __call__(self, inputs, *args, **kwargs):
        # Keras treats a Python list as a structure of inputs; a list of bytes is one batch.
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], bytes):
            inputs = tf.constant(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs)
        if tf.executing_eagerly():
            try:
                return self._preprocess(inputs)
            except tf.errors.InvalidArgumentError as e:
                if inputs.dtype == tf.string:
                    # In a graph the decode op's own error is all we can give.
                    raise ValueError(_decode_error(inputs, e, self._resize)) from None
                raise
        return self._preprocess(inputs)

    @tf.autograph.experimental.do_not_convert
    def _preprocess(self, x):
        size = self.image_size
        if x.dtype == tf.string:
            if x.shape.rank is not None and x.shape.rank != 1:
                raise ValueError("CLIPImagePreprocessor: expected a 1-D batch of encoded images "
                                 f"(tf.string of shape [B]), got rank {x.shape.rank} "
                                 f"(shape {x.shape})")
            x = tf.map_fn(lambda data: _decode_resize(data, self._resize), x,
                          fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        else:
            x = self._resize_array(x)
        return _normalize_levels(x, self.mean, self.std)  # (B, size, size, 3)

    def _resize_array(self, x):
        """uint8/float (B, H, W, C) → float32 (B, size, size, 3) levels."""
        if x.shape.rank is None:
            x = tf.ensure_shape(x, [None, None, None, None])
        if x.shape.rank != 4:
            raise ValueError("CLIPImagePreprocessor: expected images of rank 4 "
                             f"[B, H, W, 3], got rank {x.shape.rank} (shape {x.shape})")
        channels = x.shape[-1]
        if channels is None:
            channels = 3
            x = tf.ensure_shape(x, [None, None, None, 3])
        elif channels not in _ARRAY_CHANNELS:
            raise ValueError("CLIPImagePreprocessor: expected 3 channels (RGB), 1 (L), 4 (RGBA) "
                             f"or 2 (LA), got {channels} (shape {x.shape})")
        if x.dtype in _FLOAT_DTYPES:
            x = unit_to_uint8(x)  # [0, 1] floats → the uint8 image PIL would have been given
        elif x.dtype != tf.uint8:
            raise ValueError("CLIPImagePreprocessor: expected dtype uint8, float or string "
                             f"(encoded images), got {x.dtype.name}")
        if x.shape[1] == self.image_size and x.shape[2] == self.image_size:
            # Already at size (known statically): PIL's resize and crop are a copy in every mode
            # and convert("RGB") drops alpha / repeats the grey, so skip the resize machinery.
            x = x[..., :1] if channels <= 2 else x[..., :3]
            if channels <= 2:
                x = tf.tile(x, [1, 1, 1, 3])
            return tf.cast(x, tf.float32)
        if channels == 2:  # LA → RGBA with R = G = B = L: the same premultiplied arithmetic
            x = tf.concat([tf.tile(x[..., :1], [1, 1, 1, 3]), x[..., 1:]], -1)
        return self._resize(x, _RGBA if channels in (2, 4) else _RGB)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, mean=self.mean, std=self.std,
                      resize_method=self.resize_method, antialias=self.antialias)
        return config


def _decode_error(data, error, resize):
    """Eager-only: name the first input that does not decode, with the op's reason."""
    reason = error.message.strip().splitlines()[-1]
    for i, item in enumerate(data.numpy().reshape(-1)):
        try:
            _decode_resize(tf.constant(item), resize)
        except tf.errors.InvalidArgumentError as e:
            reason = e.message.split("}}")[-1].strip().splitlines()[0]
            return (f"CLIPImagePreprocessor: input {i} ({len(item)} bytes, starting "
                    f"{item[:8]!r}) is not a decodable image (expected JPEG, PNG, GIF, BMP "
                    f"or WebP bytes): {reason}")
    return f"CLIPImagePreprocessor: could not decode the input images: {reason}"


def preprocess_images(images, image_size=224, **kwargs):
    """Convenience wrapper: images → normalised float32 numpy (B, size, size, 3).

    `images` may be a uint8/float array (B, H, W, C) or a single (H, W, C) image (C = 3, 1, 4
    or 2, see ``CLIPImagePreprocessor``), or a list of encoded bytes, file paths, PIL images or
    arrays of any sizes. PIL images in modes RGB, RGBA, L and LA go in as arrays, P and 1 as PNG
    bytes (so they are resized nearest, as PIL would), others after ``convert("RGB")``. Extra
    kwargs go to ``CLIPImagePreprocessor``.

    Example:
        >>> x = preprocess_images(["cat.jpg", "dog.png"], image_size=224)   # (2, 224, 224, 3)
    """
    layer = CLIPImagePreprocessor(image_size=image_size, **kwargs)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("preprocess_images: got an empty list of images")
        if all(isinstance(i, (bytes, str)) for i in images):
            data = [i if isinstance(i, bytes) else tf.io.read_file(i).numpy() for i in images]
            return layer(tf.constant(data)).numpy()
        # Arrays or PIL images, possibly of different sizes: one at a time.
        return np.concatenate([preprocess_images(_as_input(i), image_size, **kwargs)
                               for i in images])
    images = images if isinstance(images, bytes) else _as_input(images)
    if isinstance(images, bytes):  # one encoded image (or a P / 1 PIL image as PNG)
        return layer(tf.constant([images])).numpy()
    if images.ndim == 3:  # one image (H, W, C)
        images = images[None]
    return np.asarray(layer(images))


def _as_input(image):
    """A PIL image → array (H, W, C) or PNG bytes; anything else → array."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image, without importing PIL
        if image.mode in ("P", "1"):
            buf = io.BytesIO()
            image.save(buf, "PNG")
            return buf.getvalue()
        return np.asarray(image if image.mode in ("RGB", "RGBA", "L", "LA")
                          else image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:  # grayscale (H, W)
        image = image[..., None]
    return image
