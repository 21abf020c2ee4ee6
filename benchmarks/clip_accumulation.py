"""Accumulation that keeps every negative (``CLIP.compile(accum_freq=k)``) vs plain batches:
peak memory and samples/s of accum k × b against batch b and batch k·b, and a LiT row (image
tower locked: no backward pass through it).

    .venv/bin/python benchmarks/clip_accumulation.py --preset ViT-S-Demo --micro-batch 32 --accum 4
    .venv/bin/python benchmarks/clip_accumulation.py --preset ViT-B-32 --micro-batch 32 --accum 4 \
        --steps 2 --warmup 1

Every repetition of every row is a fresh subprocess (so peak memory is the row's own), and the
rows are interleaved: row 1, row 2, ..., row 1, row 2, ... Threads: TensorFlow's intra-op pool
``--threads``, inter-op 1. Each repetition: ``--warmup`` steps (XLA compile included), then
``--steps`` timed steps of SGD-free AdamW training (``fit`` on one synthetic batch repeated).
Peak memory is the process's peak resident set (VmHWM); samples/s counts the global batch
(b for "batch b", k·b for the others).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def child(cfg):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, os.path.join(HERE, ".."))
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(cfg["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from keras_clip.model import CLIP
    from keras_clip.optimizer import clip_optimizer

    keras.utils.set_random_seed(0)
    model = CLIP.from_preset(cfg["preset"])
    if cfg["lit"]:
        model.lock_image_tower()
    total = cfg["steps"] + cfg["warmup"]
    model.compile(optimizer=clip_optimizer(model, total_steps=total, learning_rate=1e-5,
                                           warmup_steps=0),
                  accum_freq=cfg["accum"], text_padding="max_length", jit_compile=False)
    b = cfg["batch"]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((b, model.image_size, model.image_size, 3)).astype("float32")
    ids = np.zeros((b, model.context_length), np.int32)
    ids[:, 0], ids[:, 13] = 49406, 49407
    ids[:, 1:13] = rng.integers(1, 49000, (b, 12))
    data = tf.data.Dataset.from_tensors({"images": images, "token_ids": ids}).repeat()
    t0 = time.perf_counter()
    model.fit(data, steps_per_epoch=cfg["warmup"], epochs=1, verbose=0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(data, steps_per_epoch=cfg["steps"], epochs=1, verbose=0)
    steady = (time.perf_counter() - t0) / cfg["steps"]
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print(json.dumps({"samples_per_s": b / steady, "first_s": first, "peak_mib": peak}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ViT-S-Demo")
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-lit", action="store_true", help="leave out the LiT row")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    b, k = args.micro_batch, args.accum
    rows = [(f"batch {b}", dict(batch=b, accum=1, lit=False)),
            (f"accum {k} x {b} (global {k * b})", dict(batch=k * b, accum=k, lit=False)),
            (f"batch {k * b}", dict(batch=k * b, accum=1, lit=False)),
            (f"batch {k * b}, image tower locked (LiT)", dict(batch=k * b, accum=1, lit=True))]
    if args.no_lit:
        rows = rows[:3]
    results = {name: [] for name, _ in rows}
    for rep in range(args.reps):
        for name, row in rows:
            cfg = dict(row, preset=args.preset, steps=args.steps, warmup=args.warmup,
                       threads=args.threads)
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name}: child failed\n{out.stderr[-3000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"rep {rep + 1}/{args.reps} {name}: {results[name][-1]}", file=sys.stderr)
    print(f"\n{args.preset}, micro-batch {b}, accum {k}; {args.reps} repetitions (fresh "
          f"subprocess each, interleaved), {args.steps} timed steps after {args.warmup} warm-up; "
          f"TF intra-op threads {args.threads}, inter-op 1; AdamW\n")
    print("| row | samples/s median (min–max) | vs batch " f"{k * b} | first {args.warmup} steps "
          "(s, XLA compile incl.) | peak RSS MiB median (min–max) |")
    print("|---|---|---|---|---|")
    base = np.median([r["samples_per_s"] for r in results[f"batch {k * b}"]])
    for name, _ in rows:
        sps = [r["samples_per_s"] for r in results[name]]
        mem = [r["peak_mib"] for r in results[name]]
        first = [r["first_s"] for r in results[name]]
        print(f"| {name} | {np.median(sps):.1f} ({min(sps):.1f}–{max(sps):.1f}) | "
              f"{np.median(sps) / base:.2f}× | {np.median(first):.1f} | "
              f"{np.median(mem):.0f} ({min(mem):.0f}–{max(mem):.0f}) |")


if __name__ == "__main__":
    main()
