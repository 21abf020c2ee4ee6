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
    """Which image keys the sparse kernel computes. The image grid (height × width in the view:
    raster order, or column-major for "column") is cut into query blocks of ``patch`` = (a, b):
    a rows × b columns (a = 1 and b = width: whole rows). Every block meets the same key
    offsets relative to its first query (its anchor): ``offsets``, the union over blocks of
    the offsets its mask rows use, so a block's keys are ``key_index`` = anchor + offsets and
    ``mask`` (blocks, a·b, keys) holds the pattern on them (False off the grid).

    The kernel works on the image in raster order and reaches the view through index tables
    (``order``: the raster index of each view slot; the identity except for "column"):
    ``query_index`` (blocks, a·b) gathers the blocks' queries and ``query_position`` (n) puts
    their results back; ``window_index`` (blocks, keys) gathers each block's keys
    (``key_index`` clipped to the grid: off-grid slots are masked) and ``inverse`` (n, cover)
    sums the key gradients back: for each key, the flat (block · keys + slot) positions it
    fills in the blocks that use it, padded with blocks · keys (a zero row) — a gather, not a
    scatter."""

    def __init__(self, view_mask, height, width, patch, order=None):
        a, b = patch
        n = height * width
        blocks = n // (a * b)
        order = np.arange(n) if order is None else np.asarray(order)
        # (blocks, a·b): the view index of each block's queries, row by row within the block
        self.queries = (np.arange(n).reshape(height // a, a, width // b, b)
                        .transpose(0, 2, 1, 3).reshape(blocks, a * b))
        anchors = self.queries[:, 0]
        block_of = np.empty(n, dtype=int)
        block_of[self.queries] = np.arange(blocks)[:, None]
        queries, keys = np.nonzero(view_mask)
        self.patch, self.block = (a, b), a * b
        self.order = order
        self.offsets = np.unique(keys - anchors[block_of[queries]])
        self.key_index = anchors[:, None] + self.offsets  # (blocks, keys), view indices
        on_grid = (self.key_index >= 0) & (self.key_index < n)
        clipped = np.clip(self.key_index, 0, n - 1)
        self.mask = on_grid[:, None] & view_mask[self.queries[:, :, None], clipped[:, None]]
        # Raster-order index tables for the kernel.
        self.window_index = order[clipped].astype(np.int32)
        self.query_index = order[self.queries].astype(np.int32)
        self.query_position = np.empty(n, dtype=np.int32)
        self.query_position[self.query_index.reshape(-1)] = np.arange(n)
        self.plain_blocks = a == 1 and (order == np.arange(n)).all()  # blocks = a reshape
        # inverse: the slots some query of the block uses, grouped by (raster) key
        width_k = len(self.offsets)
        block, slot = np.nonzero(self.mask.any(axis=1))
        key = order[self.key_index[block, slot]]
        by_key = np.argsort(key, kind="stable")
        key, flat = key[by_key], (block * width_k + slot)[by_key]
        counts = np.bincount(key, minlength=n)
        rank = np.arange(len(key)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.inverse = np.full((n, max(1, counts.max())), blocks * width_k, dtype=np.int32)
        self.inverse[key, rank] = flat

    def logits(self, n):
        """Image × image logits computed for n image tokens."""
        return n * len(self.offsets)

    def cost(self, n):
        """Estimated time in logits: the logits, weighted up for small query blocks (batched
        matmuls with few rows run slower on CPU). Fitted to benchmarks/sparse_attention.py
        --patches at 32×32 and 64×64, where it picks the fastest patch or one within the
        run-to-run noise."""
        return self.logits(n) * (1 + 16 / self.block)


def _make_plan(pattern, text_len, grid_height, grid_width, kernel_size, patches=None):
    """The cheapest ``_WindowPlan`` (``patches``: candidate (rows, columns) query blocks;
    default: 1, 2, 4 or 8 rows × a whole, half, quarter or eighth row of the view)."""
    h, w = grid_height, grid_width
    image = pattern_mask(pattern, 0, h, w, kernel_size)
    view = None
    if pattern == "column":
        view = np.arange(h * w).reshape(h, w).T.reshape(-1)  # raster index of each column-major slot
        image = image[np.ix_(view, view)]
        h, w = w, h
    if patches is None:
        patches = {(a, b) for a in (1, 2, 4, 8) for b in (w, w // 2, w // 4, w // 8)
                   if b >= 4 and 16 <= a * b <= 128}
        patches = sorted(patches | {(1, w)})  # tiny grids: whole rows
    plans = [_WindowPlan(image, h, w, patch, view) for patch in patches
             if h % patch[0] == 0 and w % patch[1] == 0]
    if not plans:
        raise ValueError(f"no query block in {patches} tiles the {h}x{w} grid")
    return min(plans, key=lambda plan: plan.cost(h * w))


@keras.saving.register_keras_serializable(package="keras_dalle")
class PatternAttention:
    """Attention core ``softmax(q kᵀ/√d) v`` restricted to one DALL·E pattern.

    ``impl="masked_dense"`` masks the full T × T logits with ``pattern_mask``.
    ``impl="sparse"`` computes the same result from only the blocks the pattern needs:

    * text queries against the text keys (causal), image queries against all text keys;
    * the image queries, in raster order ("column": column-major, where its mask is a band
      too), cut into a × b patches of the grid (chosen at construction by a cost estimate:
      ``self.plan``); every patch meets one window of image keys — the union over patches of
      the key offsets their mask rows use — under a per-patch mask, as one matmul (the
      window's keys gathered with one index table, their gradients summed back with its
      inverse: gathers, no scatter);
    * one softmax over the pieces with a custom gradient in the style of FlashAttention: the
      forward pass keeps the output and each query's log-sum-exp, the backward pass
      recomputes the probabilities, and the heads run one after the other (a loop), so peak
      memory holds one head's logits.

    "full" is causal dense attention in both impls. For cached decoding (a
    `MultiHeadAttention` called with a cache) ``mask_rows(start, length)`` gives the mask rows
    of the query positions; ``mask()`` is the whole (T, T) mask as numpy.

    Example:
        >>> kernel = PatternAttention("row", text_len=5, grid_height=3, grid_width=4)
        >>> out = kernel(q, k, v)            # q, k, v: (B, heads, 17, d)
        >>> rows = kernel.mask_rows(9, 1)    # (1, 17) bool: what position 9 may attend to
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

    def mask(self):
        """This layer's pattern as a bool numpy array (T, T), True where a query (row) may
        attend to a key (column); T = text_len + grid_height·grid_width."""
        return pattern_mask(self.pattern, self.text_len, self.grid_height, self.grid_width,
                            self.kernel_size)

    def mask_rows(self, start, length):
        """Rows start … start+length−1 of ``mask()`` as a bool tensor (length, T), computed from
        the positions (no T × T constant): what cached decoding needs, since the cached
        `MultiHeadAttention` asks its kernel for the mask rows of its query positions (keras-hub's
        ``CachedMultiHeadAttention`` gets them from its decoder layer instead).

        Args:
            start: int or int32 scalar tensor, the first query's stream position.
            length: int, the number of query positions.

        Returns:
            bool (length, T), T = text_len + grid_height·grid_width; row i is ``mask()[start + i]``
            (rows past T are not checked here: `MultiHeadAttention` checks the cache index).

        Example:
            >>> PatternAttention("row", 2, 2, 2).mask_rows(3, 1).numpy().astype(int)
            array([[1, 1, 1, 1, 0, 0]])
        """
        n, h, w = self.text_len, self.grid_height, self.grid_width
        p = tf.cast(start, tf.int32) + tf.range(length, dtype=tf.int32)[:, None]  # (L, 1) queries
        q = tf.range(self.seq_len, dtype=tf.int32)[None, :]  # (1, T) keys
        i, j = p - n, q - n  # raster indices of image positions (negative for text)
        if self.pattern == "full":
            image = j <= i
        elif self.pattern == "row":
            image = (i - j >= 0) & (i - j <= w)
        elif self.pattern == "column":
            def column_major(x):  # raster r·w + c → c·h + r
                return (x % w) * h + x // w
            d = column_major(i) - column_major(j)  # (L, T)
            image = (d >= 0) & (d <= h) & (j <= i)
        else:  # conv: d = i − j ∈ {dr·w + dc : 0 ≤ dr ≤ k2, |dc| ≤ k2}, d ≥ 0
            k2 = self.kernel_size // 2
            d = i - j
            image = tf.zeros_like(d, dtype=tf.bool)
            for dr in range(k2 + 1):
                image |= tf.abs(d - dr * w) <= k2
            image &= d >= 0
        text_query = q <= p  # text attends causally, to text only (q ≤ p < n)
        image_query = (q < n) | image  # every text key, and the pattern's image keys
        return tf.where(p < n, text_query, image_query)  # (L, T)

    def __call__(self, q, k, v):
        for name, x in (("q", q), ("k", k), ("v", v)):
            if len(x.shape) != 4 or x.shape[2] != self.seq_len:
                raise ValueError(
                    f"PatternAttention({self.pattern!r}) expects {name} of shape (B, heads, T, d) "
                    f"with T = text_len + grid_height*grid_width = {self.text_len} + "
                    f"{self.grid_height}*{self.grid_width} = {self.seq_len}, got {tuple(x.shape)}")
        if self.plan is None:
            # "full" is plain causal attention: nothing to skip beyond the causal half.
            return dot_product_attention(q, k, v, ops.convert_to_tensor(self.mask()))
        return self._sparse(q, k, v)

    def _sparse(self, q, k, v):
        # "column" works in column-major image order, where its band is a row band: the
        # plan's index tables read and write the raster-order tensors in that order.
        return _Core(self.plan, self.text_len)(q, k, v)  # (B, heads, T, d)


_NEG = -1e30  # masked logit: exp(_NEG − anything finite) is exactly 0 in float32


def _logits(a, b, scale):
    """a (..., m, d) · b (..., n, d)ᵀ in the inputs' dtype, scaled in float32: (..., m, n)."""
    return tf.cast(tf.matmul(a, b, transpose_b=True), tf.float32) * scale


class _Core:
    """The sparse core on (B, heads, T, d) tensors, in the style of FlashAttention: the forward
    pass keeps the output and each query's log-sum-exp; the backward pass recomputes the
    probabilities from the log-sum-exp. The heads run one after the other in a loop, so one
    head's logits are alive at a time. Everything stays in raster order; the plan's index
    tables gather the query blocks and key windows of its view (column-major for "column").

    Two pieces share one softmax: every query × the text keys (one matmul, causal for the
    text queries) and the image query blocks × their key windows (the plan's offsets, one
    batched matmul)."""

    def __init__(self, plan, text_len):
        self.plan, self.tl = plan, text_len

    def __call__(self, q, k, v):
        heads = q.shape[1]

        def per_head(fn, tensors, dtypes):
            """fn on each head in a loop, so that XLA runs the heads one after the other and
            reuses their temporaries. ``tensors``: (B, heads, …); fn gets (B, 1, …) and its
            outputs come back as (B, heads, …)."""
            def body(i):
                outs = fn(*(tf.gather(x, [i], axis=1) for x in tensors))
                return tuple(o[:, 0] for o in outs)

            outs = tf.map_fn(body, tf.range(heads), fn_output_signature=tuple(dtypes),
                             parallel_iterations=1)  # (heads, B, …)
            return [tf.transpose(o, [1, 0] + list(range(2, len(o.shape)))) for o in outs]

        @tf.custom_gradient
        def core(q, k, v):
            out, lse = per_head(self._forward, (q, k, v), (v.dtype, tf.float32))

            def grad(dout):
                return per_head(self._backward, (q, k, v, out, lse, dout), (q.dtype, k.dtype, v.dtype))

            return out, grad

        return core(q, k, v)

    def _blocks(self, x):
        """(B, 1, n, …) image part, raster order → (B, 1, blocks, a·b, …) query blocks."""
        plan = self.plan
        if plan.plain_blocks:
            return tf.reshape(x, (-1, 1, *plan.query_index.shape, *x.shape[3:]))
        return tf.gather(x, plan.query_index, axis=2)

    def _unblocks(self, x):
        """The inverse of ``_blocks``: (B, 1, blocks, a·b, …) → (B, 1, n, …)."""
        plan = self.plan
        x = tf.reshape(x, (-1, 1, x.shape[2] * x.shape[3], *x.shape[4:]))
        return x if plan.plain_blocks else tf.gather(x, plan.query_position, axis=2)

    def _windows(self, x):
        """Image keys or values (B, 1, n, d) → each query block's key window (B, 1, blocks, keys, d)."""
        return tf.gather(x, self.plan.window_index, axis=2)

    def _unwindows(self, grad):
        """The transpose of ``_windows``: (B, 1, blocks, keys, d) → (B, 1, n, d),
        summing the contributions of every window a key is in."""
        plan = self.plan
        flat = tf.reshape(grad, (-1, 1, grad.shape[2] * grad.shape[3], grad.shape[4]))
        flat = tf.pad(flat, [[0, 0], [0, 0], [0, 1], [0, 0]])  # the zero row ``inverse`` pads with
        return tf.reduce_sum(tf.gather(flat, plan.inverse, axis=2), axis=3)  # (B, 1, n, cover, d) summed

    def _text_logits(self, q, k, scale):
        """Every query (B, 1, T, d) against the text keys: (B, 1, T, tl), masked. Query t may
        see text key j iff j ≤ t: causal for the text queries, all text for the image ones."""
        allowed = tf.range(q.shape[2])[:, None] >= tf.range(self.tl)[None, :]  # (T, tl)
        return tf.where(allowed, _logits(q, k[:, :, :self.tl], scale), _NEG)

    def _image_logits(self, qb, kw, scale):
        """Image query blocks (B, 1, blocks, a·b, d) × their key windows (B, 1, blocks, keys, d):
        (B, 1, blocks, a·b, keys), masked."""
        return tf.where(self.plan.mask, _logits(qb, kw, scale), _NEG)

    def _forward(self, q, k, v):
        """One head (B, 1, T, d), raster order → out (B, 1, T, d) and lse (B, 1, T)."""
        scale = q.shape[-1] ** -0.5
        tl = self.tl
        # The image queries' window logits, and every query against the text keys; one
        # softmax over both.
        image = self._image_logits(self._blocks(q[:, :, tl:]), self._windows(k[:, :, tl:]), scale)
        m = self._unblocks(tf.reduce_max(image, -1))  # (B, 1, n)
        if tl:
            text = self._text_logits(q, k, scale)  # (B, 1, T, tl)
            m_text = tf.reduce_max(text, -1)  # (B, 1, T)
            m = tf.concat([m_text[:, :, :tl], tf.maximum(m_text[:, :, tl:], m)], axis=2)  # (B, 1, T)
        e = tf.exp(image - self._blocks(m[:, :, tl:])[..., None])
        total = self._unblocks(tf.reduce_sum(e, -1))  # (B, 1, n)
        out = self._unblocks(tf.cast(tf.matmul(tf.cast(e, v.dtype), self._windows(v[:, :, tl:])),
                                     tf.float32))  # (B, 1, n, d)
        if tl:
            e = tf.exp(text - m[..., None])
            out = (tf.cast(tf.matmul(tf.cast(e, v.dtype), v[:, :, :tl]), tf.float32)
                   + tf.pad(out, [[0, 0], [0, 0], [tl, 0], [0, 0]]))  # (B, 1, T, d)
            total = tf.reduce_sum(e, -1) + tf.pad(total, [[0, 0], [0, 0], [tl, 0]])
        return tf.cast(out / total[..., None], v.dtype), m + tf.math.log(total)

    def _backward(self, q, k, v, out, lse, dout):
        scale = q.shape[-1] ** -0.5
        tl = self.tl
        dout = tf.cast(dout, v.dtype)
        # delta = rowsum(dO ∘ O), the softmax backward's per-query term: (B, 1, T)
        delta = tf.reduce_sum(tf.cast(dout, tf.float32) * tf.cast(out, tf.float32), -1)

        def piece(p, delta_, dout_, q_, k_, v_):
            """One piece's (dq, dk, dv) contributions from its probabilities p, float32."""
            dv_ = tf.matmul(tf.cast(p, v.dtype), dout_, transpose_a=True)
            dp = tf.cast(tf.matmul(dout_, v_, transpose_b=True), tf.float32)
            ds = tf.cast(p * (dp - delta_[..., None]) * scale, q.dtype)
            return [tf.cast(x, tf.float32) for x in
                    (tf.matmul(ds, k_), tf.matmul(ds, q_, transpose_a=True), dv_)]

        i = slice(tl, None)  # image positions
        qb, kw = self._blocks(q[:, :, i]), self._windows(k[:, :, i])
        p_image = tf.exp(self._image_logits(qb, kw, scale) - self._blocks(lse[:, :, i])[..., None])
        dqb, dkw, dvw = piece(p_image, self._blocks(delta[:, :, i]), self._blocks(dout[:, :, i]),
                              qb, kw, self._windows(v[:, :, i]))
        dq, dk, dv = self._unblocks(dqb), self._unwindows(dkw), self._unwindows(dvw)  # (B, 1, n, d)
        if tl:
            p_text = tf.exp(self._text_logits(q, k, scale) - lse[..., None])  # (B, 1, T, tl)
            dq_t, dk_t, dv_t = piece(p_text, delta, dout, q, k[:, :, :tl], v[:, :, :tl])
            dq = dq_t + tf.pad(dq, [[0, 0], [0, 0], [tl, 0], [0, 0]])
            dk, dv = tf.concat([dk_t, dk], axis=2), tf.concat([dv_t, dv], axis=2)
        return [tf.cast(g, like.dtype) for g, like in ((dq, q), (dk, k), (dv, v))]
