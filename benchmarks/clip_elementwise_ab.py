"""A/B of issue 18's element-wise levers inside a real training step: keras_clip's ViT-B/32 CLIP
at batch 16, one `fit` step timed (`fair_runner.fit_timed`), with each lever switched on or off.

    .venv/bin/python benchmarks/clip_elementwise_ab.py --reps 5                  # fp32 and bf16
    .venv/bin/python benchmarks/clip_elementwise_ab.py --reps 2 --preset ViT-S-Demo --batch 64
    .venv/bin/python benchmarks/clip_elementwise_ab.py --variants both ln-graph --precisions fp32

Variants (each a fresh subprocess; within a repetition the order rotates by one):
  both       today's code: `LayerNorm`'s hand-written gradient (forward and backward as one XLA
             kernel each in training) and the activation as one XLA kernel in training
             (`keras_clip.layers.transformer.fused_activation`)
  no-act     the activation as plain TensorFlow ops (``fused_activation`` patched to
             ``get_activation``)
  no-ln      Keras' own LayerNormalization.call (the composed ops, differentiated by TF)
  neither    both switched off: the code before the levers
  ln-graph   the LayerNorms' hand-written gradient as TensorFlow graph ops, not as the two XLA
             kernels `LayerNorm` runs in training (the code before those kernels)

Each child runs `benchmarks/clip_train.py`'s "ours" row (`clip_train.ours_child`: random init,
AdamW via ``clip_optimizer``, one synthetic batch repeated) with ``xla_towers="auto"`` (graph
towers on one device); TensorFlow intra-op threads 2, inter-op 1. The losses of the variants
agree (float32: identical to 4 decimals), which the table shows. At a toy size the levers cost
more than they save (ViT-Tiny, batch 8, one repetition: 0.023 s/step with both vs 0.018 without:
the XLA call's overhead); their gain is measured at ViT-B/32 (BENCHMARKS.md).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("both", "no-act", "no-ln", "neither", "ln-graph")


def child(precision, variant, preset, batch):
    """One variant's row: `clip_train.ours_child` (the fair benchmark's own "ours" step) with
    the levers patched off as ``variant`` says."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, HERE)
    import clip_train
    import keras
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras_clip.layers.layer_normalization as layer_normalization
    import keras_clip.layers.transformer as transformer
    from keras_clip.presets import get_preset
    if variant in ("no-act", "neither"):
        transformer.fused_activation = transformer.get_activation
    if variant in ("no-ln", "neither"):
        layer_normalization.LayerNorm.call = keras.layers.LayerNormalization.call
    if variant == "ln-graph":
        layer_normalization._xla_kernels = lambda: (layer_normalization._ln_forward,
                                                     layer_normalization._ln_backward)
    r = clip_train.ours_child(dict(preset=preset, config=get_preset(preset), batch=batch,
                                   bf16=precision == "bf16", xla="auto", warmup=1, steps=3))
    timing = r["train"]
    print("RESULT " + json.dumps(dict(step_s=timing["timed_s"] / timing["n"],
                                      first_s=timing["first_s"], loss=r["loss"])))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--preset", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS[:4]), choices=VARIANTS,
                   help="the first is the baseline of the table's ratio column")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child, args.preset, args.batch)
    combos = [(pr, v) for pr in args.precisions for v in args.variants]
    times = {c: [] for c in combos}
    losses = {}
    for rep in range(args.reps):
        k = rep % len(combos)
        for precision, variant in combos[k:] + combos[:k]:
            out = subprocess.run(
                [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch),
                 "--child", precision, variant], capture_output=True, text=True,
                env=dict(os.environ, OMP_NUM_THREADS="2"))
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                sys.exit(f"{precision} {variant} failed:\n{out.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT "):])
            times[(precision, variant)].append(r["step_s"])
            losses[(precision, variant)] = r["loss"]
            print(f"rep {rep + 1} {precision} {variant}: {r['step_s']:.3f} s/step", file=sys.stderr,
                  flush=True)
    print(f"{args.preset}, batch {args.batch}, {args.reps} repetitions (fresh process each, "
          "rotated); s per `fit` step, median (min–max)\n")
    print(f"| precision | variant | s/step | samples/s | vs {args.variants[0]} | loss |")
    print("|---|---|---|---|---|---|")
    for precision, variant in combos:
        t = times[(precision, variant)]
        base = statistics.median(times[(precision, args.variants[0])])
        med = statistics.median(t)
        print(f"| {precision} | {variant} | {med:.3f} ({min(t):.3f}–{max(t):.3f}) | "
              f"{args.batch / med:.2f} | {med / base:.3f} | {losses[(precision, variant)]:.4f} |")


if __name__ == "__main__":
    main()
