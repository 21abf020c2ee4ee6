"""TFLite parity and latency: every variant of the CLIP towers and the dVAE decoder vs Keras.

For the demo-size presets (CLIP "ViT-S-Demo", dVAE "dvae-shapes"; the trained demo models
runs/demo/clip.keras and runs/demo/dvae.keras when they exist, else seeded random weights):
file size, cosine vs Keras per example (mean / min on scikit-image photos and on shapes val
data, as `export.tflite.measure_parity`), whether the default gate (min cosine ≥ 0.99) passes,
and batch-1 latency: the LiteRT interpreter (XNNPACK, 1 thread) against the same Keras model
run by TensorFlow as a `tf.function` graph (what a SavedModel serves; 1 intra-op thread) on
the same input, interleaved call by call; medians, ratio = TF / LiteRT (> 1: LiteRT faster).

Example:
    .venv/bin/python benchmarks/tflite_parity.py            # prints a markdown table
    .venv/bin/python benchmarks/tflite_parity.py --models dvae --repeats 50 --json rows.json
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_models(kinds=("clip", "dvae")):
    import keras
    from export import tflite as T
    from keras_clip.model import CLIP
    from keras_dalle.vae.presets import dvae_from_preset
    keras.utils.set_random_seed(0)
    out = []
    for kind, preset, path, build in (
            ("clip", "ViT-S-Demo", "runs/demo/clip.keras", lambda: CLIP.from_preset("ViT-S-Demo")),
            ("dvae", "dvae-shapes", "runs/demo/dvae.keras",
             lambda: dvae_from_preset("dvae-shapes"))):
        if kind not in kinds:
            continue
        full = os.path.join(ROOT, path)
        if os.path.isfile(full):
            out.append((f"{preset} (trained, {path})", T.load_model(full)))
        else:
            out.append((f"{preset} (random weights, seed 0)", build()))
    return out


def latency(interp, tf_fn, x, repeats):
    """Median seconds per batch-1 call of LiteRT and of TF, interleaved call by call."""
    from export import tflite as T
    xs = x[None]
    for _ in range(3):  # warm-up (XNNPACK packing, tf.function tracing)
        T.run_tflite(interp, xs)
        tf_fn(tf.constant(xs))
    lite, ref = [], []
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    xt = tf.constant(xs)
    for _ in range(repeats):
        t = time.perf_counter()
        interp.set_tensor(inp["index"], xs.astype(inp["dtype"]))
        interp.invoke()
        interp.get_tensor(out["index"])
        lite.append(time.perf_counter() - t)
        t = time.perf_counter()
        tf_fn(xt).numpy()
        ref.append(time.perf_counter() - t)
    return float(np.median(lite)), float(np.median(ref))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--variants", default=",".join(("fp32", "fp16", "dynamic-int8", "int8")))
    parser.add_argument("--models", default="clip,dvae", help="clip, dvae or both")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from export import tflite as T

    rows = []
    for label, model in load_models(args.models.split(",")):
        for part in T.parts_of(model):
            inputs = T.evaluation_inputs(model, part)
            fn = T.keras_fn(model, part)
            tf_fn = tf.function(fn, input_signature=[T.input_spec(model, part)])
            for variant in args.variants.split(","):
                t = time.perf_counter()
                content = T.convert(model, part, variant)
                convert_s = time.perf_counter() - t
                interp = T.make_interpreter(model_content=content, num_threads=1)
                parity = T.measure_parity(model, part, interp, inputs)
                lite_s, tf_s = latency(interp, tf_fn, inputs["shapes"][0], args.repeats)
                row = dict(model=label, part=part, variant=variant, bytes=len(content),
                           convert_s=convert_s, parity=parity, tflite_ms=lite_s * 1e3,
                           tf_ms=tf_s * 1e3, passes=parity["min_cosine"] >= T.DEFAULT_THRESHOLD)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def table(rows):
    lines = ["| model | part | variant | size (MB) | photos cos mean / min | shapes cos mean / min "
             "| PSNR photos / shapes (dB) | gate ≥ 0.99 | LiteRT ms | TF ms | TF / LiteRT |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["parity"]
        psnr = (f"{p['photos']['mean_psnr']:.1f} / {p['shapes']['mean_psnr']:.1f}"
                if "mean_psnr" in p["photos"] else "–")
        lines.append(
            f"| {r['model']} | {r['part']} | {r['variant']} | {r['bytes'] / 1e6:.2f} "
            f"| {p['photos']['mean_cosine']:.5f} / {p['photos']['min_cosine']:.5f} "
            f"| {p['shapes']['mean_cosine']:.5f} / {p['shapes']['min_cosine']:.5f} | {psnr} "
            f"| {'pass' if r['passes'] else 'REFUSED'} | {r['tflite_ms']:.2f} | {r['tf_ms']:.2f} "
            f"| {r['tf_ms'] / r['tflite_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
