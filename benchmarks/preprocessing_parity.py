"""Parity of CLIPImagePreprocessor (TF ops) with OpenAI's PIL/torchvision preprocessing.

Compares against a PIL-only copy of ``Resize(size, BICUBIC) → CenterCrop → ToTensor →
Normalize`` on the photos scikit-image ships, at 224 and 336, and prints mean/max absolute
differences in normalised units and in 0..255 pixel units. The JPEG rows feed the layer the
encoded file and OpenAI's pipeline the same file decoded by PIL. Other image modes (RGBA, LA,
P, 1, CMYK, GIF, WebP, 16-bit) are compared in tests/test_image_modes.py.

    .venv/bin/python benchmarks/preprocessing_parity.py                 # the table
    .venv/bin/python benchmarks/preprocessing_parity.py --speed         # ms per image, by mode
    # once: check that the PIL-only reference equals torchvision / open_clip exactly
    .venv/bin/python benchmarks/preprocessing_parity.py --dump-images /tmp/skimage_photos.npz
    .venv-ref/bin/python benchmarks/preprocessing_parity.py \
        --verify-torchvision /tmp/skimage_photos.npz
"""

import argparse
import io
import os
import sys

import numpy as np

MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)
SIZES = (224, 336)


def load_photos():
    """Every real photo scikit-image ships without a download (RGB, plus one grayscale)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),  # data.cat() is the same picture
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "motorcycle_left": data.stereo_motorcycle()[0],
        "hubble_deep_field": data.hubble_deep_field(),
        "immunohistochemistry": data.immunohistochemistry(),
        "retina": data.retina(),
        "camera (gray)": data.camera(),
    }


def resized_hw(h, w, size):
    # torchvision.transforms.functional._compute_resized_output_size for an int size.
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (new_long, size) if w <= h else (size, new_long)


def pil_reference(image, size):
    """OpenAI's pipeline with PIL only: uint8 (H, W[, 3]) → float32 (size, size, 3)."""
    from PIL import Image

    im = Image.fromarray(image).convert("RGB")
    new_h, new_w = resized_hw(im.height, im.width, size)
    im = im.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / np.float32(255)
    return (x - MEAN) / STD


def verify_torchvision(path):
    """Run in .venv-ref: PIL-only reference vs torchvision and open_clip transforms."""
    import open_clip
    import torch
    from PIL import Image
    from torchvision import transforms as T

    worst = 0.0
    with np.load(path) as photos:
        for name in photos.files:
            for size in SIZES:
                tv = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                                T.CenterCrop(size), T.ToTensor(),
                                T.Normalize(MEAN.tolist(), STD.tolist())])
                oc = open_clip.image_transform(size, is_train=False, mean=tuple(MEAN.tolist()),
                                               std=tuple(STD.tolist()))
                im = Image.fromarray(photos[name]).convert("RGB")
                ref = pil_reference(photos[name], size)
                with torch.no_grad():
                    a = tv(im).permute(1, 2, 0).numpy()
                    b = oc(im).permute(1, 2, 0).numpy()
                d_tv, d_oc = np.abs(a - ref).max(), np.abs(b - ref).max()
                worst = max(worst, d_tv, d_oc)
                print(f"{name:22s} {size}  max|torchvision-PIL| {d_tv:.2e}  "
                      f"max|open_clip-PIL| {d_oc:.2e}")
    print(f"worst {worst:.2e}:", "IDENTICAL" if worst == 0 else "DIFFERENT")
    return worst == 0


def naive_tf(image, size):
    """One 2-D tf.image.resize call (bicubic, antialias) in float: the obvious port."""
    import tensorflow as tf

    x = tf.convert_to_tensor(image)
    x = tf.image.grayscale_to_rgb(x[..., None]) if image.ndim == 2 else x
    new_h, new_w = resized_hw(image.shape[0], image.shape[1], size)
    x = tf.image.resize(tf.cast(x, tf.float32)[None] / 255.0, [new_h, new_w], "bicubic",
                        antialias=True)[0].numpy()
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return (x[top:top + size, left:left + size] - MEAN) / STD


