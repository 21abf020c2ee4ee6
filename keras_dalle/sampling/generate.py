"""Generate images from text with a trained DALL·E, its dVAE and (optionally) CLIP reranking.

    python -m keras_dalle.sampling.generate "a red circle above a blue square" --model dalle.keras \\
        --vae dvae.keras [--clip clip.keras --keep 4] --num-samples 16 --out grid.png

writes an image grid: one row per prompt, its samples best-first with their CLIP scores; PNG or
JPEG as the `--out` extension says (.png, .jpg, .jpeg; others are refused before sampling).

The library function is `keras_dalle.sampling.pipeline.generate` (also `DALLE.generate`).
"""

import argparse
import os
import tempfile

import numpy as np

from keras_clip.cli import DefaultsHelpFormatter, add_tf_logs_flag
from keras_dalle.sampling.models import add_sampling_options, check_top_k, load_models
from keras_dalle.sampling.pipeline import generate

__all__ = ["image_grid", "grid_format", "save_grid"]


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def image_grid(images, labels=None, scores=None, scale=2, pad=4):
    """A PIL image: one row per prompt of images [B, S, H, W, 3] in [0, 1], with captions."""
    from PIL import Image, ImageDraw

    images = np.asarray(images)
    b, s, h, w = images.shape[:4]
    tile_h, tile_w, text_h = h * scale, w * scale, 12
    row_h = tile_h + text_h + (text_h if labels is not None else 0) + pad
    canvas = Image.new("RGB", (s * (tile_w + pad) + pad, b * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(b):
        top = pad + i * row_h
        if labels is not None:
            draw.text((pad, top), str(labels[i])[:80], fill="black")
            top += text_h
        for j in range(s):
            tile = Image.fromarray(np.uint8(np.clip(images[i, j], 0, 1) * 255 + 0.5))
            left = pad + j * (tile_w + pad)
            canvas.paste(tile.resize((tile_w, tile_h), Image.NEAREST), (left, top))
            if scores is not None:
                draw.text((left, top + tile_h), f"{scores[i, j]:.1f}", fill="black")
    return canvas


def grid_format(path):
    """The PIL format for an output path's extension: "PNG" (.png) or "JPEG" (.jpg, .jpeg);
    ValueError for any other extension."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in _FORMATS:
        raise ValueError(f"the output path must end in .png, .jpg or .jpeg (the image format is "
                         f"taken from the extension), got {os.fspath(path)!r}")
    return _FORMATS[extension]


def save_grid(path, images, labels=None, scores=None, **kwargs):
    """Write `image_grid(...)` atomically (temporary file, then rename) as PNG or JPEG, as the
    extension of `path` says (`grid_format`), with the usual permissions (0o666 & ~umask)."""
    fmt = grid_format(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".grid-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        image_grid(images, labels, scores, **kwargs).save(
            tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 (as keras_clip.saving does)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_dalle.sampling.generate",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("prompts", nargs="+")
    p.add_argument("--model", required=True, help="trained DALLE (.keras)")
    p.add_argument("--vae", required=True, help="its DiscreteVAE (.keras)")
    p.add_argument("--clip", default=None, help="a CLIP (.keras) to rerank the samples")
    p.add_argument("--num-samples", type=int, default=16, help="samples per prompt")
    p.add_argument("--keep", type=int, default=None, help="best samples kept (needs --clip)")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default="grid.png", help="the grid image: .png, .jpg or .jpeg")
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    if os.path.splitext(args.out)[1].lower() not in _FORMATS:  # before loading or sampling
        p.error(f"--out must end in .png, .jpg or .jpeg (the image format is taken from the "
                f"extension), got {args.out!r}")
    if args.keep is not None and not 1 <= args.keep <= args.num_samples:
        p.error(f"--keep must be in [1, {args.num_samples}] (--num-samples), got {args.keep}")
    try:  # a missing file or a model of the wrong kind: a usage error naming it
        model, vae, clip = load_models(args.model, args.vae, args.clip)
    except (FileNotFoundError, TypeError, ValueError) as e:
        p.error(str(e))
    check_top_k(p, args.top_k, model)
    if args.keep is not None and clip is None:
        p.error("--keep needs --clip (samples are kept by CLIP score)")
    out = generate(model, args.prompts, vae=vae, num_samples=args.num_samples,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed, rerank=clip, keep=args.keep)
    save_grid(args.out, out["images"], args.prompts, out.get("scores"))
    for prompt, scores in zip(args.prompts, out.get("scores", [None] * len(args.prompts))):
        shown = "" if scores is None else " CLIP scores " + ", ".join(f"{s:.1f}" for s in scores)
        print(f"{prompt!r}:{shown}")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
