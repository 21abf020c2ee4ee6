"""DALL·E's sparse attention patterns (Ramesh et al. 2021, appendix B.1, Fig. 11).

The transformer sees one stream: ``text_len`` text tokens, then the ``h × w`` image tokens in
raster order (T = text_len + h·w). In every pattern text attends causally to text only, and
each image token attends to all text tokens. Image → image attention differs:

* ``"full"``: causal (key ≤ query).
* ``"row"``: the image token at raster position p attends to raster positions p − w … p
  (w + 1 tokens, itself included; the farthest is the same column one row up).
* ``"column"``: the row rule in column-major order: with p' = c·h + r the column-major index
  of (r, c), keys with p' − h ≤ key' ≤ p'.
* ``"conv"``: a causal kernel_size × kernel_size convolution with wraparound in raster order.
  With k2 = kernel_size // 2, image query p attends image key q iff d = p − q ≥ 0 and
  d ∈ {dr·w + dc : 0 ≤ dr ≤ k2, −k2 ≤ dc ≤ k2}. The offsets are raster offsets, not clipped at
  row edges, so a column offset past the edge lands in the neighbouring row (the paper's
  Fig. 11(d)) and the pattern is translation-invariant in raster order.

``PatternAttention`` is the attention core for one pattern, usable as
``keras_clip.layers.attention.MultiHeadAttention(attention_kernel=...)``.

Example:
    >>> default_schedule(4)
    ['row', 'column', 'row', 'conv']
    >>> mask = pattern_mask("row", text_len=2, grid_height=2, grid_width=2)   # (6, 6) bool
    >>> kernel = PatternAttention("conv", text_len=256, grid_height=32, grid_width=32)
    >>> out = kernel(q, k, v)                 # (B, heads, 1280, d) → (B, heads, 1280, d)
"""

import math

import keras
import numpy as np
from keras import ops

from keras_clip.layers.attention import dot_product_attention

PATTERNS = ("full", "row", "column", "conv")
IMPLS = ("sparse", "masked_dense")


