r"""WiSE-FT: weight-space ensembling of a zero-shot and a fine-tuned model.

    python -m keras_clip.wise_ft --zero-shot zs.keras --fine-tuned ft.keras --alpha 0.5 \
        --out wise.keras

Every weight becomes ``(1 - alpha) * zero_shot + alpha * fine_tuned`` (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022, eq. 1): ``alpha = 0`` is the zero-shot model,
``alpha = 1`` the fine-tuned one. The two models must have the same architecture: the same
class, the same configuration and the same weights (paired by path; same shapes and dtypes).
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


def _by_name(model):
    """``{name: variable}`` in ``model.weights`` order; a repeated name gets ``#k`` (its k-th
    repeat) so that every weight has a key."""
    out, seen = {}, {}
    for i, v in enumerate(model.weights):
        name = _name(v, i)
        k = seen[name] = seen.get(name, -1) + 1
        out[name if k == 0 else f"{name}#{k}"] = v
    return out


def _describe(variable):
    return f"{tuple(variable.shape)} {np.dtype(variable.dtype)}"


def check_same_architecture(zero_shot, fine_tuned, labels=None):
    """ValueError unless the two models can be interpolated weight by weight.

    Weights are matched by their path below the model (``visual/proj`` …), not by position.
    Checks, in order: the class; a weight only one model has (the zero-shot model's first such
    weight, else the fine-tuned model's — e.g. SigLIP's ``logit_bias`` when one model is a
    SigLIP and the other a CLIP); a weight of one name whose shape or dtype differs (the first
    in the zero-shot model's order); the configuration (``get_config()``; e.g. a different
    number of attention heads leaves every shape alike).

    Args:
        zero_shot, fine_tuned: Keras models.
        labels: how the messages name the two models, e.g. their file paths (default
            "zero-shot", "fine-tuned").
    """
    za, fa = labels if labels is not None else (None, None)
    zs = "the zero-shot model" + (f" ({za})" if za else "")
    ft = "the fine-tuned model" + (f" ({fa})" if fa else "")
    if type(zero_shot) is not type(fine_tuned):
        raise ValueError(f"WiSE-FT needs two models of one architecture: {zs} is a "
                         f"{type(zero_shot).__name__}, {ft} a {type(fine_tuned).__name__}")
    a, b = _by_name(zero_shot), _by_name(fine_tuned)
    for (mine, other, who, whom) in ((a, b, zs, ft), (b, a, ft, zs)):
        only = [k for k in mine if k not in other]
        if only:
            n = len(only) - 1
            more = f" (and {n} more weight{'s' if n > 1 else ''} only it has)" if n else ""
            raise ValueError(
                f"the models differ in architecture: {who} has a weight {only[0]!r} "
                f"{_describe(mine[only[0]])} that {whom} does not have{more}")
    for k, x in a.items():
        y = b[k]
        if (tuple(x.shape), np.dtype(x.dtype)) != (tuple(y.shape), np.dtype(y.dtype)):
            raise ValueError(f"the models differ in architecture at weight {k!r}: {zs} has "
                             f"{_describe(x)}, {ft} {_describe(y)}")
    ca, cb = _config(zero_shot), _config(fine_tuned)
    differing = sorted(k for k in set(ca) | set(cb) if ca.get(k, "<missing>") != cb.get(k, "<missing>"))
    if differing:
        k = differing[0]
        raise ValueError(f"the models' configurations differ in {differing}: e.g. {k!r} is "
                         f"{ca.get(k, '<missing>')!r} ({zs}) vs {cb.get(k, '<missing>')!r} "
                         f"({ft})")


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


def wise_ft(zero_shot, fine_tuned, alpha, labels=None):
    """A new model with weights ``(1 - alpha) * zero_shot + alpha * fine_tuned``.

    Args:
        zero_shot, fine_tuned: Keras models of one architecture (see
            :func:`check_same_architecture`; weights are paired by name); left unchanged.
        alpha: float in [0, 1]; 0 gives the zero-shot weights, 1 the fine-tuned weights.
        labels: how errors name the two models (e.g. their file paths).

    Returns:
        a model of the same class built from ``fine_tuned.get_config()`` (not compiled).

    Raises:
        ValueError: different architectures (naming the first differing weight or config key),
            alpha outside [0, 1].

    Example:
        >>> mixed = wise_ft(load_model("zs.keras"), load_model("ft.keras"), alpha=0.5)
    """
    alpha = _check_alpha(alpha)
    check_same_architecture(zero_shot, fine_tuned, labels)
    model = type(fine_tuned).from_config(fine_tuned.get_config())
    if len(model.weights) != len(fine_tuned.weights):
        raise ValueError(f"a {type(fine_tuned).__name__} rebuilt from its config has "
                         f"{len(model.weights)} weights, the fine-tuned model "
                         f"{len(fine_tuned.weights)}: WiSE-FT needs a model class that builds "
                         f"its weights in __init__ (as keras_clip.CLIP does)")
    a, b = _by_name(zero_shot), _by_name(fine_tuned)  # same names (checked); b's order
    model.set_weights(interpolate_weights([a[k].numpy() for k in b],
                                          [v.numpy() for v in b.values()], alpha))
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
        model = wise_ft(zero_shot, fine_tuned, args.alpha,
                        labels=(args.zero_shot, args.fine_tuned))
    except (FileNotFoundError, ValueError, TypeError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")  # one line naming the file / the difference
    save_model_atomic(model, args.out)
    print(f"wrote {args.out}: (1 - {args.alpha:g}) x {os.path.basename(args.zero_shot)} + "
          f"{args.alpha:g} x {os.path.basename(args.fine_tuned)}")
    return args.out


if __name__ == "__main__":
    main()
