"""Argument checks shared by CLIP, the dVAE and DALL·E: each raises a ValueError naming the
argument, what was expected and what was given."""

import copy

import numpy as np
import tensorflow as tf


def check_positive_int(name, value, minimum=1):
    """``int(value)`` if ``value`` is an integer (not a bool) >= ``minimum``; else ValueError.

    Example:
        >>> check_positive_int("vocab_size", 512, minimum=2)
        512
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def is_concrete(x):
    """True when the values of ``x`` can be read now (numpy, a Python number or sequence, or an
    eager tensor); False for symbolic tensors inside a ``tf.function``."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return True
    return tf.is_tensor(x) and tf.executing_eagerly() and hasattr(x, "numpy")


def lookup_preset(table, name, kind):
    """A deep copy of ``table[name]``; ValueError naming the ``kind`` presets that exist.

    Example:
        >>> lookup_preset({"tiny": {"width": 8}}, "tiny", "dVAE")
        {'width': 8}
    """
    if name not in table:
        raise ValueError(f"Unknown {kind} preset {name!r}. Available presets: {', '.join(table)}")
    return copy.deepcopy(table[name])
