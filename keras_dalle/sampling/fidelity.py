"""Prompt fidelity of a DALL·E trained on the built-in shapes: does the picture have the colour
the prompt asks for? Measured from pixels (`keras_clip.data.shapes.dominant_colour`), before and
after CLIP reranking.

    python -m keras_dalle.sampling.fidelity --model runs/demo/dalle.keras --vae runs/demo/dvae.keras \\
        --clip runs/demo/clip.keras --num-prompts 10 --num-samples 16

Prompts are single-object captions of a shapes split ("heldout" by default: colour–shape pairs
never seen in training, e.g. "a large red circle"), so the prompt names exactly one colour. The
held-out split has 10 such captions (5 held-out colour–shape pairs × 2 sizes).

Example:
    >>> r = prompt_fidelity(dalle, vae, clip, num_prompts=10, num_samples=4)
    >>> r["before"], r["after"]       # shares in [0, 1]
"""

import argparse

import numpy as np

from keras_clip.cli import add_tf_logs_flag
from keras_clip.data.shapes import COLOURS, dominant_colour, generate_shapes
from keras_clip.model import CLIP
from keras_clip.saving import load_model
from keras_dalle.sampling.pipeline import generate
from keras_dalle.sampling.rerank import rerank_samples
from keras_dalle.transformer.model import DALLE
from keras_dalle.vae.model import DiscreteVAE

__all__ = ["prompt_fidelity", "fidelity_prompts"]


def fidelity_prompts(num_prompts, split="heldout", seed=0):
    """Up to ``num_prompts`` distinct single-object captions of ``split`` and their colours."""
    data = generate_shapes(max(200, 8 * num_prompts), split=split, seed=seed)
    prompts, colours = [], []
    for caption, attributes in zip(data["captions"], data["attributes"]):
        if len(attributes["objects"]) == 1 and caption not in prompts:
            prompts.append(caption)
            colours.append(attributes["objects"][0]["colour"])
        if len(prompts) == num_prompts:
            break
    return prompts, colours


def prompt_fidelity(model, vae, clip=None, num_prompts=10, num_samples=16, keep=1, split="heldout",
                    seed=0, chunk=8, **sampling):
    """Share of generated images whose dominant colour is the prompt's, before/after reranking.

    Returns a dict: "before" (all ``num_samples`` samples of every prompt), "after" (the best
    ``keep`` by CLIP score; None without ``clip``), "prompts", "colours", "chance" (1 / colours).
    """
    prompts, colours = fidelity_prompts(num_prompts, split, seed)
    hits_before, hits_after = [], []
    for start in range(0, len(prompts), chunk):
        batch, wanted = prompts[start:start + chunk], colours[start:start + chunk]
        images = generate(model, batch, vae=vae, num_samples=num_samples, seed=seed + start,
                          **sampling)["images"]  # [P, S, H, W, 3]
        for i, colour in enumerate(wanted):
            hits_before += [dominant_colour(img) == colour for img in images[i]]
        if clip is not None:
            order, _ = rerank_samples(clip, images, batch, keep)
            for i, colour in enumerate(wanted):
                hits_after += [dominant_colour(images[i, j]) == colour for j in order[i]]
    return {"before": float(np.mean(hits_before)),
            "after": float(np.mean(hits_after)) if clip is not None else None,
            "prompts": prompts, "colours": colours, "chance": 1.0 / len(COLOURS),
            "num_samples": num_samples, "keep": keep}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--vae", required=True)
    p.add_argument("--clip", default=None)
    p.add_argument("--num-prompts", type=int, default=10)
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--keep", type=int, default=1)
    p.add_argument("--split", default="heldout", choices=["train", "val", "heldout"])
    p.add_argument("--seed", type=int, default=0)
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    model, vae = load_model(args.model, DALLE), load_model(args.vae, DiscreteVAE)
    clip = load_model(args.clip, CLIP) if args.clip else None
    r = prompt_fidelity(model, vae, clip, args.num_prompts, args.num_samples, args.keep,
                        args.split, args.seed)
    print(f"{len(r['prompts'])} {args.split} prompts × {args.num_samples} samples; dominant "
          f"colour matches the prompt: {100 * r['before']:.1f}% of all samples"
          + ("" if r["after"] is None else
             f", {100 * r['after']:.1f}% of the best {args.keep} by CLIP score")
          + f" (chance {100 * r['chance']:.1f}%)")
    return r


if __name__ == "__main__":
    main()
