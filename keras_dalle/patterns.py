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
    """Allowed raster offsets p − q of the translation-invariant patterns "row" and "conv"."""
    if pattern == "conv":
        return _conv_offsets(grid_width, kernel_size)
    return list(range(grid_width + 1))


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
    if impl == "needed":
        return int(pattern_mask(pattern, text_len, grid_height, grid_width, kernel_size).sum())
    kernel = PatternAttention(pattern, text_len, grid_height, grid_width, kernel_size, impl=impl)
    if kernel.plan is None:  # dense
        return kernel.seq_len ** 2
    # Every (padded) position against the text keys, plus each piece on every block.
    s = kernel.plan.block
    length = -text_len % s + kernel.seq_len
    return length * text_len + len(kernel.plan.pieces) * length * s


class _BlockPlan:
    """How the sparse kernel covers the image → image mask: split the image tokens (in raster
    order, or column-major for "column") into blocks of ``block`` tokens; query block i meets
    key block i − j through one constant (block, block) mask per ``(j, mask)`` in ``pieces``.
    Block diagonals j whose entries are all masked are never computed."""

    def __init__(self, view_mask, block):
        n = view_mask.shape[0]
        blocks = n // block
        grid = view_mask.reshape(blocks, block, blocks, block).transpose(0, 2, 1, 3)
        self.block, self.pieces = block, []
        for j in range(blocks):
            diagonal = np.diagonal(grid, offset=-j, axis1=0, axis2=1)  # (block, block, blocks−j)
            if not diagonal.any():
                continue
            if not (diagonal == diagonal[..., :1]).all():
                raise ValueError(f"mask is not block-translation-invariant at block {block}")
            self.pieces.append((j, diagonal[..., 0].copy()))

    def cost(self, n, head_dim=64):
        """Logits computed, plus one (n, head_dim) copy of the queries per shifted piece."""
        blocks = n // self.block
        logits = sum((blocks - j) * self.block ** 2 for j, _ in self.pieces)
        return logits + n * head_dim * sum(j > 0 for j, _ in self.pieces)


