"""CLIP training throughput: ours (XLA towers on/off) vs open_clip (torch, CPU), side by side.

    .venv-ref/bin/python benchmarks/clip_train.py --preset ViT-S-Demo --batch-size 128 --steps 20
    .venv-ref/bin/python benchmarks/clip_train.py --mirrored   # 2 logical CPUs: XLA on vs off

Runs in the reference venv (TensorFlow and torch installed side by side; the open_clip row runs
in a child process, since torch and TensorFlow crash when loaded into one process; without
torch that row is skipped). Each row: warm-up steps, then `--steps` timed steps of the same config and global
batch on synthetic data, AdamW. Also prints achieved FLOP/s as a share of the measured float32
matmul peak of this machine (analytic FLOP count: 3 × forward for forward + backward).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="ViT-S-Demo")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mirrored", action="store_true", help="MirroredStrategy over 2 logical CPUs")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--torch-row", default=None, help=argparse.SUPPRESS)  # config JSON
    return p.parse_args()


ARGS = parse()
import json  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402

if not ARGS.torch_row:  # parent: TensorFlow only (the child gets the config as JSON)
    import tensorflow as tf

    if ARGS.mirrored:
        from keras_clip.strategy import split_cpu
        split_cpu(2)
    import keras

    from keras_clip.model import CLIP
    from keras_clip.presets import get_preset


def batch(c, b, seed=0):
    """The same synthetic batch for both frameworks: NHWC images, 12-token captions."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((b, c["image_size"], c["image_size"], 3)).astype(np.float32)
    ids = np.zeros((b, c["context_length"]), np.int32)
    n = min(12, c["context_length"] - 2)
    ids[:, 0], ids[:, n + 1] = 49406, 49407
    ids[:, 1:n + 1] = rng.integers(1, 49000, (b, n))
    return images, ids


def forward_flops(c):
    """Multiply-adds × 2 of one sample's forward pass through both towers (ViT presets)."""
    def transformer(tokens, width, layers, mlp_ratio=4):
        per_layer = tokens * (4 * width * width + 2 * mlp_ratio * width * width) + 2 * tokens * tokens * width
        return layers * per_layer
    grid = (c["image_size"] // c["vision_patch_size"]) ** 2
    vision = grid * 3 * c["vision_patch_size"] ** 2 * c["vision_width"]
    vision += transformer(grid + 1, c["vision_width"], c["vision_layers"])
    text = transformer(c["context_length"], c["text_width"], c["text_layers"])
    return 2 * (vision + text)


def matmul_peak(threads):
    n = 1024
    a = tf.random.normal((n, n))
    f = tf.function(lambda a: tf.matmul(a, a))
    f(a).numpy()
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            r = f(a)
        r.numpy()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t))
    return best


def time_ours(c, xla, strategy):
    images, ids = batch(c, ARGS.batch_size)
    ds = tf.data.Dataset.from_tensors({"images": images, "token_ids": ids}).repeat()
    with strategy.scope():
        model = CLIP(**c)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), xla_towers=xla, jit_compile=False)
    model.fit(ds, steps_per_epoch=ARGS.warmup, epochs=1, verbose=0)
    t = time.perf_counter()
    model.fit(ds, steps_per_epoch=ARGS.steps, epochs=1, verbose=0)
    return ARGS.steps * ARGS.batch_size / (time.perf_counter() - t)


def time_open_clip(c):
    import torch
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP as TorchCLIP, CLIPTextCfg, CLIPVisionCfg

    torch.set_num_threads(ARGS.threads)
    model = TorchCLIP(c["embed_dim"], CLIPVisionCfg(
        layers=c["vision_layers"], width=c["vision_width"],
        head_width=c["vision_width"] // (c.get("vision_heads") or c["vision_width"] // 64),
        patch_size=c["vision_patch_size"], image_size=c["image_size"]),
        CLIPTextCfg(context_length=c["context_length"], vocab_size=c["vocab_size"],
                    width=c["text_width"], heads=c["text_heads"], layers=c["text_layers"]),
        quick_gelu=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ClipLoss()
    images, ids = batch(c, ARGS.batch_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(ids).long()

    def step():
        img, txt, scale = model(images, ids)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(ARGS.warmup):
        step()
    t = time.perf_counter()
    for _ in range(ARGS.steps):
        step()
    return ARGS.steps * ARGS.batch_size / (time.perf_counter() - t)


def main():
    c = get_preset(ARGS.preset)
    flops = 3 * forward_flops(c)
    peak = matmul_peak(ARGS.threads)
    rows = []
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if ARGS.mirrored
                else tf.distribute.get_strategy())
    label = "MirroredStrategy 2 CPUs" if ARGS.mirrored else "one device"
    for xla in (True, False):
        rows.append((f"keras_clip, {label}, XLA towers {'on' if xla else 'off'}",
                     time_ours(c, xla, strategy)))
    if not ARGS.skip_torch and not ARGS.mirrored:
        child = subprocess.run(
            [sys.executable, __file__, "--torch-row", json.dumps(c), "--batch-size",
             str(ARGS.batch_size), "--steps", str(ARGS.steps), "--warmup", str(ARGS.warmup),
             "--threads", str(ARGS.threads)], capture_output=True, text=True)
        if child.returncode == 0:
            rows.append(tuple(json.loads(child.stdout.strip().splitlines()[-1])))
        else:
            print(f"(open_clip row skipped: {child.stderr.strip().splitlines()[-1:]})")
    base = rows[-1][1]
    print(f"\npreset {ARGS.preset}, global batch {ARGS.batch_size}, {ARGS.steps} timed steps; "
          f"train FLOPs/sample {flops / 1e6:.0f} M; matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print(f"| run | samples/s | × last row | GFLOP/s | share of matmul peak |")
    print(f"|---|---|---|---|---|")
    for name, sps in rows:
        print(f"| {name} | {sps:.1f} | {sps / base:.2f} | {sps * flops / 1e9:.1f} | "
              f"{100 * sps * flops / peak:.0f}% |")


if __name__ == "__main__":
    if ARGS.torch_row:
        import torch
        sps = time_open_clip(json.loads(ARGS.torch_row))
        print(json.dumps([f"open_clip 3.3.0 (torch {torch.__version__}), {ARGS.threads} threads", sps]))
    else:
        main()
