"""The element-wise parts of a ViT-B/32 CLIP training step, forward + backward, at batch 16 (issue
18): Keras' LayerNormalization vs keras_clip.layers.LayerNorm (hand-written gradient; in training
its forward and backward passes as one XLA kernel each), and the QuickGELU activation as plain
TensorFlow ops vs as one XLA kernel (``fused_activation``).

    .venv/bin/python benchmarks/clip_elementwise.py --reps 7          # float32 and mixed_bfloat16

Shapes of one ViT-B/32 step at batch 16: the 25 LayerNorms of the image tower on (16, 50, 768)
and the 25 of the text tower on (16, 77, 512); the 12 + 12 activations on (16, 50, 3072) and
(16, 77, 2048). Each variant is one tf.function (graph mode, as `fit` runs the towers on one
device) that chains the layers (``x = norm(x) · 1.0001 + x``; ``x = act(x)``), takes the
gradient of the sum and reads it back. Variants alternate within each repetition; the table
gives the median and min–max over repetitions of the mean of 5 calls. TensorFlow intra-op
threads 2, inter-op 1.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

NORM_SHAPES = [(16, 50, 768), (16, 77, 512)]
ACT_SHAPES = [(16, 50, 3072), (16, 77, 2048)]
NORMS_PER_TOWER, ACTS_PER_TOWER = 25, 12


def norm_step(layer_cls, policy, training=None):
    """A tf.function: forward + backward through 25 chained norms per tower (called with
    ``training``; keras_clip's LayerNorm runs its XLA kernels when it is True)."""
    rng = np.random.default_rng(0)
    dtype = "bfloat16" if policy == "mixed_bfloat16" else "float32"
    xs = [tf.constant(rng.standard_normal(s), dtype) for s in NORM_SHAPES]
    layers = [[layer_cls(epsilon=1e-5, dtype=policy) for _ in range(NORMS_PER_TOWER)]
              for _ in NORM_SHAPES]
    for tower, shape in zip(layers, NORM_SHAPES):
        for layer in tower:
            layer.build(shape)
    variables = [v for tower in layers for layer in tower for v in layer.trainable_variables]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = 0.0
            for x, tower in zip(xs, layers):
                for layer in tower:
                    x = layer(x, training=training) * tf.cast(1.0001, x.dtype) + x
                loss += tf.reduce_sum(tf.cast(x, tf.float32))
        grads = tape.gradient(loss, variables + xs)
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])

    return step


def act_step(act, dtype):
    """A tf.function: forward + backward through 12 chained activations per tower."""
    rng = np.random.default_rng(0)
    xs = [tf.constant(rng.standard_normal(s) * 0.5, dtype) for s in ACT_SHAPES]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = 0.0
            for x in xs:
                for _ in range(ACTS_PER_TOWER):
                    x = act(x)
                loss += tf.reduce_sum(tf.cast(x, tf.float32))
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in tape.gradient(loss, xs)])

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--calls", type=int, default=5, help="calls per repetition and variant")
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from keras_clip.layers import LayerNorm, quick_gelu
    from keras_clip.layers.transformer import fused_activation

    variants = {}
    for policy, dtype in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
        variants[("50 LayerNorms", dtype, "Keras LayerNormalization")] = norm_step(
            keras.layers.LayerNormalization, policy)
        variants[("50 LayerNorms", dtype, "keras_clip LayerNorm")] = norm_step(LayerNorm, policy)
        variants[("50 LayerNorms", dtype, "keras_clip LayerNorm, training: XLA kernels")] = \
            norm_step(LayerNorm, policy, training=True)
        variants[("24 QuickGELUs", dtype, "TensorFlow ops")] = act_step(quick_gelu, dtype)
        variants[("24 QuickGELUs", dtype, "one XLA kernel (training)")] = act_step(
            fused_activation("quick_gelu"), dtype)
    for step in variants.values():  # trace, compile, warm up
        step().numpy()
        step().numpy()
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for key, step in variants.items():
            t = time.perf_counter()
            for _ in range(args.calls):
                step().numpy()
            times[key].append(1000 * (time.perf_counter() - t) / args.calls)
    print(f"{args.reps} repetitions × {args.calls} calls; ms per forward + backward, median "
          "(min–max); TF intra-op 2, inter-op 1\n")
    print("| ops | dtype | implementation | ms median (min–max) | vs the first of its group |")
    print("|---|---|---|---|---|")
    base = {}
    for key, t in times.items():
        med = float(np.median(t))
        base.setdefault(key[:2], med)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {med:.1f} ({min(t):.1f}–{max(t):.1f}) | "
              f"{med / base[key[:2]]:.2f}× |")


if __name__ == "__main__":
    main()
