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
import tensorflow as tf
from keras import ops

from keras_clip.layers.attention import dot_product_attention

PATTERNS = ("full", "row", "column", "conv")
IMPLS = ("sparse", "masked_dense")
# Plan cost of one element of the key/value windows, in logits (a logit is a head_dim-long dot
# product); tuned with benchmarks/sparse_attention.py --blocks.
_WINDOW_COPY_COST = 4.0


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
    return text_len * kernel.seq_len + kernel.plan.logits(grid_height * grid_width)


class _WindowPlan:
    """Which image keys the sparse kernel computes: the image tokens (raster order; column-major
    for "column") are cut into query blocks of ``block`` tokens, and every query block i meets
    the same key offsets relative to its start (``offsets``: keys i·block + offset), the union
    over blocks of the offsets its mask rows use. The offsets come in ``pieces`` (start, length)
    — contiguous runs of at most ``block`` keys, so each is one slice of the (padded) keys —
    and ``mask`` (blocks, block, keys) holds the pattern on them (False off the grid)."""

    def __init__(self, view_mask, block, merge_gap=4):
        n = view_mask.shape[0]
        blocks = n // block
        queries, keys = np.nonzero(view_mask)
        runs = []  # [start, length] of offset runs; gaps up to merge_gap are computed too
        for offset in np.unique(keys - queries // block * block):
            if runs and offset - (runs[-1][0] + runs[-1][1]) <= merge_gap:
                runs[-1][1] = offset - runs[-1][0] + 1
            else:
                runs.append([offset, 1])
        self.block = block
        self.pieces = [(int(start + c), int(min(block, length - c)))
                       for start, length in runs for c in range(0, length, block)]
        self.offsets = np.concatenate([np.arange(a, a + size) for a, size in self.pieces])
        key_index = np.arange(blocks)[:, None] * block + self.offsets  # (blocks, keys)
        on_grid = (key_index >= 0) & (key_index < n)
        rows = np.arange(n).reshape(blocks, block)
        self.mask = on_grid[:, None] & view_mask[rows[:, :, None], np.clip(key_index, 0, n - 1)[:, None]]
        # Zero padding around the n image keys so that every piece's n-long slice is in range.
        self.front = max(0, -min(a for a, _ in self.pieces))
        self.back = max(0, max(a for a, _ in self.pieces))

    def logits(self, n):
        """Image × image logits computed for n image tokens."""
        return n * len(self.offsets)

    def cost(self, n, head_dim=64):
        """Logits, plus the key and value windows (keys / block copies of k and v) and their
        gradients, in logit units (a logit is a head_dim-long dot product)."""
        return self.logits(n) + _WINDOW_COPY_COST * n * head_dim * len(self.offsets) / self.block


def _make_plan(pattern, text_len, grid_height, grid_width, kernel_size, blocks=None):
    """The cheapest ``_WindowPlan`` (``blocks``: candidate block sizes, default around one row
    of the view)."""
    h, w = grid_height, grid_width
    image = pattern_mask(pattern, 0, h, w, kernel_size)
    if pattern == "column":
        view = np.arange(h * w).reshape(h, w).T.reshape(-1)  # raster index of each column-major slot
        image = image[np.ix_(view, view)]
        h, w = w, h
    candidates = blocks or sorted({b for b in (2 * w, w, w // 2, w // 4) if b >= min(w, 8)})
    plans = [_WindowPlan(image, b) for b in candidates if (h * w) % b == 0]
    if not plans:
        raise ValueError(f"no block size in {candidates} tiles the {h}x{w} grid")
    return min(plans, key=lambda plan: plan.cost(h * w))


@keras.saving.register_keras_serializable(package="keras_dalle")
class PatternAttention:
    """Attention core ``softmax(q kᵀ/√d) v`` restricted to one DALL·E pattern.

    ``impl="masked_dense"`` masks the full T × T logits with ``pattern_mask``.
    ``impl="sparse"`` computes the same result from only the blocks the pattern needs:

    * text queries against the text keys (causal), image queries against all text keys;
    * the image, in raster order ("column": column-major, so its mask becomes a band too),
      cut into blocks of ``block`` tokens (a multiple or fraction of a row, chosen at
      construction: ``self.plan``); query block i meets key block i − j only for the few
      block offsets j where the mask has entries, each through ONE constant (block, block)
      mask shared by every block (the patterns are translation-invariant in that order);
    * one softmax over all pieces with a custom gradient in the style of FlashAttention: the
      forward pass keeps only the output and each query's log-sum-exp, the backward pass
      recomputes the probabilities piece by piece, and the heads run one after the other
      (a loop), so peak memory holds one head's logits, not all of them.

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
        if self.pattern == "column":  # column-major image order: the column band becomes a row band
            q, k, v = (ops.concatenate([x[:, :, :tl], _transpose_grid(x[:, :, tl:], h, w)], axis=2)
                       for x in (q, k, v))
        out = _Core(self.plan, tl)(q, k, v)  # (B, heads, T, d)
        if self.pattern == "column":
            out = ops.concatenate([out[:, :, :tl], _transpose_grid(out[:, :, tl:], w, h)], axis=2)
        return out


def _transpose_grid(x, h, w):
    """(B, heads, h·w, d) raster order of an h × w grid → (B, heads, w·h, d) column-major."""
    heads, d = x.shape[1], x.shape[3]
    x = ops.reshape(x, (-1, heads, h, w, d))
    x = ops.transpose(x, (0, 1, 3, 2, 4))  # (B, heads, w, h, d)
    return ops.reshape(x, (-1, heads, h * w, d))


_NEG = -1e30  # masked logit: exp(_NEG − anything finite) is exactly 0 in float32


def _logits(a, b, scale):
    """a (..., m, d) · b (..., n, d)ᵀ in the inputs' dtype, scaled in float32: (..., m, n)."""
    return tf.cast(tf.matmul(a, b, transpose_b=True), tf.float32) * scale


def _pad_blocks(x, before, after, value=0.0):
    """Pad axis 2 (the block axis) of a (B, heads, blocks, ...) tensor."""
    widths = [[0, 0], [0, 0], [before, after]] + [[0, 0]] * (len(x.shape) - 3)
    return tf.pad(x, widths, constant_values=value)


class _Core:
    """The sparse core on (B, heads, T, d) tensors in view order (text, then the image in the
    plan's order), in the style of FlashAttention: the forward pass keeps only the output and
    each query's log-sum-exp; the backward pass recomputes the probabilities from them. So no
    (T × keys) probability tensor lives from the forward to the backward pass; and the heads
    run one after the other (a loop), so one head's logits are alive at a time.

    Three pieces share one softmax: text queries × text keys (causal), image queries × text
    keys, and image query blocks × their key windows (the plan's offsets, one matmul)."""

    def __init__(self, plan, text_len):
        self.plan, self.tl = plan, text_len
        self.text_mask = np.tril(np.ones((text_len, text_len), dtype=bool))

    def __call__(self, q, k, v):
        heads = q.shape[1]

        def per_head(fn, tensors, dtypes):
            """fn on each head (B, 1, T, …) in a loop, so that XLA runs the heads one after the
            other and reuses their temporaries; outputs (B, heads, T, …)."""
            def body(i):
                outs = fn(*(tf.gather(x, [i], axis=1) for x in tensors))
                return tuple(o[:, 0] for o in outs)

            outs = tf.map_fn(body, tf.range(heads), fn_output_signature=tuple(dtypes),
                             parallel_iterations=1)  # (heads, B, T, …)
            return [tf.transpose(o, [1, 0] + list(range(2, len(o.shape)))) for o in outs]

        @tf.custom_gradient
        def core(q, k, v):
            out, lse = per_head(self._forward, (q, k, v), (v.dtype, tf.float32))

            def grad(dout):
                return per_head(self._backward, (q, k, v, out, lse, dout),
                                (q.dtype, k.dtype, v.dtype))

            return out, grad

        return core(q, k, v)

    def _blocks(self, x):
        """(B, 1, n, …) image part → (B, 1, blocks, s, …)."""
        s = self.plan.block
        return tf.reshape(x, (-1, 1, x.shape[2] // s, s, *x.shape[3:]))

    def _windows(self, x):
        """Image keys or values (B, 1, n, d) → each query block's key window (B, 1, blocks, keys, d)."""
        plan, n, d = self.plan, x.shape[2], x.shape[3]
        padded = tf.pad(x, [[0, 0], [0, 0], [plan.front, plan.back], [0, 0]])
        return tf.concat([self._blocks(padded[:, :, plan.front + a:plan.front + a + n])[:, :, :, :size]
                          for a, size in plan.pieces], axis=3)

    def _unwindows(self, grad):
        """The transpose of ``_windows``: (B, 1, blocks, keys, d) → (B, 1, n, d), summing the
        contributions of every window a key is in."""
        plan, s, d = self.plan, self.plan.block, grad.shape[-1]
        n = grad.shape[2] * s
        length = plan.front + n + plan.back
        total = 0.0
        for (a, size), part in zip(plan.pieces, tf.split(grad, [p[1] for p in plan.pieces], axis=3)):
            part = tf.pad(part, [[0, 0]] * 3 + [[0, s - size], [0, 0]])  # (B, 1, blocks, s, d)
            start = plan.front + a
            total = total + tf.pad(tf.reshape(part, (-1, 1, n, d)),
                                   [[0, 0], [0, 0], [start, length - start - n], [0, 0]])
        return total[:, :, plan.front:plan.front + n]

    def _logits(self, q, k, scale):
        """Logits of the three pieces: text × text (B, 1, tl, tl; causal) and image × text
        (B, 1, n, tl), both None without text; image blocks × windows (B, 1, blocks, s, keys)."""
        tl = self.tl
        text = image_text = None
        if tl:
            text = tf.where(self.text_mask, _logits(q[:, :, :tl], k[:, :, :tl], scale), _NEG)
            image_text = _logits(q[:, :, tl:], k[:, :, :tl], scale)
        image = _logits(self._blocks(q[:, :, tl:]), self._windows(k[:, :, tl:]), scale)
        return text, image_text, tf.where(self.plan.mask, image, _NEG)

    def _forward(self, q, k, v):
        scale = q.shape[-1] ** -0.5
        tl, n = self.tl, q.shape[2] - self.tl
        text, image_text, image = self._logits(q, k, scale)
        outs, lses = [], []
        if tl:
            m = tf.reduce_max(text, -1, keepdims=True)
            e = tf.exp(text - m)
            total = tf.reduce_sum(e, -1, keepdims=True)
            outs.append(tf.cast(tf.matmul(tf.cast(e, v.dtype), v[:, :, :tl]), tf.float32) / total)
            lses.append(m[..., 0] + tf.math.log(total[..., 0]))
        # Image queries: one softmax over the text logits and the window logits.
        m = tf.reduce_max(image, -1)  # (B, 1, blocks, s)
        if tl:
            m = tf.maximum(m, self._blocks(tf.reduce_max(image_text, -1)))
        e = tf.exp(image - m[..., None])
        total = tf.reduce_sum(e, -1)
        out = tf.cast(tf.matmul(tf.cast(e, v.dtype), self._windows(v[:, :, tl:])), tf.float32)
        if tl:
            e = tf.exp(image_text - tf.reshape(m, (-1, 1, n, 1)))
            total += self._blocks(tf.reduce_sum(e, -1))
            out += self._blocks(tf.cast(tf.matmul(tf.cast(e, v.dtype), v[:, :, :tl]), tf.float32))
        outs.append(tf.reshape(out / total[..., None], (-1, 1, n, q.shape[3])))
        lses.append(tf.reshape(m + tf.math.log(total), (-1, 1, n)))
        return tf.cast(tf.concat(outs, axis=2), v.dtype), tf.concat(lses, axis=2)

    def _backward(self, q, k, v, out, lse, dout):
        scale = q.shape[-1] ** -0.5
        tl = self.tl
        dout = tf.cast(dout, v.dtype)
        # delta = rowsum(dO ∘ O), the softmax backward's per-query term: (B, 1, T)
        delta = tf.reduce_sum(tf.cast(dout, tf.float32) * tf.cast(out, tf.float32), -1)

        def piece(logits, lse_, delta_, dout_, q_, k_, v_):
            """One piece's (dq, dk, dv) contributions, float32."""
            p = tf.exp(logits - lse_[..., None])
            dv_ = tf.matmul(tf.cast(p, v.dtype), dout_, transpose_a=True)
            dp = tf.cast(tf.matmul(dout_, v_, transpose_b=True), tf.float32)
            ds = tf.cast(p * (dp - delta_[..., None]) * scale, q.dtype)
            return [tf.cast(x, tf.float32) for x in
                    (tf.matmul(ds, k_), tf.matmul(ds, q_, transpose_a=True), dv_)]

        text, image_text, image = self._logits(q, k, scale)
        t, i = slice(0, tl), slice(tl, None)  # text and image positions
        dqb, dkw, dvw = piece(image, self._blocks(lse[:, :, i]), self._blocks(delta[:, :, i]),
                              self._blocks(dout[:, :, i]), self._blocks(q[:, :, i]),
                              self._windows(k[:, :, i]), self._windows(v[:, :, i]))
        image_shape = (-1, 1, q.shape[2] - tl, q.shape[3])
        dq = [tf.reshape(dqb, image_shape)]
        dk, dv = [self._unwindows(dkw)], [self._unwindows(dvw)]
        if tl:
            dq_t, dk_t, dv_t = piece(text, lse[:, :, t], delta[:, :, t], dout[:, :, t],
                                     q[:, :, t], k[:, :, t], v[:, :, t])
            dq_i, dk_x, dv_x = piece(image_text, lse[:, :, i], delta[:, :, i], dout[:, :, i],
                                     q[:, :, i], k[:, :, t], v[:, :, t])
            dq = [dq_t, dq[0] + dq_i]
            dk, dv = [dk_t + dk_x] + dk, [dv_t + dv_x] + dv
        return [tf.cast(tf.concat(g, axis=2), like.dtype) for g, like in ((dq, q), (dk, k), (dv, v))]
