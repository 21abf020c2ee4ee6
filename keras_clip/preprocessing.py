"""CLIP image preprocessing in TensorFlow ops (fits in a SavedModel for TF Serving).

Reproduces OpenAI's PIL pipeline ``Resize(size, BICUBIC) → CenterCrop(size) → ToTensor →
Normalize(mean, std)``: the shorter side is resized to ``image_size`` (the longer side is
``int(long * size / short)``, as torchvision computes it), then the centre is cropped
(``top = int(round((h - size) / 2))``) and normalised to float32 NHWC. Measured against
torchvision on scikit-image's photos (benchmarks/preprocessing_parity.py): identical except
~0.02% of values one 8-bit level off.

Example:
    >>> pre = CLIPImagePreprocessor(image_size=224)
    >>> x = pre(tf.constant([open("cat.jpg", "rb").read()]))   # (1, 224, 224, 3) float32
    >>> x = preprocess_images(uint8_images)                      # (B, 224, 224, 3) numpy
"""

import keras
import numpy as np
import tensorflow as tf

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_RESIZE_METHODS = ("bicubic", "bilinear", "nearest", "area", "lanczos3", "lanczos5",
                   "gaussian", "mitchellcubic")
_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


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


def _decode(data):
    """Encoded image → uint8 (H, W, 3): the pixels of PIL's ``Image.open(f).convert("RGB")``."""
    # PIL decodes JPEG with libjpeg's accurate integer IDCT; TF's default DCT is the fast one,
    # ~1 level off on average (up to 17) — INTEGER_ACCURATE is bit-identical to PIL.
    img = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    return tf.ensure_shape(img, [None, None, 3])


def _resize_crop(x, size, method, antialias):
    """Resize the shorter side to `size` and centre-crop, with PIL's uint8 arithmetic.

    x: float32 (B, H, W, C) holding 0..255 integer levels.
    Returns float32 (B, size, size, C) in [0, 1].
    """
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    new_h, new_w = _resized_hw(h, w, size)

    def store(y):
        # PIL keeps each pass in uint8: round, and clip the bicubic overshoot.
        return tf.clip_by_value(tf.floor(y + 0.5), 0.0, 255.0)

    # Two 1-D passes, width then height, in PIL's order (ImagingResample); with the per-pass
    # rounding this matches PIL to ±1 level on ~0.02% of values (PIL's fixed-point weights).
    x = store(tf.image.resize(x, tf.stack([h, new_w]), method=method, antialias=antialias))
    x = store(tf.image.resize(x, tf.stack([new_h, new_w]), method=method, antialias=antialias))
    top, left = _center_offset(new_h, size), _center_offset(new_w, size)
    x = x[:, top:top + size, left:left + size, :]
    x = tf.ensure_shape(x, [None, size, size, None])
    return x / 255.0


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIPImagePreprocessor(keras.layers.Layer):
    """Encoded images or pixel arrays → CLIP-normalised float32 (B, size, size, 3).

    Accepts:
      * tf.string (B,): encoded JPEG/PNG/GIF/BMP/WebP bytes; images may differ in size;
        decoded to the same RGB pixels as PIL's ``Image.open(f).convert("RGB")``.
      * uint8 (B, H, W, 3) (or 1 channel = grayscale): divided by 255.
      * float (B, H, W, 3): assumed in [0, 1].

    Every input is processed as PIL processes a uint8 image (float inputs are first rounded to
    8-bit levels, as OpenAI's PIL pipeline would store them), so bytes, uint8 and ``uint8 / 255``
    floats give identical outputs, equal to OpenAI's preprocessing on all but ~0.02% of values
    (those differ by one 8-bit level: PIL's fixed-point filter weights).

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
                    raise ValueError(_decode_error(inputs, e)) from None
                raise
        return self._preprocess(inputs)

    def _preprocess(self, x):
        size = self.image_size
        if x.dtype == tf.string:
            if x.shape.rank is not None and x.shape.rank != 1:
                raise ValueError("CLIPImagePreprocessor: expected a 1-D batch of encoded images "
                                 f"(tf.string of shape [B]), got rank {x.shape.rank} "
                                 f"(shape {x.shape})")

            def one(data):
                img = tf.cast(_decode(data), tf.float32)[None]  # (1, H, W, 3)
                return self._resize_crop(img)[0]

            x = tf.map_fn(one, x, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        else:
            if x.shape.rank is None:
                x = tf.ensure_shape(x, [None, None, None, None])
            if x.shape.rank != 4:
                raise ValueError("CLIPImagePreprocessor: expected images of rank 4 "
                                 f"[B, H, W, 3], got rank {x.shape.rank} (shape {x.shape})")
            channels = x.shape[-1]
            if channels is None:
                x = tf.ensure_shape(x, [None, None, None, 3])
            elif channels not in (1, 3):
                raise ValueError("CLIPImagePreprocessor: expected 3 channels (RGB) or 1 "
                                 f"(grayscale), got {channels} (shape {x.shape})")
            if x.dtype in _FLOAT_DTYPES:
                # [0, 1] floats → 8-bit levels, the uint8 image PIL would have been given.
                x = tf.clip_by_value(tf.round(tf.cast(x, tf.float32) * 255.0), 0.0, 255.0)
            elif x.dtype == tf.uint8:
                x = tf.cast(x, tf.float32)
            else:
                raise ValueError("CLIPImagePreprocessor: expected dtype uint8, float or string "
                                 f"(encoded images), got {x.dtype.name}")
            if channels == 1:
                x = tf.tile(x, [1, 1, 1, 3])
            x = self._resize_crop(x)
        mean = tf.constant(self.mean, tf.float32)
        std = tf.constant(self.std, tf.float32)
        return (x - mean) / std  # (B, size, size, 3)

    def _resize_crop(self, x):
        return _resize_crop(x, self.image_size, self.resize_method, self.antialias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, mean=self.mean, std=self.std,
                      resize_method=self.resize_method, antialias=self.antialias)
        return config


def _decode_error(data, error):
    """Eager-only: name the first input that does not decode, with the op's reason."""
    reason = error.message.strip().splitlines()[-1]
    for i, item in enumerate(data.numpy().reshape(-1)):
        try:
            _decode(tf.constant(item))
        except tf.errors.InvalidArgumentError as e:
            reason = e.message.split("}}")[-1].strip().splitlines()[0]
            return (f"CLIPImagePreprocessor: input {i} ({len(item)} bytes, starting "
                    f"{item[:8]!r}) is not a decodable image (expected JPEG, PNG, GIF, BMP "
                    f"or WebP bytes): {reason}")
    return f"CLIPImagePreprocessor: could not decode the input images: {reason}"


def preprocess_images(images, image_size=224, **kwargs):
    """Convenience wrapper: images → normalised float32 numpy (B, size, size, 3).

    `images` may be a uint8/float array (B, H, W, 3) or a single (H, W, 3) image, or a list of
    encoded bytes, file paths, PIL images or arrays of any sizes. Extra kwargs go to
    ``CLIPImagePreprocessor``.

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
        return np.concatenate([preprocess_images(_as_array(i), image_size, **kwargs)
                               for i in images])
    images = _as_array(images)
    if images.ndim == 3:  # one image (H, W, C)
        images = images[None]
    return np.asarray(layer(images))


def _as_array(image):
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image, without importing PIL
        return np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:  # grayscale (H, W)
        image = image[..., None]
    return image
