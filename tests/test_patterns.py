"""DALL·E sparse attention patterns: masks, the paper's schedule, and the sparse kernels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.layers.attention import MultiHeadAttention
from keras_dalle.transformer.patterns import (PATTERNS, PatternAttention, _make_plan, attention_logit_count,
                                  default_schedule, pattern_mask)

# (text_len, grid_height, grid_width, kernel_size): square and non-square grids, conv kernels
# 3 and 5 (kernel 5 on width 3 wraps over more than one row).
SHAPES = [(5, 3, 4, 3), (8, 4, 4, 5), (3, 4, 3, 5)]


def _picture(mask):
    return "\n".join("".join("x" if b else "." for b in row) for row in mask)


def test_default_schedule():
    assert default_schedule(1) == ["conv"]
    assert default_schedule(2) == ["row", "conv"]
    assert default_schedule(6) == ["row", "column", "row", "row", "row", "conv"]
    schedule = default_schedule(64)
    assert len(schedule) == 64 and schedule[-1] == "conv"
    assert [i + 1 for i, p in enumerate(schedule) if p == "column"] == list(range(2, 64, 4))
    with pytest.raises(ValueError, match="num_layers"):
        default_schedule(0)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("text_len,h,w,ks", SHAPES)
def test_text_rules_shared_by_all_patterns(pattern, text_len, h, w, ks):
    mask = pattern_mask(pattern, text_len, h, w, ks)
    t = text_len + h * w
    assert mask.shape == (t, t) and mask.dtype == bool
    np.testing.assert_array_equal(mask[:text_len, :text_len], np.tril(np.ones((text_len,) * 2)))
    assert not mask[:text_len, text_len:].any()  # text never sees the image
    assert mask[text_len:, :text_len].all()  # every image token sees all text
    assert not np.triu(mask, 1).any()  # causal overall
    assert np.diag(mask).all()  # everyone sees itself


def _image_mask(pattern, h, w, ks=11):
    return pattern_mask(pattern, 2, h, w, ks)[2:, 2:]


def test_full_is_causal():
    np.testing.assert_array_equal(_image_mask("full", 3, 4), np.tril(np.ones((12, 12), bool)))


@pytest.mark.parametrize("h,w", [(3, 4), (4, 3), (2, 5)])
def test_row_and_column_windows(h, w):
    row, column = _image_mask("row", h, w), _image_mask("column", h, w)
    for r in range(h):
        for c in range(w):
            for rk in range(h):
                for ck in range(w):
                    p, key = r * w + c, rk * w + ck
                    # Row: earlier in the own row, or the previous row from the same column on.
                    expected_row = (rk == r and ck <= c) or (rk == r - 1 and ck >= c)
                    # Column: the same rule with rows and columns swapped, then cut to the
                    # raster-causal part: above in the own column, or the left neighbour.
                    expected_col = (ck == c and rk <= r) or (ck == c - 1 and rk == r)
                    assert row[p, key] == expected_row, (r, c, rk, ck)
                    assert column[p, key] == expected_col, (r, c, rk, ck)
    assert row.sum(axis=1).max() == w + 1 and column.sum(axis=1).max() == h + 1
    # The band in column-major order before the causal cut: p' − h ≤ key' ≤ p'.
    col_major = (np.arange(h * w) % w) * h + np.arange(h * w) // w
    d = col_major[:, None] - col_major[None, :]
    band = (d >= 0) & (d <= h)
    np.testing.assert_array_equal(column, band & np.tril(np.ones_like(band)))
    assert (band & ~np.tril(np.ones_like(band))).any()  # the cut removes keys (r' > r, c − 1)


def test_conv_picture_4x4_kernel_3():
    # The paper's Fig. 11(d): raster offsets {0, 1} ∪ {w−1, w, w+1}; the w±1 offsets wrap
    # around the row edges (e.g. query 4 = (1, 0) sees key 0 and key 3 = (0, 3)).
    expected = """\
