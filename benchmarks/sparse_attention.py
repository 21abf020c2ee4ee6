"""DALL·E sparse attention: the blocked "sparse" kernels vs masked dense vs plain causal dense.

Times forward + backward (gradients w.r.t. q, k, v) of the attention core softmax(q kᵀ/√d) v,
all heads, each implementation compiled with XLA (tf.function(jit_compile=True)), and reads
each compiled program's peak memory from XLA's buffer assignment ("Total bytes used" of the
memory-usage report XLA dumps: parameters + outputs + the heap-simulated peak of temporaries).
Repetitions are interleaved across all cases and the median is reported, because the machine
is shared. Also times the whole MultiHeadAttention layer (projections included) at one size.

Example:
    .venv/bin/python benchmarks/sparse_attention.py                 # the BENCHMARKS.md table
    .venv/bin/python benchmarks/sparse_attention.py --grids 16 --reps 3
"""

import argparse
import glob
import os
import re
import sys
import tempfile
import time

DUMP_DIR = tempfile.mkdtemp(prefix="sparse_attention_xla_")
# XLA reads its flags once, at start-up: set them before TensorFlow is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP_DIR}").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_clip.layers.attention import MultiHeadAttention, dot_product_attention  # noqa: E402
from keras_dalle.transformer.patterns import PatternAttention, _make_plan, attention_logit_count  # noqa: E402


def core_case(name, kernel, q, k, v):
    """A compiled fwd+bwd step of ``kernel`` on fixed inputs; returns a no-argument callable."""
    cotangent = tf.random.stateless_normal(q.shape, seed=(7, 7))

    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = kernel(q, k, v)
        return tape.gradient(out, [q, k, v], output_gradients=cotangent)

    step.__name__ = name  # names the XLA module, to find its memory report
    compiled = tf.function(step, jit_compile=True)
    return lambda: compiled(q, k, v)


def layer_case(name, layer, x, mask=None):
    layer(x)  # build
    variables = layer.trainable_variables

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, attention_mask=mask)))
        return tape.gradient(loss, [x, *variables])

    step.__name__ = name
    compiled = tf.function(step, jit_compile=True)
    return lambda: compiled(x)


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def xla_bytes(name):
    """(peak bytes, temporary bytes) of the compiled module named after ``name``, from XLA's
    memory-usage report: the total counts parameters, outputs and the heap-simulated peak of
    the temporaries; the second number is that temporaries' peak alone."""
    reports = [path for path in glob.glob(os.path.join(DUMP_DIR, "*memory-usage-report.txt"))
               if re.search(rf"a_inference_{re.escape(name)}_\d+__", os.path.basename(path))]
    best = (float("nan"), float("nan"))
    for path in reports:
        with open(path) as f:
            text = f.read()
        total = int(re.search(r"Total bytes used: (\d+)", text).group(1))
        temps = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)] for m in re.finditer(
            r"allocation (\d+): size ([\d.]+)(B|KiB|MiB|GiB), preallocated-temp", text)}
        if not total <= best[0]:  # the largest module of that name (nan compares False)
            best = (total, sum(temps.values()))
    return best


