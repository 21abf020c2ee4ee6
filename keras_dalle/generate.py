"""Generate images from text with a trained DALL·E, its dVAE and (optionally) CLIP reranking.

    python -m keras_dalle.generate "a red circle above a blue square" --model dalle.keras \\
        --vae dvae.keras [--clip clip.keras --keep 4] --num-samples 16 --out grid.png

writes a PNG grid: one row per prompt, its samples best-first with their CLIP scores.

Example (Python):
    >>> out = generate(dalle, ["a red circle"], vae=vae, num_samples=16, rerank=clip, keep=4)
    >>> out["images"].shape, out["scores"].shape      # (1, 4, 64, 64, 3), (1, 4)
"""

import argparse
import os
import tempfile

import numpy as np

from keras_clip.text.tokenizer import tokenize
from keras_dalle.rerank import rerank_samples
from keras_dalle.sampling import sample_image_tokens

__all__ = ["generate", "image_grid", "save_grid"]


def generate(model, prompts, vae=None, num_samples=1, temperature=1.0, top_k=None, top_p=None,
             seed=0, image_prefix_tokens=None, use_cache=True, rerank=None, keep=None):
    """Sample images for prompts; see `keras_dalle.DALLE.generate`.

    Args:
        prompts: strings (tokenized with the CLIP BPE to ``model.text_len``) or int token ids
            [B, text_len].
        vae: a `DiscreteVAE` to decode the tokens into images (needed for reranking).
        rerank: a `keras_clip.CLIP`; with it the samples of each prompt are sorted by CLIP score
            and the best ``keep`` (default all) are returned.

    Returns:
        dict with "image_tokens" int32 [B, S, h, w], "images" float32 [B, S, H, W, 3] in [0, 1]
        (with a vae), and with rerank "scores" [B, S] and "order" [B, S] (indices into the
        original samples, best first); S = keep when reranking, else num_samples.
    """
    texts = None
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) and isinstance(prompts[0], str):
        texts = list(prompts)
        ids = tokenize(texts, context_length=model.text_len, truncate=True)
    else:
        ids = np.asarray(prompts)
    tokens = sample_image_tokens(model, ids, num_samples=num_samples, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed,
                                 image_prefix_tokens=image_prefix_tokens, use_cache=use_cache)
    out = {"image_tokens": tokens}
    if vae is not None:
        b, s, h, w = tokens.shape
        images = np.asarray(vae.decode(tokens.reshape(b * s, h, w)))
        out["images"] = images.reshape((b, s) + images.shape[1:])
    if rerank is not None:
        if vae is None:
            raise ValueError("reranking with CLIP needs images: pass vae= as well")
        if texts is None:
            raise ValueError("reranking with CLIP needs the prompts as strings, not token ids")
        order, scores = rerank_samples(rerank, out["images"], texts, keep or num_samples)
        out["order"], out["scores"] = order, scores
        out["image_tokens"] = np.take_along_axis(tokens, order[:, :, None, None], axis=1)
        out["images"] = np.take_along_axis(out["images"], order[:, :, None, None, None], axis=1)
    elif keep is not None:
        raise ValueError("keep= selects the best samples by CLIP score: pass rerank=clip_model")
    return out


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


def save_grid(path, images, labels=None, scores=None, **kwargs):
    """Write `image_grid(...)` as a PNG atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".grid-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        image_grid(images, labels, scores, **kwargs).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _load(path, what):
    import keras

    import keras_clip.model  # noqa: F401  (registers the classes)
    import keras_dalle.model  # noqa: F401
    import keras_dalle.vae  # noqa: F401
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} model file not found: {path}")
    return keras.saving.load_model(path, compile=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="+")
    p.add_argument("--model", required=True, help="trained DALLE (.keras)")
    p.add_argument("--vae", required=True, help="its DiscreteVAE (.keras)")
    p.add_argument("--clip", default=None, help="a CLIP (.keras) to rerank the samples")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--keep", type=int, default=None, help="best samples kept (needs --clip)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grid.png")
    args = p.parse_args(argv)
    model, vae = _load(args.model, "DALLE"), _load(args.vae, "dVAE")
    clip = _load(args.clip, "CLIP") if args.clip else None
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
