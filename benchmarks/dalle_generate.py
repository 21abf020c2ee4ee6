"""DALL·E sampling speed: image tokens/s of our cached XLA loop vs our uncached loop vs
dalle-pytorch 1.6.6 `generate_images` (with and without its `use_cache`), one run, same config.

    .venv-ref/bin/python benchmarks/dalle_generate.py            # all rows
    .venv/bin/python benchmarks/dalle_generate.py --skip-torch   # ours only

Same small config on both sides: 16 text tokens, a 16×16 image grid (256 image tokens, vocab
512), width 256, 4 layers × 4 heads of 64, batch 4, top-k keeping half the vocabulary,
temperature 1. Ours: the paper's row/column/conv schedule (`attention_impl="sparse"`) and,
for reference, all-"full" layers. dalle-pytorch: its default full attention (the only layer type
its cache covers). The dalle-pytorch rows run in a child process (torch and TensorFlow crash in
one process); its time includes its tiny dVAE's decode of the result, ours does not (≈1 ms).
Each row: one warm-up call (XLA compile excluded), then the median of `--repeats` timed calls,
rows interleaved so machine noise hits all of them alike.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONFIG = dict(text_len=16, grid=16, text_vocab=10000, image_vocab=512, width=256, layers=4,
              heads=4, batch=4)


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-uncached", action="store_true")
    p.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def torch_child(args):
    """Times dalle-pytorch; prints one JSON line {use_cache: [seconds, ...]}."""
    import torch
    from dalle_pytorch import DALLE, DiscreteVAE

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = CONFIG
    vae = DiscreteVAE(image_size=c["grid"] * 4, num_layers=2, num_tokens=c["image_vocab"],
                      codebook_dim=64, hidden_dim=32)
    model = DALLE(dim=c["width"], vae=vae, num_text_tokens=c["text_vocab"],
                  text_seq_len=c["text_len"], depth=c["layers"], heads=c["heads"], dim_head=64,
                  attn_types=("full",)).eval()
    text = torch.randint(1, c["text_vocab"], (c["batch"], c["text_len"]))
    times = {"True": [], "False": []}
    with torch.no_grad():
        for use_cache in (True, False):  # warm-up
            model.generate_images(text, filter_thres=0.5, use_cache=use_cache)
        for _ in range(args.repeats):
            for use_cache in (True, False):
                t0 = time.perf_counter()
                images = model.generate_images(text, filter_thres=0.5, use_cache=use_cache)
                times[str(use_cache)].append(time.perf_counter() - t0)
        assert images.shape[0] == c["batch"]
    print(json.dumps(times))


def main(args):
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    from keras_dalle.transformer.model import DALLE
    from keras_dalle.sampling.sampler import sample_image_tokens

    c = CONFIG
    keras.utils.set_random_seed(0)
    models = {
        schedule: DALLE(text_len=c["text_len"], grid_height=c["grid"], grid_width=c["grid"],
                        text_vocab_size=c["text_vocab"], image_vocab_size=c["image_vocab"],
                        width=c["width"], num_layers=c["layers"], num_heads=c["heads"],
                        kernel_size=5, attention_schedule=None if schedule == "paper" else
                        ["full"] * c["layers"])
        for schedule in ("paper", "full")}
    text = np.random.default_rng(0).integers(1, c["text_vocab"], (c["batch"], c["text_len"]))
    top_k = c["image_vocab"] // 2
    rows = {}
    for schedule, model in models.items():
        rows[f"ours cached XLA ({schedule})"] = lambda m=model: sample_image_tokens(
            m, text, top_k=top_k, seed=0)
        if not args.skip_uncached:
            rows[f"ours uncached XLA ({schedule})"] = lambda m=model: sample_image_tokens(
                m, text, top_k=top_k, seed=0, use_cache=False)
    times = {name: [] for name in rows}
    for name, fn in rows.items():
        t0 = time.perf_counter()
        fn()
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s (includes XLA compile)", flush=True)
    for _ in range(args.repeats):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    if not args.skip_torch:
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-child",
                                "--repeats", str(args.repeats), "--threads", str(args.threads)],
                               capture_output=True, text=True)
        if child.returncode == 0:
            torch_times = json.loads(child.stdout.strip().splitlines()[-1])
            times["dalle-pytorch 1.6.6 use_cache=True (full)"] = torch_times["True"]
            times["dalle-pytorch 1.6.6 use_cache=False (full)"] = torch_times["False"]
        else:
            print("dalle-pytorch rows skipped (run in .venv-ref with dalle-pytorch 1.6.6):\n"
                  + child.stderr.strip().splitlines()[-1] if child.stderr else "")

    tokens = c["batch"] * c["grid"] ** 2
    base = statistics.median(times["ours cached XLA (paper)"])
    print(f"\nconfig: {json.dumps(c)}; {tokens} image tokens per call; median of {args.repeats}")
    print(f"| {'sampler':44s} | s / call | image tokens/s | ours cached (paper) is × faster |")
    print(f"|{'-' * 46}|----------|----------------|---------------------------------|")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"| {name:44s} | {t:8.2f} | {tokens / t:14.1f} | {t / base:31.1f} |")


if __name__ == "__main__":
    ARGS = parse()
    torch_child(ARGS) if ARGS.torch_child else main(ARGS)