def causal_dense(q, k, v):
    t = q.shape[2]
    return dot_product_attention(q, k, v, tf.constant(np.tril(np.ones((t, t), bool))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--patterns", nargs="+", default=["row", "column", "conv"])
    parser.add_argument("--text-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--kernel-size", type=int, default=11)
    parser.add_argument("--layer-grid", type=int, default=32, help="grid for the whole-layer rows (0: skip)")
    parser.add_argument("--layer-width", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--patches", nargs="*", default=[],
                        help="also time the sparse kernel with these forced query blocks, "
                             "ROWSxCOLS of the view, e.g. 1x32 4x8 (tuning)")
    args = parser.parse_args()

    cases = {}  # (grid, pattern, impl) -> callable
    block_plans = {}  # forced-block sparse cases -> their kernel
    for g in args.grids:
        t = args.text_len + g * g
        shape = (args.batch, args.heads, t, args.head_dim)
        q, k, v = (tf.random.stateless_normal(shape, seed=(g, i)) for i in range(3))
        cases[(g, "any", "causal_dense")] = core_case(f"core_{g}_causal", causal_dense, q, k, v)
        for pattern in args.patterns:
            for impl in ("sparse", "masked_dense"):
                kernel = PatternAttention(pattern, args.text_len, g, g, args.kernel_size, impl=impl)
                cases[(g, pattern, impl)] = core_case(f"core_{g}_{pattern}_{impl}", kernel, q, k, v)
            for patch in args.patches:
                kernel = PatternAttention(pattern, args.text_len, g, g, args.kernel_size)
                rows, cols = (int(x) for x in patch.split("x"))
                try:
                    kernel.plan = _make_plan(pattern, args.text_len, g, g, args.kernel_size,
                                             patches=[(rows, cols)])
                except ValueError:
                    continue  # the patch does not tile this grid
                cases[(g, pattern, f"sparse_{patch}")] = core_case(
                    f"core_{g}_{pattern}_sparse_{patch}", kernel, q, k, v)
                block_plans[(g, pattern, f"sparse_{patch}")] = kernel
    if args.layer_grid:
        g = args.layer_grid
        t = args.text_len + g * g
        x = tf.random.stateless_normal((args.batch, t, args.layer_width), seed=(1, 2))
        causal = tf.constant(np.tril(np.ones((t, t), bool)))
        cases[(g, "layer", "causal_dense")] = layer_case(
            f"layer_{g}_causal", MultiHeadAttention(args.heads), x, causal)
        for pattern in args.patterns:
            for impl in ("sparse", "masked_dense"):
                kernel = PatternAttention(pattern, args.text_len, g, g, args.kernel_size, impl=impl)
                cases[(g, f"layer {pattern}", impl)] = layer_case(
                    f"layer_{g}_{pattern}_{impl}", MultiHeadAttention(args.heads, attention_kernel=kernel), x)

    print(f"compiling {len(cases)} cases …", file=sys.stderr, flush=True)
    for run in cases.values():
        run()  # compile + warm up
    times = {key: [] for key in cases}
    for rep in range(args.reps):
        for key, run in cases.items():  # interleaved: every case once per repetition
            start = time.perf_counter()
            for x in run():
                x.numpy()
            times[key].append(time.perf_counter() - start)
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)

    def name_of(key):
        g, pattern, impl = key
        base = "layer" if pattern.startswith("layer") else "core"
        p = pattern.split()[-1]
        return f"{base}_{g}_causal" if impl == "causal_dense" else f"{base}_{g}_{p}_{impl}"

    median = {key: float(np.median(ts)) for key, ts in times.items()}
    memory = {key: xla_bytes(name_of(key)) for key in cases}

    print(f"\nfwd+bwd, XLA on CPU; batch {args.batch}, {args.heads} heads × {args.head_dim} dims, "
          f"{args.text_len} text tokens, conv kernel {args.kernel_size}; median of {args.reps} "
          f"interleaved repetitions; peak memory = XLA buffer assignment of each compiled "
          f"program (parameters + outputs + the peak of its temporaries).\n")
    print("| grid | pattern | impl | logits / head | time (ms) | peak memory (MiB) | of which "
          "temporaries (MiB) | masked dense ÷ sparse: time | peak memory | temporaries |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in cases:
        g, pattern, impl = key
        p = pattern.split()[-1]
        if p in ("any", "layer"):
            logits = (args.text_len + g * g) ** 2
        elif key in block_plans:
            logits = args.text_len * (args.text_len + g * g) + block_plans[key].plan.logits(g * g)
        else:
            logits = attention_logit_count(p, args.text_len, g, g, args.kernel_size, impl=impl)
        ratio_t = ratio_m = ratio_temp = ""
        if impl.startswith("sparse"):
            dense = (g, pattern, "masked_dense")
            ratio_t = f"{median[dense] / median[key]:.2f}×"
            ratio_m = f"{memory[dense][0] / memory[key][0]:.2f}×"
            ratio_temp = f"{memory[dense][1] / memory[key][1]:.2f}×"
        label = "whole layer (causal mask)" if pattern == "layer" else (
            "— (causal mask)" if pattern == "any" else pattern)
        print(f"| {g}×{g} | {label} | {impl} | {logits / 1e6:.3f}M | {median[key] * 1e3:.1f} "
              f"| {memory[key][0] / 2**20:.1f} | {memory[key][1] / 2**20:.1f} | {ratio_t} | {ratio_m} "
              f"| {ratio_temp} |")


if __name__ == "__main__":
    main()
