"""DALL·E's sparse attention patterns (Ramesh et al. 2021, appendix B.1, Fig. 11).

The transformer sees one stream: ``text_len`` text tokens, then the ``h × w`` image tokens in
raster order (T = text_len + h·w). In every pattern text attends causally to text only, and
each image token attends to all text tokens. Image → image attention differs:

* ``"full"``: causal (key ≤ query).
* ``"row"``: the image token at raster position p attends to raster positions p − w … p
  (w + 1 tokens, itself included; the farthest is the same column one row up).
* ``"column"``: the row rule in column-major order, kept causal in raster order: with
  p' = c·h + r the column-major index of (r, c), keys with p' − h ≤ key' ≤ p' that also come
  no later than the query in raster order. That is the tokens above in the same column and the
  left neighbour (r, c − 1); the band's other keys — (r' > r, c − 1) — are later in the raster
  order the image is generated in, and attending them would leak future tokens.
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
    return list(range(grid_width + 1))  # "row" (and, within it, "column" in its transposed view)


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
        image = (d >= 0) & (d <= h) & (q <= p)
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
        if self.impl == "masked_dense" or self.pattern == "full":
            # "full" is plain causal attention: nothing to skip beyond the causal half.
            mask = pattern_mask(self.pattern, self.text_len, self.grid_height, self.grid_width,
                                self.kernel_size)
            return dot_product_attention(q, k, v, ops.convert_to_tensor(mask))
        return self._sparse(q, k, v)

    def _sparse(self, q, k, v):
        tl, h, w = self.text_len, self.grid_height, self.grid_width
        q = q * ops.cast(q.shape[-1] ** -0.5, q.dtype)
        qi, ki, vi = q[:, :, tl:], k[:, :, tl:], v[:, :, tl:]  # (B, heads, h·w, d)
        kt, vt = k[:, :, :tl], v[:, :, :tl]  # (B, heads, tl, d)
        if self.pattern == "column":
            # Column-major order turns the column pattern into the row pattern with h ↔ w.
            qi, ki, vi = (_transpose_grid(x, h, w) for x in (qi, ki, vi))
            h, w = w, h
        out = _band_attention(qi, ki, vi, kt, vt, h, w, self._band_mask(h, w),
                              _band_blocks(self.pattern, h, w, self.kernel_size))
        if self.pattern == "column":
            out = _transpose_grid(out, h, w)
        if tl == 0:
            return out
        text_mask = ops.convert_to_tensor(np.tril(np.ones((tl, tl), dtype=bool)))
        out_text = _dense_core(q[:, :, :tl], kt, vt, text_mask)  # (B, heads, tl, d)
        return ops.concatenate([out_text, out], axis=2)

    def _band_mask(self, h, w):
        """Constant (h, w, text_len + (nb + 1)·w) mask of the joint text + local-block logits,
        in the kernel's view of the image (column-major for "column": h, w already swapped).

        Query (r, c) of row block r sees key (j, c') of the gathered blocks r − nb … r (j = 0 is
        block r − nb) iff ``pattern_mask`` allows it; keys of blocks before the first are padding.
        """
        nb = _band_blocks(self.pattern, h, w, self.kernel_size)
        image = pattern_mask(self.pattern, 0, self.grid_height, self.grid_width, self.kernel_size)
        if self.pattern == "column":  # reorder rows and columns of the mask to column-major
            order = np.arange(h * w).reshape(w, h).T.reshape(-1)  # raster index of each view index
            image = image[np.ix_(order, order)]
        query = np.arange(h * w).reshape(h, w, 1)
        key = (np.arange(h)[:, None, None] - nb) * w + np.arange((nb + 1) * w)  # (h, 1, (nb+1)·w)
        key = np.broadcast_to(key, (h, w, (nb + 1) * w))
        local = (key >= 0) & image[query, np.maximum(key, 0)]
        # Every key the pattern allows must lie in the gathered blocks.
        assert local.sum() == image.sum(), "band too narrow for the pattern"
        text = np.ones((h, w, self.text_len), dtype=bool)
        return ops.convert_to_tensor(np.concatenate([text, local], axis=-1))


def _dense_core(q_scaled, k, v, mask):
    """``dot_product_attention`` for already-scaled queries."""
    logits = ops.cast(ops.einsum("bhqd,bhkd->bhqk", q_scaled, k), "float32")
    logits = ops.where(mask, logits, ops.full_like(logits, -1e30))
    weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
    return ops.einsum("bhqk,bhkd->bhqd", weights, v)


def _transpose_grid(x, h, w):
    """(B, heads, h·w, d) raster order → (B, heads, w·h, d) column-major order."""
    heads, d = x.shape[1], x.shape[3]
    x = ops.reshape(x, (-1, heads, h, w, d))
    x = ops.transpose(x, (0, 1, 3, 2, 4))  # (B, heads, w, h, d)
    return ops.reshape(x, (-1, heads, h * w, d))


def _band_attention(qi, ki, vi, kt, vt, h, w, mask, nb):
    """Image queries against all text keys and the image keys of their own row block and the
    nb row blocks before it (one joint softmax); ``qi`` already scaled."""
    heads, d = qi.shape[1], qi.shape[3]
    tl = kt.shape[2]
    qb = ops.reshape(qi, (-1, heads, h, w, d))  # (B, heads, h, w, d)

    def padded_blocks(x):
        # Blocks r − nb … r for every row r are slices of the block tensor padded in front.
        x = ops.reshape(x, (-1, heads, h, w, d))
        return ops.pad(x, [[0, 0], [0, 0], [nb, 0], [0, 0], [0, 0]])  # (B, heads, h+nb, w, d)

    kp, vp = padded_blocks(ki), padded_blocks(vi)
    logits = [ops.einsum("bhrqd,bhrkd->bhrqk", qb, kp[:, :, j:j + h]) for j in range(nb + 1)]
    if tl:
        text = ops.einsum("bhnd,bhtd->bhnt", qi, kt)  # (B, heads, h·w, tl)
        logits.insert(0, ops.reshape(text, (-1, heads, h, w, tl)))
    logits = ops.cast(ops.concatenate(logits, axis=-1), "float32")  # (B, heads, h, w, tl+(nb+1)w)
    logits = ops.where(mask, logits, ops.full_like(logits, -1e30))
    weights = ops.cast(ops.softmax(logits, axis=-1), vi.dtype)
    out = 0
    for j in range(nb + 1):
        wj = weights[..., tl + j * w:tl + (j + 1) * w]  # (B, heads, h, w, w)
        out = out + ops.einsum("bhrqk,bhrkd->bhrqd", wj, vp[:, :, j:j + h])
    out = ops.reshape(out, (-1, heads, h * w, d))  # (B, heads, h·w, d)
    if tl:
        text_weights = ops.reshape(weights[..., :tl], (-1, heads, h * w, tl))
        out = out + ops.einsum("bhnt,bhtd->bhnd", text_weights, vt)
    return out
