"""Prompt fidelity of a DALL·E trained on the built-in shapes: does each sample show what its
prompt asks for — the objects' colour, shape and size, and their relation — read from the pixels
(`keras_clip.data.shapes_reader.check_image`), before and after CLIP reranking.

    python -m keras_dalle.fidelity --model runs/demo/dalle.keras --vae runs/demo/dvae.keras \\
        --clip runs/demo/clip.keras [--splits seen heldout two-object] [--num-prompts 20] \\
        [--num-samples 80] [--group 8] [--seed 0] [--json fidelity.json]

prints a markdown table, one row per split: k/n samples correct, the rate and its Wilson 95%
interval, before reranking (every sample) and after (the best of each group of ``--group``
samples of a prompt by CLIP score, as a user who draws 8 and keeps CLIP's favourite would see).

Splits (prompts are the renderer's own captions, `fidelity_prompts`):

* "seen": single-object captions of colour–shape pairs seen in training ("val" split; 25 pairs ×
  2 sizes = 50 distinct captions);
* "heldout": single-object captions of the held-out pairs ("heldout" split; only 5 pairs ×
  2 sizes = 10 distinct captions exist: with more prompts each caption is used again, with its
  own samples);
* "two-object": two-object captions with a relation ("val" split: seen pairs).

The interval treats the samples as independent draws; samples of one prompt are correlated
(a prompt the model cannot draw fails all its samples), so with few prompts the interval is too
narrow — the per-prompt counts in the result show how the failures spread.

Example:
    >>> r = prompt_fidelity(dalle, vae, clip, num_prompts=20, num_samples=80)
    >>> r["splits"]["seen"]["before"]        # {"k": …, "n": 1600, "rate": …, "interval": [lo, hi]}
    >>> print(markdown_table(r))
"""

import argparse
import collections
import json
import math

import numpy as np

from keras_clip.cli import DefaultsHelpFormatter, add_tf_logs_flag
from keras_clip.data.shapes import generate_shapes
from keras_clip.data.shapes_reader import check_image
from keras_clip.model import CLIP
from keras_clip.saving import write_text_atomic
from keras_clip.validation import check_positive_int
from keras_dalle.sampling.models import add_sampling_options, check_top_k, load_models
from keras_dalle.sampling.pipeline import generate
from keras_dalle.sampling.rerank import clip_scores

__all__ = ["SPLITS", "wilson_interval", "fidelity_prompts", "prompt_fidelity", "markdown_table",
           "main"]

SPLITS = ("seen", "heldout", "two-object")
_SOURCE = {"seen": "val", "heldout": "heldout", "two-object": "val"}  # shapes split of the captions
_POOL = 1024  # captions searched for distinct prompts (one generation chunk of the renderer)