def _make_plan(pattern, text_len, grid_height, grid_width, kernel_size):
    h, w = grid_height, grid_width
    image = pattern_mask(pattern, 0, h, w, kernel_size)
    if pattern == "column":
        view = np.arange(h * w).reshape(h, w).T.reshape(-1)  # raster index of each column-major slot
        image = image[np.ix_(view, view)]
        h, w = w, h
    # Candidate block sizes around one (view) row; a block size is usable when every block
    # diagonal of the mask is one constant block (always true for whole rows).
    plans = []
    for block in (2 * w, w, w // 2, w // 4, w // 8):
        if (block == w or block >= 4) and (h * w) % block == 0 and (block >= w or w % block == 0):
            try:
                plans.append(_BlockPlan(image, block))
            except ValueError:
                continue
    # Prefer blocks that tile the text too (no padding copies), then the cheapest.
    return min(plans, key=lambda plan: (text_len % plan.block != 0, plan.cost(h * w)))


@keras.saving.register_keras_serializable(package="keras_dalle")
class PatternAttention:
    """Attention core ``softmax(q kᵀ/√d) v`` restricted to one DALL·E pattern.

    ``impl="masked_dense"`` masks the full T × T logits with ``pattern_mask``.
    ``impl="sparse"`` computes the same result from only the blocks the pattern needs:

    * every query against the text keys (T × text_len; causal among the text queries);
    * the image, in raster order ("column": column-major, so its mask becomes a band too),
      cut into blocks of ``block`` tokens (a multiple or fraction of a row, chosen at
      construction: ``self.plan``); query block i meets key block i − j only for the few
      block offsets j where the mask has entries, each through ONE constant (block, block)
      mask shared by every block (the patterns are translation-invariant in that order);
    * one softmax over the text and block logits, normalised after the weighted sums, so
      no logits are concatenated; per offset j only the queries are shifted (one copy).

    "full" is causal dense attention in both impls.

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
        self.plan = None  # None: dense ("masked_dense", and "full" in both impls)
        if impl == "sparse" and pattern != "full":
            self.plan = _make_plan(pattern, self.text_len, self.grid_height, self.grid_width,
                                   self.kernel_size)

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
        if self.plan is None:
            # "full" is plain causal attention: nothing to skip beyond the causal half.
            mask = pattern_mask(self.pattern, self.text_len, self.grid_height, self.grid_width,
                                self.kernel_size)
            return dot_product_attention(q, k, v, ops.convert_to_tensor(mask))
        return self._sparse(q, k, v)

    def _sparse(self, q, k, v):
        tl, h, w = self.text_len, self.grid_height, self.grid_width
        pad = -tl % self.plan.block

        def to_view(x):
            # Text then the image in the plan's order, front-padded so the image starts on a
            # block boundary; a no-op (no copy) for "row" / "conv" with aligned text.
            if self.pattern != "column" and pad == 0:
                return x
            image = x[:, :, tl:]
            if self.pattern == "column":
                image = _transpose_grid(image, h, w)
            return ops.concatenate([ops.zeros_like(x[:, :, :pad]), x[:, :, :tl], image], axis=2)

        out = _blocked_attention(to_view(q), to_view(k), to_view(v), k[:, :, :tl], v[:, :, :tl],
                                 self.plan, pad, tl)  # (B, heads, pad + T, d)
        if self.pattern != "column" and pad == 0:
            return out
        image = out[:, :, pad + tl:]
        if self.pattern == "column":
            image = _transpose_grid(image, w, h)
        return ops.concatenate([out[:, :, pad:pad + tl], image], axis=2)  # (B, heads, T, d)


def _transpose_grid(x, h, w):
    """(B, heads, h·w, d) raster order of an h × w grid → (B, heads, w·h, d) column-major."""
    heads, d = x.shape[1], x.shape[3]
    x = ops.reshape(x, (-1, heads, h, w, d))
    x = ops.transpose(x, (0, 1, 3, 2, 4))  # (B, heads, w, h, d)
    return ops.reshape(x, (-1, heads, h * w, d))


def _shift_blocks(x, j, value=0.0):
    """Move block i to block i + j along axis 2 (a static shift; vacated blocks get ``value``)."""
    if j == 0:
        return x
    blocks = x.shape[2]
    widths = [[0, 0], [0, 0], [j, 0]] + [[0, 0]] * (len(x.shape) - 3)
    return ops.pad(x[:, :, :blocks - j], widths, constant_values=value)


def _unshift_blocks(x, j, value=0.0):
    """Move block i to block i − j along axis 2 (the inverse of ``_shift_blocks``)."""
    if j == 0:
        return x
    widths = [[0, 0], [0, 0], [0, j]] + [[0, 0]] * (len(x.shape) - 3)
    return ops.pad(x[:, :, j:], widths, constant_values=value)


def _blocked_attention(q, k, v, kt, vt, plan, pad, text_len):
    """The sparse core on the padded view sequence (``pad`` dummy tokens, the text, then the
    image in the plan's order): every query against the text keys (causal among text), image
    queries also against the plan's key blocks; one softmax over both, normalised after the
    weighted sums so no logits are concatenated. Returns (B, heads, pad + T, d)."""
    heads, t, d = q.shape[1], q.shape[2], q.shape[3]
    s = plan.block
    blocks = t // s
    first_image_block = (pad + text_len) // s
    scale = d ** -0.5

    def logits_f32(x):  # scale after the product: scaling q would copy it
        return ops.cast(x, "float32") * scale

    qb, kb, vb = (ops.reshape(x, (-1, heads, blocks, s, d)) for x in (q, k, v))  # (B, heads, blocks, s, d)
    # Piece j pairs key block m with query block m + j, indexed by m: only the queries move,
    # so one shifted copy of q per piece and none of k or v.
    logits = []
    for j, piece_mask in plan.pieces:
        lj = logits_f32(ops.einsum("bhmsd,bhmtd->bhmst", _unshift_blocks(qb, j), kb))  # (B, heads, blocks, s, s)
        key_is_image = np.arange(blocks) >= first_image_block
        query_exists = np.arange(blocks) + j < blocks
        mask = (key_is_image & query_exists)[:, None, None] & piece_mask  # (blocks, s, s)
        logits.append(ops.where(ops.convert_to_tensor(mask), lj, -1e30))
    text_mask = np.ones((t, text_len), dtype=bool)  # image (and padding) rows see all text
    text_mask[pad:pad + text_len] = np.tril(np.ones((text_len, text_len), dtype=bool))
    text = logits_f32(ops.einsum("bhnd,bhtd->bhnt", q, kt))  # (B, heads, pad + T, tl)
    text = ops.where(ops.convert_to_tensor(text_mask), text, -1e30)
    text = ops.reshape(text, (-1, heads, blocks, s, text_len))

    # Shift by the running max over all pieces (in query-block index); the shift cancels out of
    # the softmax, so it needs no gradient.
    maxima = [ops.max(text, axis=-1)] if text_len else []
    maxima += [_shift_blocks(ops.max(lj, axis=-1), j, -1e30) for (j, _), lj in zip(plan.pieces, logits)]
    shift = ops.stop_gradient(ops.max(ops.stack(maxima), axis=0))  # (B, heads, blocks, s)
    total = 0.0  # Σ exp: the softmax denominator, (B, heads, blocks, s)
    out = 0.0  # Σ exp · v in float32, (B, heads, blocks, s, d)
    for (j, _), lj in zip(plan.pieces, logits):
        ej = ops.exp(lj - _unshift_blocks(shift, j)[..., None])  # masked entries: exp(−1e30) = 0
        total = total + _shift_blocks(ops.sum(ej, axis=-1), j)
        oj = ops.einsum("bhmst,bhmtd->bhmsd", ops.cast(ej, v.dtype), vb)
        out = out + _shift_blocks(ops.cast(oj, "float32"), j)
    if text_len:
        et = ops.exp(text - shift[..., None])
        total = total + ops.sum(et, axis=-1)
        et = ops.reshape(ops.cast(et, v.dtype), (-1, heads, t, text_len))
        ot = ops.einsum("bhnt,bhtd->bhnd", et, vt)  # (B, heads, pad + T, d)
        out = out + ops.reshape(ops.cast(ot, "float32"), (-1, heads, blocks, s, d))
    out = ops.cast(out / total[..., None], v.dtype)
    return ops.reshape(out, (-1, heads, t, d))