x...............
xx..............
.xx.............
x.xx............
xx.xx...........
xxx.xx..........
.xxx.xx.........
..xxx.xx........
...xxx.xx.......
....xxx.xx......
.....xxx.xx.....
......xxx.xx....
.......xxx.xx...
........xxx.xx..
.........xxx.xx.
..........xxx.xx"""
    assert _picture(_image_mask("conv", 4, 4, 3)) == expected


def test_conv_interior_is_a_causal_2d_window():
    h, w, ks = 6, 7, 5
    k2 = ks // 2
    mask = _image_mask("conv", h, w, ks)
    for r in range(h):
        for c in range(k2, w - k2):  # columns whose window does not reach a row edge
            expected = np.zeros((h, w), bool)
            expected[max(r - k2, 0):r, c - k2:c + k2 + 1] = True
            expected[r, c - k2:c + 1] = True
            np.testing.assert_array_equal(mask[r * w + c].reshape(h, w), expected)


def test_conv_is_translation_invariant_in_raster_order():
    mask = _image_mask("conv", 5, 6, 5)
    offsets = [np.flatnonzero(mask[p, :p + 1][::-1]) for p in range(30)]  # offsets p − key
    for p in range(14, 30):  # past the largest offset 2·6 + 2, so not clipped
        np.testing.assert_array_equal(offsets[p], offsets[-1])


def test_logit_counts():
    # The numbers: 32×32 grid, 256 text tokens.
    assert attention_logit_count("row", 256, 32, 32, impl="masked_dense") == 1280 ** 2
    assert attention_logit_count("conv", 256, 32, 32, impl="needed") == pytest.approx(0.36e6, rel=0.03)
    for pattern, fraction in (("row", 0.27), ("column", 0.27), ("conv", 0.35)):
        sparse = attention_logit_count(pattern, 256, 32, 32, impl="sparse")
        assert attention_logit_count(pattern, 256, 32, 32, impl="needed") <= sparse
        assert sparse < fraction * 1280 ** 2


def _qkv(t, seed=0, dtype="float32", batch=2, heads=3, dim=8):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(batch, heads, t, dim)), dtype=dtype) for _ in range(3)]


def _values_and_grads(kernels, q, k, v, jit):
    """Outputs and gradients of a fixed random linear functional, for each kernel."""
    def f(q, k, v):
        results = []
        for kernel in kernels:
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = kernel(q, k, v)
                weights = tf.sin(tf.reshape(tf.range(tf.size(out), dtype=out.dtype), tf.shape(out)))
                loss = tf.reduce_sum(out * weights)  # gradients depend on every output entry
            results.append((out, *tape.gradient(loss, [q, k, v])))
        return results

    if jit:
        f = tf.function(f, jit_compile=True)  # one compilation for both implementations
    return [[x.numpy() for x in r] for r in f(q, k, v)]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("text_len,h,w,ks", SHAPES)
def test_sparse_matches_masked_dense(pattern, text_len, h, w, ks):
    q, k, v = _qkv(text_len + h * w)
    kernels = [PatternAttention(pattern, text_len, h, w, ks, impl=impl)
               for impl in ("sparse", "masked_dense")]
    sparse, dense = _values_and_grads(kernels, q, k, v, jit=False)
    for name, a, b in zip(["out", "dq", "dk", "dv"], sparse, dense):
        np.testing.assert_allclose(a, b, atol=5e-6, rtol=0, err_msg=name)
        assert np.abs(b).max() > 1e-3  # a real signal, not two zero tensors


def test_sparse_matches_masked_dense_under_xla():
    # The sparse kernels of all patterns in one compiled function (XLA compiles are slow on a
    # busy CPU), against masked dense run eagerly.
    text_len, h, w, ks = SHAPES[0]
    q, k, v = _qkv(text_len + h * w)
    sparse = [PatternAttention(pattern, text_len, h, w, ks) for pattern in PATTERNS]
    dense = [PatternAttention(pattern, text_len, h, w, ks, impl="masked_dense") for pattern in PATTERNS]
    compiled = _values_and_grads(sparse, q, k, v, jit=True)
    expected = _values_and_grads(dense, q, k, v, jit=False)
    for pattern, got, want in zip(PATTERNS, compiled, expected):
        for name, a, b in zip(["out", "dq", "dk", "dv"], got, want):
            np.testing.assert_allclose(a, b, atol=5e-6, rtol=0, err_msg=f"{pattern} {name}")


@pytest.mark.parametrize("pattern", ["row", "column", "conv"])
def test_sparse_with_and_without_text(pattern):
    # text 0 (image only), 8 and 5 tokens on a 4×4 grid.
    for text_len in (0, 8, 5):
        q, k, v = _qkv(text_len + 16, seed=text_len, batch=1, heads=2)
        kernels = [PatternAttention(pattern, text_len, 4, 4, 3, impl=impl)
                   for impl in ("sparse", "masked_dense")]
        sparse, dense = _values_and_grads(kernels, q, k, v, jit=False)
        for a, b in zip(sparse, dense):
            np.testing.assert_allclose(a, b, atol=5e-6, rtol=0)


@pytest.mark.parametrize("patch", [(1, 8), (2, 8), (2, 4), (4, 4), (4, 8)])
@pytest.mark.parametrize("pattern", ["row", "column", "conv"])
def test_sparse_matches_masked_dense_for_every_query_block(pattern, patch):
    # Query blocks of part of a row, a whole row and 2-D patches on an 8 × 16 grid (16 × 8 in
    # the column view): key windows that straddle blocks and leave the grid, keys shared by
    # several windows (their gradients summed by the inverse gather), and masks that differ
    # between blocks.
    text_len, h, w, ks = 4, 8, 16, 5
    q, k, v = _qkv(text_len + h * w, seed=sum(patch), batch=1, heads=2)
    sparse = PatternAttention(pattern, text_len, h, w, ks)
    sparse.plan = _make_plan(pattern, text_len, h, w, ks, patches=[patch])
    assert sparse.plan.patch == patch
    dense = PatternAttention(pattern, text_len, h, w, ks, impl="masked_dense")
    got, want = _values_and_grads([sparse, dense], q, k, v, jit=False)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want):
        np.testing.assert_allclose(a, b, atol=5e-6, rtol=0, err_msg=name)


def test_sparse_plan_covers_exactly_the_mask():
    # The plan's (blocks, queries, keys) mask, scattered back to (query, key), is the pattern.
    h, w = 8, 16
    for pattern in ("row", "conv"):
        image = pattern_mask(pattern, 0, h, w, 5)
        for patch in ((1, 8), (1, 16), (2, 16), (4, 4)):
            plan = _make_plan(pattern, 0, h, w, 5, patches=[patch])
            rebuilt = np.zeros_like(image)
            for queries, keys, mask in zip(plan.queries, plan.key_index, plan.mask):
                on = (keys >= 0) & (keys < h * w)
                rebuilt[np.ix_(queries, keys[on])] |= mask[:, on]
            np.testing.assert_array_equal(rebuilt, image)
            assert plan.logits(h * w) < image.size  # and computes less than dense


def test_sparse_plan_inverse_sums_exactly_the_used_window_slots():
    # ``inverse`` turns the key gradients of the windows back into per-key sums by a gather:
    # it must equal a scatter-add of every slot some query of its block uses.
    h, w = 8, 16
    rng = np.random.default_rng(0)
    for pattern in ("row", "column", "conv"):
        for patch in ((1, 8), (2, 8), (4, 4)):
            plan = _make_plan(pattern, 0, h, w, 5, patches=[patch])
            grad = rng.normal(size=plan.key_index.shape)  # (blocks, keys)
            used = plan.mask.any(axis=1)
            expected = np.zeros(h * w)  # raster order, as the kernel's tensors
            np.add.at(expected, plan.order[plan.key_index[used]], grad[used])
            padded = np.append(grad.reshape(-1), 0.0)  # the zero row the table pads with
            np.testing.assert_allclose(padded[plan.inverse].sum(axis=1), expected, atol=1e-12)
            assert (plan.window_index == plan.order[np.clip(plan.key_index, 0, h * w - 1)]).all()
            # the query tables are inverse permutations of each other
            assert (plan.query_index.reshape(-1)[plan.query_position] == np.arange(h * w)).all()


def test_masked_dense_matches_reference_softmax():
    text_len, h, w, ks = 5, 3, 4, 3
    q, k, v = (x.numpy() for x in _qkv(text_len + h * w))
    mask = pattern_mask("conv", text_len, h, w, ks)
    logits = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (weights / weights.sum(-1, keepdims=True)) @ v
    for impl in ("sparse", "masked_dense"):
        out = PatternAttention("conv", text_len, h, w, ks, impl=impl)(q, k, v)
        np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("pattern", ["row", "column", "conv"])
def test_mixed_precision(pattern, dtype):
    text_len, h, w, ks = 5, 3, 4, 3
    q, k, v = _qkv(text_len + h * w)
    expected = PatternAttention(pattern, text_len, h, w, ks, impl="masked_dense")(q, k, v)
    low = [tf.cast(x, dtype) for x in (q, k, v)]
    for impl in ("sparse", "masked_dense"):
        out = PatternAttention(pattern, text_len, h, w, ks, impl=impl)(*low)
        assert out.dtype == dtype
        np.testing.assert_allclose(tf.cast(out, "float32"), expected,
                                   atol=0.05 if dtype == "bfloat16" else 0.01)


def test_mixed_precision_under_xla():
    q, k, v = (tf.cast(x, "bfloat16") for x in _qkv(5 + 12))
    kernel = PatternAttention("conv", 5, 3, 4, 3)
    out = tf.function(kernel.__call__, jit_compile=True)(q, k, v)
    assert out.dtype == "bfloat16"
    np.testing.assert_allclose(tf.cast(out, "float32"), tf.cast(kernel(q, k, v), "float32"), atol=0.02)


@pytest.mark.parametrize("impl", ["sparse", "masked_dense"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_causality(pattern, impl):
    text_len, h, w, ks = 4, 4, 5, 3
    t = text_len + h * w
    kernel = PatternAttention(pattern, text_len, h, w, ks, impl=impl)
    mask = pattern_mask(pattern, text_len, h, w, ks)
    q, k, v = _qkv(t)
    base = kernel(q, k, v).numpy()
    for pos in (2, text_len, text_len + 7, t - 3):
        bump = tf.one_hot(pos, t)[None, None, :, None] * 3.0
        out = kernel(q + bump, k + bump, v + bump).numpy()
        changed = np.abs(out - base).max(axis=(0, 1, 3)) > 1e-6  # per query position
        np.testing.assert_array_equal(changed[:pos], False)
        # Exactly the queries whose mask row includes pos (and pos itself) see the change.
        np.testing.assert_array_equal(changed, mask[:, pos])


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("text_len,h,w,ks", SHAPES + [(0, 3, 5, 3), (2, 5, 2, 7), (16, 8, 8, 5)])
def test_mask_rows_are_the_rows_of_the_mask(pattern, text_len, h, w, ks):
    """The rows cached decoding uses, computed from positions, equal ``pattern_mask``'s."""
    kernel = PatternAttention(pattern, text_len, h, w, kernel_size=ks, impl="masked_dense")
    mask, t = kernel.mask(), kernel.seq_len
    np.testing.assert_array_equal(kernel.mask_rows(0, t), mask)
    rows = tf.function(kernel.mask_rows, jit_compile=True)  # a symbolic start, under XLA
    for start, length in [(0, 1), (max(text_len - 1, 0), 3), (t - 1, 1), (t - 4, 4)]:
        np.testing.assert_array_equal(rows(tf.constant(start), length),
                                      mask[start:start + length])