def wilson_interval(k, n, z=1.96):
    """Wilson score interval of a binomial rate k/n: ``(low, high)`` floats in [0, 1].

    ``z = 1.96`` gives the 95% interval (Wilson 1927; Agresti & Coull 1998 recommend it over the
    normal approximation for small n or rates near 0 or 1):
    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = k/n``.

    Raises:
        ValueError: n < 1, k outside [0, n] or not integers, or z <= 0.
    """
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], got {k}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def fidelity_prompts(split, num_prompts, seed=0):
    """``num_prompts`` captions of a fidelity split (see the module's doc), distinct ones first.

    The captions are the renderer's (`keras_clip.data.shapes.generate_shapes` of the split's
    shapes split with ``seed``), in the order they appear; when the split has fewer distinct
    captions than ``num_prompts`` ("heldout": 10), they are used again in the same order.

    Raises:
        ValueError: an unknown split or a ``num_prompts`` that is not an integer >= 1.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    num_prompts = check_positive_int("num_prompts", num_prompts)
    data = generate_shapes(_POOL, split=_SOURCE[split], image_size=16, seed=seed)
    two = split == "two-object"
    distinct = list(dict.fromkeys(
        caption for caption, attributes in zip(data["captions"], data["attributes"])
        if (len(attributes["objects"]) == 2) == two))
    return [distinct[i % len(distinct)] for i in range(num_prompts)]


def _count(hits):
    k, n = int(np.sum(hits)), int(np.size(hits))
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n, "interval": [low, high]}


def prompt_fidelity(model, vae, clip=None, splits=SPLITS, num_prompts=20, num_samples=80, group=8,
                    seed=0, chunk=4, progress=False, **sampling):
    """Share of samples that show what their prompt asks for, per split, before/after reranking.

    For each split, ``num_prompts`` prompts (`fidelity_prompts`) get ``num_samples`` samples each
    (`keras_dalle.sampling.pipeline.generate`, ``chunk`` prompts per call, decoded by ``vae``);
    every sample is checked with `keras_clip.data.shapes_reader.check_image` ("before"). With a
    ``clip``, each prompt's samples are split in consecutive groups of ``group`` and the sample
    with the highest CLIP score (`keras_dalle.sampling.rerank.clip_scores`) of each group is
    kept ("after": best of ``group``).

    Args:
        model: a `keras_dalle.DALLE` whose text vocabulary is CLIP's BPE.
        vae: its `keras_dalle.DiscreteVAE` (decodes samples to float images in [0, 1]).
        clip: a `keras_clip.CLIP` for reranking, or None (no "after").
        splits: names of ``SPLITS``.
        num_prompts, num_samples, group, chunk: integers >= 1; ``num_samples`` must be a
            multiple of ``group`` when reranking. A ``chunk`` dividing ``num_prompts`` keeps one
            compiled sampling loop.
        seed: the prompts' seed (`fidelity_prompts`) and the samples': chunk c of split s is
            sampled with seed ``seed + 1000·s + c·chunk``, s the split's index in ``SPLITS``
            (so a split's samples do not depend on which other splits are asked for).
        progress: a tqdm progress bar on stderr (when tqdm is installed).
        **sampling: passed to ``generate`` (temperature, top_k, top_p, use_cache).

    Returns:
        dict: ``"splits"``: {split: {"prompts": [str], "before": {"k", "n", "rate",
        "interval": [low, high]}, "after": the same or None, "per_prompt": [{"prompt", "before":
        [k, n], "after": [k, n] or None}], "errors": {kind: count} of the samples that failed
        (`check_image`'s "error")}}, and ``"num_prompts"``, ``"num_samples"``, ``"group"``,
        ``"seed"``, ``"sampling"``. n is ``num_prompts · num_samples`` before and
        ``num_prompts · num_samples / group`` after.

    Raises:
        ValueError: an unknown split, a count that is not an integer >= 1, or ``num_samples``
        not a multiple of ``group`` with a clip; TypeError: a clip that is not a CLIP (the
        model and vae are checked by ``generate``).
    """
    splits = list(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be names of {SPLITS}, got {splits!r}")
    num_prompts = check_positive_int("num_prompts", num_prompts)
    num_samples = check_positive_int("num_samples", num_samples)
    group = check_positive_int("group", group)
    chunk = check_positive_int("chunk", chunk)
    if clip is not None:
        if not isinstance(clip, CLIP):
            raise TypeError(f"clip must be a keras_clip.CLIP or None, got {type(clip).__name__}")
        if num_samples % group:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of group ({group}): "
                             "each prompt's samples are reranked in groups")
    prompts = {split: fidelity_prompts(split, num_prompts, seed) for split in splits}
    bar = _progress_bar(len(splits) * num_prompts, progress)
    out = {}
    for split in splits:
        before, after, errors = [], [], collections.Counter()
        for start in range(0, num_prompts, chunk):
            batch = prompts[split][start:start + chunk]
            images = np.asarray(generate(model, batch, vae=vae, num_samples=num_samples,
                                         seed=seed + 1000 * SPLITS.index(split) + start,
                                         **sampling)["images"])
            checks = [[check_image(images[i, j], prompt) for j in range(num_samples)]
                      for i, prompt in enumerate(batch)]
            correct = np.array([[c["correct"] for c in row] for row in checks], bool)
            errors.update(c["error"] for row in checks for c in row if not c["correct"])
            before.append(correct)
            if clip is not None:
                scores = clip_scores(clip, images.reshape((-1,) + images.shape[2:]),
                                     [p for p in batch for _ in range(num_samples)])
                scores = np.asarray(scores).reshape(len(batch), num_samples // group, group)
                best = np.arange(num_samples // group) * group + scores.argmax(axis=-1)
                after.append(np.take_along_axis(correct, best, axis=1))
            if bar is not None:
                bar.update(len(batch))
        before = np.concatenate(before)
        after = np.concatenate(after) if clip is not None else None
        out[split] = {
            "prompts": prompts[split],
            "before": _count(before),
            "after": _count(after) if after is not None else None,
            "per_prompt": [{"prompt": p, "before": [int(before[i].sum()), num_samples],
                            "after": (None if after is None
                                      else [int(after[i].sum()), num_samples // group])}
                           for i, p in enumerate(prompts[split])],
            "errors": dict(errors.most_common()),
        }
    if bar is not None:
        bar.close()
    return {"splits": out, "num_prompts": num_prompts, "num_samples": num_samples,
            "group": group, "seed": seed, "sampling": dict(sampling)}


def _progress_bar(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="prompts", unit="prompt")


def _cell(count):
    if count is None:
        return "—"
    low, high = count["interval"]
    return (f"{count['k']}/{count['n']} ({100 * count['rate']:.1f}%, "
            f"{100 * low:.1f}–{100 * high:.1f}%)")


def markdown_table(result):
    """The `prompt_fidelity` result as a markdown table (one row per split) and, below it, the
    kinds of failure before reranking."""
    group = result["group"]
    lines = ["| split | prompts × samples | before: k/n (rate, 95% CI) | "
             f"after best-of-{group}: k/n (rate, 95% CI) |", "|---|---|---|---|"]
    for split, r in result["splits"].items():
        distinct = len(set(r["prompts"]))
        prompts = f"{len(r['prompts'])}" + (f" ({distinct} distinct)"
                                             if distinct < len(r["prompts"]) else "")
        lines.append(f"| {split} | {prompts} × {result['num_samples']} | {_cell(r['before'])} | "
                     f"{_cell(r['after'])} |")
    lines.append("")
    for split, r in result["splits"].items():
        failures = ", ".join(f"{kind} {count}" for kind, count in r["errors"].items()) or "none"
        lines.append(f"{split} failures before reranking: {failures}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_dalle.fidelity",
        description="Prompt fidelity of a DALL·E trained on the built-in shapes: colour, shape, "
                    "size and relation read from the pixels, per split, before and after CLIP "
                    "reranking, with Wilson 95% intervals.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="the DALL·E .keras file")
    p.add_argument("--vae", required=True, help="its dVAE .keras file")
    p.add_argument("--clip", default=None, help="a CLIP .keras file for the best-of-group column")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                   help="the prompt sets to check")
    p.add_argument("--num-prompts", type=int, default=20, help="prompts per split")
    p.add_argument("--num-samples", type=int, default=80, help="samples per prompt")
    p.add_argument("--group", type=int, default=8,
                   help="rerank in groups of this many samples, keep the best of each")
    p.add_argument("--chunk", type=int, default=4, help="prompts per sampling call")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and the samples")
    add_sampling_options(p)
    p.add_argument("--json", default=None, help="also write the whole result here")
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    for name in ("num_prompts", "num_samples", "group", "chunk"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.clip and args.num_samples % args.group:
        p.error(f"--num-samples ({args.num_samples}) must be a multiple of --group ({args.group})")
    try:  # a missing file or a model of the wrong kind: a usage error naming it
        model, vae, clip = load_models(args.model, args.vae, args.clip)
    except (FileNotFoundError, TypeError, ValueError) as e:
        p.error(str(e))
    check_top_k(p, args.top_k, model)
    result = prompt_fidelity(model, vae, clip, splits=args.splits, num_prompts=args.num_prompts,
                             num_samples=args.num_samples, group=args.group, seed=args.seed,
                             chunk=args.chunk, progress=True, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p)
    print(markdown_table(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
