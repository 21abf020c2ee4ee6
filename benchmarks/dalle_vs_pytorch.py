"""Pieces shared by the two DALL·E-vs-dalle-pytorch benchmarks (`dalle_generate.py`,
`dalle_train.py`): the fresh-subprocess runner, our model at the benchmark's size, and the
table's formatting. Not a benchmark itself."""

import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# dalle-pytorch's layer types closest to the paper's row / column / row / conv schedule.
PAPER_TORCH = ("axial_row", "axial_col", "axial_row", "conv_like")


def run_child(script, row, config, args, inductor_dir=None):
    """Runs ``script --child {config + row}`` in a fresh process and returns the dict it prints
    last, plus "load" (1-minute load average before and after); a failed child gives
    {"error": its last stderr line, "load"}. Torch children get ``args.omp_wait_policy`` and
    their own inductor cache folder."""
    cfg = dict(config, **row)
    env = dict(os.environ)
    if row["kind"] == "torch":
        if args.omp_wait_policy:
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
        if inductor_dir:
            env["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, os.path.abspath(script), "--child", json.dumps(cfg)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        return dict(error=(out.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300],
                    load=[load, os.getloadavg()[0]])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = [load, os.getloadavg()[0]]
    return result


def ours_model(c, **overrides):
    """TensorFlow pinned to ``c["threads"]`` intra-op / 1 inter-op threads, then our `DALLE` at
    the benchmark's size (GELU MLP ratio 6: dalle-pytorch's GEGLU weights and FLOPs), the
    paper's schedule or all "full" (``c["schedule"]``). Returns (model, tf, keras)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, ROOT)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(c["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from keras_dalle.transformer.model import DALLE

    keras.utils.set_random_seed(0)
    model = DALLE(text_len=c["text_len"], grid_height=c["grid"], grid_width=c["grid"],
                  text_vocab_size=c["text_vocab"], image_vocab_size=c["image_vocab"],
                  width=c["width"], num_layers=c["layers"], num_heads=c["heads"],
                  mlp_ratio=6.0, kernel_size=c["kernel_size"],
                  attention_schedule=None if c["schedule"] == "paper" else
                  ["full"] * c["layers"], **overrides)
    return model, tf, keras


def conv_keys(grid, kernel_size):
    """Image keys per query of our conv pattern (causal kernel_size² window in raster order)."""
    k2 = kernel_size // 2
    return len({dr * grid + dc for dr in range(k2 + 1) for dc in range(-k2, k2 + 1)
                if dr * grid + dc >= 0})


def fmt(values, digits=1):
    """"median (min–max)"."""
    m = statistics.median(values)
    return f"{m:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
