"""Pieces shared by the two DALL·E-vs-dalle-pytorch benchmarks (`dalle_generate.py`,
`dalle_train.py`): the model-size arguments and config, the caption ids, the fresh-subprocess
runner, both sides' models at the benchmark's size, a call timer, and the table's formatting.
Not a benchmark itself."""

import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# dalle-pytorch's layer types closest to the paper's row / column / row / conv schedule.
PAPER_TORCH = ("axial_row", "axial_col", "axial_row", "conv_like")


def add_model_arguments(p, grid, text_vocab):
    """The arguments both benchmarks share (threads, batch and model size, the torch children's
    OMP_WAIT_POLICY); ``grid`` and ``text_vocab`` are the script's defaults."""
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grid", type=int, default=grid, help="image grid side (tokens)")
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--text-vocab", type=int, default=text_vocab)
    p.add_argument("--image-vocab", type=int, default=512)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernel-size", type=int, default=7,
                   help="our conv window; 7 gives 25 image keys per query, as dalle-pytorch's "
                        "fixed 5x5 conv_like")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY of the torch children ('' = unset)")


def model_config(args, **extra):
    """The children's config from `add_model_arguments`' values, plus ``extra``."""
    return dict(text_len=args.text_len, grid=args.grid, text_vocab=args.text_vocab,
                image_vocab=args.image_vocab, width=args.width, layers=args.layers,
                heads=args.heads, batch=args.batch, kernel_size=args.kernel_size,
                threads=args.threads, **extra)


def caption_ids(c, rng):
    """The same int text ids [batch, text_len] on both sides: 12 caption tokens drawn from
    ``rng``, then pads (0)."""
    import numpy as np
    ids = np.zeros((c["batch"], c["text_len"]), np.int64)
    n = min(12, c["text_len"])
    ids[:, :n] = rng.integers(1, c["text_vocab"], (c["batch"], n))
    return ids


def time_calls(call, n):
    """Calls ``call`` 1 + ``n`` times: (the first call's result, its seconds, the next ``n``
    calls' seconds)."""
    import time
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    steady = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        steady.append(time.perf_counter() - t0)
    return result, first, steady


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


def torch_model(c, **dalle_kwargs):
    """torch pinned to ``c["threads"]`` intra-op / 1 inter-op threads, then dalle-pytorch's
    `DALLE` at the benchmark's size: rotary embeddings and token shift off, image loss weight 7,
    all "full" or `PAPER_TORCH` layers (``c["attn"]``); ``dalle_kwargs`` go to `DALLE`.
    dalle-pytorch takes the grid from its VAE (image_size / 2**num_layers), which the benchmarks
    never call on pixels. Returns (model, torch, dalle_pytorch)."""
    import torch
    torch.set_num_threads(c["threads"])
    torch.set_num_interop_threads(1)
    import dalle_pytorch
    from dalle_pytorch import DALLE, DiscreteVAE

    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=c["grid"] * 4, num_layers=2, num_tokens=c["image_vocab"],
                      codebook_dim=64, hidden_dim=16, num_resnet_blocks=0)
    model = DALLE(dim=c["width"], vae=vae, num_text_tokens=c["text_vocab"],
                  text_seq_len=c["text_len"], depth=c["layers"], heads=c["heads"],
                  dim_head=c["width"] // c["heads"], rotary_emb=False, shift_tokens=False,
                  loss_img_weight=7,
                  attn_types=("full",) if c["attn"] == "full" else PAPER_TORCH, **dalle_kwargs)
    return model, torch, dalle_pytorch


def conv_keys(grid, kernel_size):
    """Image keys per query of our conv pattern (causal kernel_size² window in raster order)."""
    k2 = kernel_size // 2
    return len({dr * grid + dc for dr in range(k2 + 1) for dc in range(-k2, k2 + 1)
                if dr * grid + dc >= 0})


def fmt(values, digits=1):
    """"median (min–max)"."""
    m = statistics.median(values)
    return f"{m:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
