"""Issue 18: mixed_bfloat16 training tracks float32 on the demo run — the loss after 50 steps of
`make demo-clip-train`'s recipe (ViT-S-Demo, shapes, batch 128, AdamW lr 1e-3, 30 warm-up steps,
seed 0; the schedule's length is 50 steps) within 2% of float32's, "the loss" being the trained
model's contrastive loss on 256 fixed val image-caption pairs. Two demo-size training runs
(≈ 6 minutes here), so `make test-slow`.

Each precision trains in a fresh subprocess (``train_clip(mixed_precision=True)`` sets Keras'
global policy, and both runs must start from the same seed and process state).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys
import numpy as np
from keras_clip.train import train_clip, shapes_eval_data
from keras_clip.loss import contrastive_loss

mixed, logdir = sys.argv[1] == "bf16", sys.argv[2]
# 5 epochs x 10 steps = 50 steps of the demo recipe (its lr schedule is over these 50 steps).
model, history = train_clip("ViT-S-Demo", data="shapes", epochs=5, steps_per_epoch=10,
                            batch_size=128, learning_rate=1e-3, warmup_steps=30,
                            mixed_precision=mixed, seed=0, eval_examples=0, logdir=logdir,
                            verbose=0)
# The loss after 50 steps on a fixed set: 256 val scenes with their captions (the retrieval
# pairs), the model run at its own precision, the loss in float32 (as the trainer computes it).
_, _, retrieval, _ = shapes_eval_data(model.image_size, 256, 0, model.context_length)
images, token_ids = retrieval["val"]
out = model({"images": images, "token_ids": token_ids}, training=False)
val = float(contrastive_loss(out["image_embeds"], out["text_embeds"], model.logit_scale))
print("RESULT " + json.dumps({"train_last_epoch": history["loss"][-1],
                              "train_first_epoch": history["loss"][0], "val": val}))
"""


def _train(precision, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, precision, str(tmp_path / precision)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_bf16_demo_loss_after_50_steps_within_2_percent_of_float32(tmp_path):
    fp32 = _train("fp32", tmp_path)
    bf16 = _train("bf16", tmp_path)
    print(f"\nfloat32 {fp32}\nmixed_bfloat16 {bf16}")
    # Training did something (the loss fell from its first 10 steps to its last 10), in both ...
    for run in (fp32, bf16):
        assert run["train_last_epoch"] < 0.9 * run["train_first_epoch"], run
    # ... and the bfloat16 model after 50 steps is as good as the float32 one: its loss on 256
    # fixed val pairs within 2% of float32's (issue 18; measured 2026-12-01: 2.1532 vs 2.1597,
    # 0.3%). The mean training loss of steps 41-50 is only printed: the two runs' trajectories
    # drift apart step by step (measured 1.557 bf16 vs 1.616 float32, 3.7%, bf16 the lower).
    assert abs(bf16["val"] - fp32["val"]) <= 0.02 * abs(fp32["val"]), (fp32, bf16)