def speed(repeats=5, batch=4):
    """Best-of-`repeats` time per image of the layer under tf.function, for a few modes."""
    import time

    import tensorflow as tf
    from PIL import Image
    from skimage import data

    from keras_clip.preprocessing import CLIPImagePreprocessor

    def encode(image, fmt, **options):
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        return buf.getvalue()

    photo = Image.fromarray(data.astronaut()).resize((640, 480))
    cases = {
        "RGB JPEG 640x480": encode(photo, "JPEG", quality=90),
        "RGB JPEG 4000x3000": encode(photo.resize((4000, 3000)), "JPEG", quality=90),
        "RGBA PNG 640x480": encode(photo.convert("RGBA"), "PNG"),
        "P PNG 640x480": encode(photo.quantize(256), "PNG"),
        "CMYK JPEG 640x480": encode(photo.convert("CMYK"), "JPEG"),
    }
    layer = CLIPImagePreprocessor()
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None], tf.string)])
    start = time.perf_counter()
    fn(tf.constant([cases["RGB JPEG 640x480"]]))
    print(f"trace + first call: {time.perf_counter() - start:.2f} s")
    for name, item in cases.items():
        images = tf.constant([item] * batch)
        fn(images)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn(images)
            best = min(best, (time.perf_counter() - start) / batch)
        print(f"{name:20s} {best * 1000:8.1f} ms per image (best of {repeats}, batches of {batch})")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump-images", metavar="NPZ", help="save the photos and exit")
    parser.add_argument("--speed", action="store_true", help="time the layer per image mode")
    parser.add_argument("--verify-torchvision", metavar="NPZ",
                        help="(in .venv-ref) check the PIL-only reference against torchvision")
    args = parser.parse_args(argv)
    if args.verify_torchvision:
        return 0 if verify_torchvision(args.verify_torchvision) else 1
    if args.speed:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return speed()
    photos = load_photos()
    if args.dump_images:
        np.savez(args.dump_images, **photos)
        print(f"wrote {len(photos)} photos to {args.dump_images}")
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    from keras_clip.preprocessing import CLIPImagePreprocessor

    layers = {s: {aa: CLIPImagePreprocessor(image_size=s, antialias=aa) for aa in (True, False)}
              for s in SIZES}

    def ours(layer, image, dtype):
        x = image[None, ..., None] if image.ndim == 2 else image[None]
        x = x if dtype == "uint8" else x.astype(np.float32) / 255.0
        return np.asarray(layer(x))[0]

    def jpeg_bytes(image):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    def pil_decoded(data):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def tf_default_decode(data, size):
        # tf.io.decode_image's default (fast) DCT, then our resize: what the layer avoids.
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)[None]
        return np.asarray(layers[size][True](pixels))[0]

    # name → (ours(image, jpeg, size), the image OpenAI's pipeline is given)
    variants = {
        "antialias=True  (default)":
            (lambda im, jpg, s: ours(layers[s][True], im, "uint8"), "array"),
        "antialias=True  float [0,1] in":
            (lambda im, jpg, s: ours(layers[s][True], im, "float"), "array"),
        "antialias=False":
            (lambda im, jpg, s: ours(layers[s][False], im, "uint8"), "array"),
        "naive 1-pass tf.image.resize": (lambda im, jpg, s: naive_tf(im, s), "array"),
        "JPEG q90 bytes (default)":
            (lambda im, jpg, s: np.asarray(layers[s][True](tf.constant([jpg])))[0], "jpeg"),
        "JPEG q90, tf default DCT": (lambda im, jpg, s: tf_default_decode(jpg, s), "jpeg"),
    }
    print(f"{'image':22s} {'HxW':>10s} {'size':>4s}  {'variant':30s} {'mean|d| norm':>12s} "
          f"{'max|d| norm':>11s} {'mean|d| px':>10s} {'max|d| px':>9s} {'% differ':>8s}")
    totals = {v: [] for v in variants}
    for name, image in photos.items():
        jpg = jpeg_bytes(image)
        for size in SIZES:
            refs = {"array": pil_reference(image, size),
                    "jpeg": pil_reference(pil_decoded(jpg), size)}
            for vname, (fn, ref_kind) in variants.items():
                d = np.abs(fn(image, jpg, size) - refs[ref_kind])
                px = d * STD * 255.0  # back to 0..255 levels, channel by channel
                differ = 100.0 * (px > 0.01).mean()
                totals[vname].append((d.mean(), d.max(), px.mean(), px.max(), differ))
                hw = f"{image.shape[0]}x{image.shape[1]}"
                print(f"{name:22s} {hw:>10s} {size:4d}  {vname:30s} {d.mean():12.6f} "
                      f"{d.max():11.4f} {px.mean():10.5f} {px.max():9.2f} {differ:8.3f}")
    print("\nsummary over all images and sizes "
          "(mean of means, max of maxes, % of values differing):")
    for vname, rows in totals.items():
        r = np.array(rows)
        print(f"  {vname:30s} mean|d| {r[:, 0].mean():.6f} norm = {r[:, 2].mean():.5f} px;  "
              f"max|d| {r[:, 1].max():.4f} norm = {r[:, 3].max():.2f} px;  "
              f"{r[:, 4].mean():.3f}% differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
