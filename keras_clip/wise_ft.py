r"""WiSE-FT: weight-space ensembling of a zero-shot and a fine-tuned model.

    python -m keras_clip.wise_ft --zero-shot zs.keras --fine-tuned ft.keras --alpha 0.5 \
        --out wise.keras

Every weight becomes ``(1 - alpha) * zero_shot + alpha * fine_tuned`` (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022, eq. 1): ``alpha = 0`` is the zero-shot model,
``alpha = 1`` the fine-tuned one. The two models must have the same architecture: the same
class, the same configuration and the same weights (paths and shapes, in order).
``python -m keras_clip.evaluate --wise-ft-zero-shot`` sweeps alpha.
"""

import argparse
import os

import numpy as np

from keras_clip.cli import add_tf_logs_flag

__all__ = ["check_same_architecture", "interpolate_weights", "wise_ft"]


def _name(variable, i):
    """The variable's path below its model (``clip/visual/proj`` → ``visual/proj``): two
    models of one architecture differ only in their own names."""
    path = getattr(variable, "path", None) or getattr(variable, "name", None)
    return path.split("/", 1)[-1] if path else f"weight {i}"


def check_same_architecture(zero_shot, fine_tuned):
    """ValueError unless the two models can be interpolated weight by weight.

    Checks, in order: the class; the weights (count, then each weight's path, shape and dtype in
    ``model.weights`` order — the message names the first that differs); the configuration
    (``get_config()``; e.g. a different number of attention heads leaves every shape alike).
    """
    if type(zero_shot) is not type(fine_tuned):
        raise ValueError(f"WiSE-FT needs two models of one architecture: the zero-shot model is a "
                         f"{type(zero_shot).__name__}, the fine-tuned one a "
                         f"{type(fine_tuned).__name__}")
    a, b = zero_shot.weights, fine_tuned.weights
    names_a = {_name(v, i) for i, v in enumerate(a)}
    names_b = {_name(v, i) for i, v in enumerate(b)}
    only = sorted(names_a - names_b), sorted(names_b - names_a)
    # e.g. SigLIP's logit_bias in one model only: said after the first differing position
    extra = "".join(f"; only the {who} model has {names[:3]}" + (" ..." if len(names) > 3 else "")
                    for who, names in zip(("zero-shot", "fine-tuned"), only) if names)
    for i, (x, y) in enumerate(zip(a, b)):
        got = [(_name(v, i), tuple(v.shape), str(np.dtype(v.dtype))) for v in (x, y)]
        if got[0] != got[1]:
            (na, sa, da), (nb, sb, db) = got
            raise ValueError(
                f"the models differ in architecture at weight {i}: zero-shot {na!r} {sa} {da} vs "
                f"fine-tuned {nb!r} {sb} {db}{extra}")
    if len(a) != len(b):
        longer, name = (a, "zero-shot") if len(a) > len(b) else (b, "fine-tuned")
        i = min(len(a), len(b))
        raise ValueError(
            f"the models differ in architecture at weight {i}: the zero-shot model has {len(a)} "
            f"weights, the fine-tuned one {len(b)}; the first extra weight is the {name} model's "
            f"{_name(longer[i], i)!r} {tuple(longer[i].shape)}")
    ca, cb = _config(zero_shot), _config(fine_tuned)
    differing = sorted(k for k in set(ca) | set(cb) if ca.get(k, "<missing>") != cb.get(k, "<missing>"))
    if differing:
        k = differing[0]
        raise ValueError(f"the models' configurations differ in {differing}: e.g. {k!r} is "
                         f"{ca.get(k, '<missing>')!r} (zero-shot) vs {cb.get(k, '<missing>')!r} "
                         f"(fine-tuned)")


def _config(model):
    config = dict(model.get_config())
    for k in ("name", "trainable", "dtype"):  # bookkeeping, not architecture
        config.pop(k, None)
    return config


def _check_alpha(alpha):
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = zero-shot, 1 = fine-tuned), got {alpha}")
    return alpha