@pytest.mark.parametrize("pattern", PATTERNS)
def test_config_round_trip(pattern):
    kernel = PatternAttention(pattern, 5, 3, 4, kernel_size=3, impl="masked_dense")
    config = kernel.get_config()
    assert config == dict(pattern=pattern, text_len=5, grid_height=3, grid_width=4,
                          kernel_size=3, impl="masked_dense")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(kernel))
    assert isinstance(clone, PatternAttention) and clone.get_config() == config


def test_multi_head_attention_round_trip():
    text_len, h, w = 5, 3, 4
    x = tf.random.stateless_normal((2, text_len + h * w, 16), seed=(1, 2))
    layer = MultiHeadAttention(4, attention_kernel=PatternAttention("conv", text_len, h, w, 3))
    expected = layer(x)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert clone.attention_kernel.get_config() == layer.attention_kernel.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), expected, atol=1e-6)


def test_trains_with_model_fit():
    text_len, h, w = 3, 2, 3
    t = text_len + h * w
    inputs = keras.Input((t, 8))
    y = MultiHeadAttention(2, attention_kernel=PatternAttention("column", text_len, h, w))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(y))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(4, t, 8)).astype("float32")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, np.ones((4, t, 1), "float32"), epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown attention pattern 'diagonal'.*'row'"):
        PatternAttention("diagonal", 5, 3, 4)
    with pytest.raises(ValueError, match=r"unknown impl 'flash'.*masked_dense"):
        PatternAttention("row", 5, 3, 4, impl="flash")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        PatternAttention("conv", 5, 3, 4, kernel_size=4)
    with pytest.raises(ValueError, match="grid_width must be an integer >= 1"):
        pattern_mask("row", 5, 3, 0)
    q, k, v = _qkv(16)  # 5 + 3·4 = 17 expected
    with pytest.raises(ValueError, match=r"T = text_len \+ grid_height\*grid_width = 5 \+ 3\*4 = 17"):
        PatternAttention("row", 5, 3, 4)(q, k, v)


@pytest.mark.parametrize("pattern", ["row", "column", "conv"])
def test_sparse_matches_masked_dense_at_dalle_size(pattern):
    # The paper's 256 text tokens + 32×32 grid (the block plans the benchmark uses), one tiny head.
    q, k, v = _qkv(256 + 32 * 32, batch=1, heads=1, dim=4)
    kernels = [PatternAttention(pattern, 256, 32, 32, impl=impl) for impl in ("sparse", "masked_dense")]
    sparse, dense = _values_and_grads(kernels, q, k, v, jit=False)
    for name, a, b in zip(["out", "dq", "dk", "dv"], sparse, dense):
        np.testing.assert_allclose(a, b, atol=5e-6, rtol=0, err_msg=name)
