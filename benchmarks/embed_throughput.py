"""Embedding job throughput (images/s) vs the model's own encode_image throughput.

Each repetition is a fresh subprocess (``--worker job`` or ``--worker model``):

* ``job``: ``keras_clip.embed.embed_images`` over a folder of synthetic JPEG photos (random
  smooth colour fields, ``--width`` x ``--height``): reading, decoding, CLIP preprocessing,
  MirroredStrategy + XLA tower, Parquet / npy writing — images/s over the batches after the
  first (the first batch holds tracing and XLA compilation).
* ``model``: the same model's ``encode_image`` on already-preprocessed float32 batches held in
  memory, XLA-compiled as in the job (``make_image_encoder``), timed after one warm-up batch;
  and ``model-eager``: ``model.encode_image`` called eagerly (plain Keras).

The ratio job / model is the share of the tower's throughput that the pipeline keeps.

    python benchmarks/embed_throughput.py --preset ViT-B-32 --num-images 512 --reps 5
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_images(folder, n, width, height, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        # A smooth random field (upsampled noise) compresses like a photo, unlike white noise.
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
            f.write(buf.getvalue())


def worker_job(args):
    from keras_clip.embed import embed_images

    times = []
    out = tempfile.mkdtemp(prefix="embed-bench-")
    os.rmdir(out)
    start = time.perf_counter()
    embed_images(args.model_path, args.images, out, batch_size=args.batch_size,
                 shard_size=args.batch_size * 40, progress=False,
                 on_batch=lambda n: times.append((time.perf_counter(), n)))
    total = time.perf_counter() - start
    (t0, n0), (t1, n1) = times[0], times[-1]
    return {"images_per_s": (n1 - n0) / (t1 - t0), "wall_s": total, "images": n1}


def worker_model(args, eager=False):
    import numpy as np
    import tensorflow as tf

    from keras_clip.embed import make_image_encoder
    from keras_clip.saving import load_model
    from keras_clip.model import CLIP

    model = load_model(args.model_path, expected=CLIP)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch_size, model.image_size, model.image_size, 3))
                    .astype(np.float32))
    encode = (lambda images: model.encode_image(images)) if eager else make_image_encoder(model)
    np.asarray(encode(x))  # warm-up: tracing / compilation
    batches = max(1, args.num_images // args.batch_size - 1)
    start = time.perf_counter()
    for _ in range(batches):
        np.asarray(encode(x))
    elapsed = time.perf_counter() - start
    return {"images_per_s": batches * args.batch_size / elapsed}


def _run_rep(kind, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--model-path",
           args.model_path, "--images", args.images, "--batch-size", str(args.batch_size),
           "--num-images", str(args.num_images)]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ViT-B-32")
    p.add_argument("--num-images", type=int, default=512)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workdir", default=None)
    p.add_argument("--worker", choices=("job", "model", "model-eager"), help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--images", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras_clip  # noqa: F401

        result = (worker_job(args) if args.worker == "job"
                  else worker_model(args, eager=args.worker == "model-eager"))
        print(json.dumps(result))
        return
    work = args.workdir or tempfile.mkdtemp(prefix="embed-throughput-")
    args.images = os.path.join(work, "images")
    args.model_path = os.path.join(work, f"{args.preset}.keras")
    if not os.path.isdir(args.images):
        make_images(args.images, args.num_images, args.width, args.height)
    if not os.path.exists(args.model_path):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras_clip
        from keras_clip.saving import save_model_atomic

        save_model_atomic(keras_clip.CLIP.from_preset(args.preset), args.model_path)
    results = {}
    for kind in ("model", "model-eager", "job"):
        results[kind] = [_run_rep(kind, args)["images_per_s"] for _ in range(args.reps)]
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.preset} (random weights), {args.num_images} JPEG {args.width}x{args.height}, "
          f"batch {args.batch_size}, {args.reps} reps each (fresh process), "
          f"{os.cpu_count()} CPU cores")
    print("| path | images/s median | min-max | vs encode_image (XLA) |")
    print("|---|---|---|---|")
    names = {"model": "model encode_image, XLA (make_image_encoder), preprocessed in memory",
             "model-eager": "model.encode_image, eager Keras, preprocessed in memory",
             "job": "embedding job (read + decode + preprocess + embed + write)"}
    for kind in ("model", "model-eager", "job"):
        v = results[kind]
        print(f"| {names[kind]} | {med[kind]:.1f} | {min(v):.1f}-{max(v):.1f} | "
              f"{med[kind] / med['model']:.0%} |")


if __name__ == "__main__":
    main()