def interpolate_weights(zero_shot_weights, fine_tuned_weights, alpha):
    """``(1 - alpha) * a + alpha * b`` for each pair of numpy arrays, computed in float64 and
    cast back to the arrays' dtype (so alpha 0 / 1 return a / b bit for bit, and alpha 0.5 the
    correctly rounded mean). Integer and boolean arrays are not averaged: they are taken from
    the zero-shot model for alpha < 0.5, from the fine-tuned one otherwise.

    Returns a list of numpy arrays. Raises ValueError for alpha outside [0, 1] or mismatched
    shapes / dtypes (naming the index)."""
    alpha = _check_alpha(alpha)
    out = []
    for i, (a, b) in enumerate(zip(zero_shot_weights, fine_tuned_weights, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"weight {i}: zero-shot {a.shape} {a.dtype} vs fine-tuned "
                             f"{b.shape} {b.dtype}")
        if not np.issubdtype(a.dtype, np.floating):
            out.append((a if alpha < 0.5 else b).copy())
            continue
        if alpha == 0.0:  # exact even where b holds inf / nan (0 * inf is nan)
            out.append(a.copy())
        elif alpha == 1.0:
            out.append(b.copy())
        else:
            mixed = (1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)
            out.append(mixed.astype(a.dtype))
    return out


def wise_ft(zero_shot, fine_tuned, alpha):
    """A new model with weights ``(1 - alpha) * zero_shot + alpha * fine_tuned``.

    Args:
        zero_shot, fine_tuned: Keras models of one architecture (see
            :func:`check_same_architecture`); left unchanged.
        alpha: float in [0, 1]; 0 gives the zero-shot weights, 1 the fine-tuned weights.

    Returns:
        a model of the same class built from ``fine_tuned.get_config()`` (not compiled).

    Raises:
        ValueError: different architectures (naming the first differing weight or config key),
            alpha outside [0, 1].

    Example:
        >>> mixed = wise_ft(load_model("zs.keras"), load_model("ft.keras"), alpha=0.5)
    """
    alpha = _check_alpha(alpha)
    check_same_architecture(zero_shot, fine_tuned)
    model = type(fine_tuned).from_config(fine_tuned.get_config())
    if len(model.weights) != len(fine_tuned.weights):
        raise ValueError(f"a {type(fine_tuned).__name__} rebuilt from its config has "
                         f"{len(model.weights)} weights, the fine-tuned model "
                         f"{len(fine_tuned.weights)}: WiSE-FT needs a model class that builds "
                         f"its weights in __init__ (as keras_clip.CLIP does)")
    model.set_weights(interpolate_weights([w.numpy() for w in zero_shot.weights],
                                          [w.numpy() for w in fine_tuned.weights], alpha))
    return model


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_clip.wise_ft",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zero-shot", required=True, help="the zero-shot model (.keras, or a checkpoint "
                   "file or folder keras_clip.load_pretrained reads)")
    p.add_argument("--fine-tuned", required=True, help="the fine-tuned model (.keras or a checkpoint)")
    p.add_argument("--alpha", type=float, required=True,
                   help="mixing coefficient in [0, 1]: 0 = zero-shot, 1 = fine-tuned")
    p.add_argument("--out", required=True, help="where to write the interpolated model (.keras)")
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if not args.out.endswith(".keras"):
        p.error(f"--out must end in .keras, got {args.out!r}")
    import keras_clip  # noqa: F401  (registers CLIP for loading)
    from keras_clip.checkpoints import load_clip
    from keras_clip.saving import save_model_atomic

    try:
        zero_shot = load_clip(args.zero_shot)
        fine_tuned = load_clip(args.fine_tuned)
        model = wise_ft(zero_shot, fine_tuned, args.alpha)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise SystemExit(f"wise_ft: error: {e}") from None
    save_model_atomic(model, args.out)
    print(f"wrote {args.out}: (1 - {args.alpha:g}) x {os.path.basename(args.zero_shot)} + "
          f"{args.alpha:g} x {os.path.basename(args.fine_tuned)}")
    return args.out


if __name__ == "__main__":
    main()