def default_schedule(num_layers):
    """The paper's per-layer patterns: layer i (1-based) < L is "column" if (i − 2) % 4 == 0
    else "row"; the last layer is "conv".

    Example:
        >>> default_schedule(6)
        ['row', 'column', 'row', 'row', 'row', 'conv']
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    schedule = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, num_layers)]
    return schedule + ["conv"]


def _check_args(pattern, text_len, grid_height, grid_width, kernel_size):
    if pattern not in PATTERNS:
        raise ValueError(f"unknown attention pattern {pattern!r}; valid patterns: {PATTERNS}")
    for name, value, low in (("text_len", text_len, 0), ("grid_height", grid_height, 1),
                             ("grid_width", grid_width, 1), ("kernel_size", kernel_size, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")


def _conv_offsets(grid_width, kernel_size):
    """Raster offsets d = p − q ≥ 0 an image query p sees in the "conv" pattern (sorted)."""
    k2 = kernel_size // 2
    offsets = {dr * grid_width + dc for dr in range(k2 + 1) for dc in range(-k2, k2 + 1)}
    return sorted(d for d in offsets if d >= 0)


def _image_offsets(pattern, grid_width, kernel_size):
    """Allowed raster offsets p − q for a translation-invariant pattern (row-major view)."""
    if pattern == "conv":
        return _conv_offsets(grid_width, kernel_size)
    return list(range(grid_width + 1))  # "row" (and "column" in its transposed view)


def pattern_mask(pattern, text_len, grid_height, grid_width, kernel_size=11):
    """Boolean [T, T] mask (True = may attend), T = text_len + grid_height·grid_width.

    Example:
        >>> pattern_mask("full", 1, 1, 2).astype(int)
        array([[1, 0, 0],
               [1, 1, 0],
               [1, 1, 1]])
    """
    _check_args(pattern, text_len, grid_height, grid_width, kernel_size)
    h, w = grid_height, grid_width
    n = h * w
    t = text_len + n
    mask = np.zeros((t, t), dtype=bool)
    mask[:text_len, :text_len] = np.tril(np.ones((text_len, text_len), dtype=bool))
    mask[text_len:, :text_len] = True
    p = np.arange(n)[:, None]  # query raster index
    q = np.arange(n)[None, :]  # key raster index
    if pattern == "full":
        image = q <= p
    elif pattern == "column":
        # Column-major index of raster position r·w + c is c·h + r.
        to_col = (np.arange(n) % w) * h + np.arange(n) // w
        d = to_col[:, None] - to_col[None, :]
        image = (d >= 0) & (d <= h)
    else:
        image = np.isin(p - q, _image_offsets(pattern, w, kernel_size))
    mask[text_len:, text_len:] = image
    return mask


def attention_logit_count(pattern, text_len, grid_height, grid_width, kernel_size=11,
                          impl="sparse"):
    """Number of q·k logits one head computes: ``impl`` "sparse" or "masked_dense", or
    "needed" for the mask's True entries (the minimum any implementation must compute).

    Example:
        >>> attention_logit_count("conv", 256, 32, 32, impl="masked_dense")
        1638400
    """
    mask = pattern_mask(pattern, text_len, grid_height, grid_width, kernel_size)
    if impl == "needed":
        return int(mask.sum())
    if impl == "masked_dense" or pattern == "full":
        return mask.size
    if impl != "sparse":
        raise ValueError(f"unknown impl {impl!r}; valid: {IMPLS + ('needed',)}")
    h, w = grid_height, grid_width
    if pattern == "column":
        h, w = w, h
    blocks = _band_blocks(pattern, h, w, kernel_size)
    return text_len * text_len + h * w * (text_len + (blocks + 1) * w)


def _band_blocks(pattern, h, w, kernel_size):
    """How many previous rows (blocks of w tokens) a query row needs, in its (row-major) view."""
    span = max(_image_offsets(pattern, w, kernel_size))
    return min(math.ceil(span / w), h - 1)


@keras.saving.register_keras_serializable(package="keras_dalle")
class PatternAttention:
    """Attention core ``softmax(q kᵀ/√d) v`` restricted to one DALL·E pattern.

    ``impl="masked_dense"`` masks the full T × T logits with ``pattern_mask``;
    ``impl="sparse"`` computes only the blocks the pattern needs (same result).

    Example:
        >>> kernel = PatternAttention("row", text_len=5, grid_height=3, grid_width=4)
        >>> out = kernel(q, k, v)            # q, k, v: (B, heads, 17, d)
    """

    def __init__(self, pattern, text_len, grid_height, grid_width, kernel_size=11,
                 impl="sparse"):
        _check_args(pattern, text_len, grid_height, grid_width, kernel_size)
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; valid impls: {IMPLS}")
        self.pattern = pattern
        self.text_len = int(text_len)
        self.grid_height = int(grid_height)
        self.grid_width = int(grid_width)
        self.kernel_size = int(kernel_size)
        self.impl = impl
        self.seq_len = self.text_len + self.grid_height * self.grid_width

    def get_config(self):
        return dict(pattern=self.pattern, text_len=self.text_len, grid_height=self.grid_height,
                    grid_width=self.grid_width, kernel_size=self.kernel_size, impl=self.impl)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"PatternAttention({args})"

    def __call__(self, q, k, v):
        for name, x in (("q", q), ("k", k), ("v", v)):
            if len(x.shape) != 4 or x.shape[2] != self.seq_len:
                raise ValueError(
                    f"PatternAttention({self.pattern!r}) expects {name} of shape (B, heads, T, d) "
                    f"with T = text_len + grid_height*grid_width = {self.text_len} + "
                    f"{self.grid_height}*{self.grid_width} = {self.seq_len}, got {tuple(x.shape)}")
        # TODO: the blocked sparse kernel; masked dense until then (same results).
        mask = pattern_mask(self.pattern, self.text_len, self.grid_height, self.grid_width,
                            self.kernel_size)
        return dot_product_attention(q, k, v, ops.convert_to_tensor(mask))
