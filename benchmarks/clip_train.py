"""CLIP training at real sizes, measured fairly: keras_clip (XLA towers on / off, float32 and
mixed bfloat16) vs open_clip 3.3.0 (eager, torch.compile, bfloat16 autocast) on CPU (issue 18).

    .venv-ref/bin/python benchmarks/clip_train.py --presets ViT-B-32 RN50 --batch-sizes 16 64 \\
        --reps 5 --steps 10 --warmup 2 --output benchmarks/results/clip_train.json
    .venv-ref/bin/python benchmarks/clip_train.py --presets ViT-S-Demo --batch-sizes 8 \\
        --reps 2 --steps 2 --warmup 1                                      # a quick check

What is measured, per row, preset and batch size, in each process: the first training step
(timed: what a user waits for, tracing and XLA compilation or torch.compile included; building
the model and optimizer not included), ``--warmup`` untimed steps, then ``--steps`` timed steps:
samples/s = steps × batch / their time. Ours: all of them in one ``fit``, timed per step by a
callback (`fair_runner.fit_timed`: a fit sometimes stalls ~6 s before it returns, which timing
separate fits counted as step time). The loss is the mean over the timed steps (per-step losses
from Keras' running epoch mean; the same mean of open_clip's step losses), printed so equal
work is visible. GFLOP/s = samples/s × 3 × the forward FLOPs of both towers per sample (counted
once with torch.utils.flop_counter on open_clip's model of the same architecture, or by an
analytic ViT formula if torch is missing, as the output says); "% of own peak" divides by the
row's own framework's matmul peak at the row's precision, measured in the same run.

Rows (``--rows``):
  ours-xla, ours-noxla      CLIP.compile(optimizer=clip_optimizer(...), xla_towers=True/False,
                            jit_compile=False), ``model.fit`` on
                            tf.data.Dataset.from_tensors(batch).repeat(); float32
  ours-bf16-xla, -noxla     the same under keras.mixed_precision "mixed_bfloat16", set before the
                            model is built, as keras_clip/train.py --mixed-precision
                            (these rows all compile with text_padding="max_length": every step
                            runs the 77 text positions, as open_clip does)
  ours-longest              float32, xla_towers="auto", text_padding="longest" (the default of
                            CLIP.compile and train.py): each step cuts the token ids after the
                            batch's longest text, here 14 tokens → 16 columns. Same loss, less
                            work, so no GFLOP/s or % of peak for this row (they would count
                            work it does not do); its ratio says what a user gets
  torch-eager               open_clip.model.CLIP of the same config (QuickGELU, as our presets),
                            float32: open_clip's training step — AdamW over its two parameter
                            groups (no weight decay for ndim < 2 or names with bn/ln/bias/
                            logit_scale), open_clip.loss.ClipLoss, logit_scale clamped to
                            [0, ln 100] after each step
  torch-compile             the same with torch.compile(model) (default mode; cold inductor cache)
  torch-bf16                the same, eager, forward and loss under torch.autocast("cpu",
                            torch.bfloat16) (open_clip's --precision amp_bf16)

Fairness: the same synthetic batch every step on both sides (NHWC float32 images for ours, the
same values NCHW for torch; 77 token ids: BOS, 12 random tokens, EOS, zeros); the same AdamW
betas / epsilon / weight decay (taken from clip_optimizer for the preset's tower), learning rate
1e-5 with the same cosine decay over the steps run, no warm-up; fresh processes, both
frameworks' thread pools pinned alike, rows interleaved with a rotating order (see
`fair_runner`). Known differences: our optimizer also leaves the token / position embeddings
undecayed (clip_optimizer), open_clip decays them; under bf16 our loss is computed in float32,
open_clip's logits matmul runs in bf16 under autocast. The two sides' losses differ by their
random initialisations (each library's own); within a side they agree across rows.
"""

import contextlib
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fair_runner as fr  # noqa: E402

ROWS = {
    "ours-xla": dict(label="keras_clip fp32, XLA towers on", framework="tf", xla=True),
    "ours-noxla": dict(label="keras_clip fp32, XLA towers off", framework="tf", xla=False),
    "ours-bf16-xla": dict(label="keras_clip mixed_bfloat16, XLA towers on", framework="tf",
                          xla=True, bf16=True),
    "ours-bf16-noxla": dict(label="keras_clip mixed_bfloat16, XLA towers off", framework="tf",
                            xla=False, bf16=True),
    "ours-longest": dict(label="keras_clip fp32, texts padded to the longest (fewer FLOPs)",
                         framework="tf", xla="auto", text_padding="longest", less_work=True),
    "torch-eager": dict(label="open_clip fp32, eager", framework="torch"),
    "torch-compile": dict(label="open_clip fp32, torch.compile", framework="torch", compile=True),
    "torch-bf16": dict(label="open_clip bf16 autocast, eager", framework="torch", bf16=True),
}


# Issue 18's targets as (row, against) pairs, reported per repetition (fair_runner.paired_table).
PAIRS = [(ours, torch) for ours in ("ours-noxla", "ours-xla")
         for torch in ("torch-eager", "torch-compile")] + [
    ("ours-bf16-noxla", "ours-noxla"), ("ours-bf16-noxla", "torch-bf16"),
    ("ours-longest", "torch-eager"), ("ours-longest", "torch-compile")]


def total_steps(c):
    return 1 + c["warmup"] + c["steps"]


def ours_child(c):
    """Our training steps through one ``model.fit`` (timed per step, `fair_runner.fit_timed`)."""
    import tensorflow as tf

    from keras_clip.optimizer import clip_optimizer
    model, _ = fr.ours_model(c)
    model.compile(optimizer=clip_optimizer(model, total_steps=total_steps(c), learning_rate=fr.LR,
                                           warmup_steps=0),
                  xla_towers=c["xla"], text_padding=c.get("text_padding", "max_length"),
                  jit_compile=False)
    images, ids = fr.synthetic_batch(c["config"], c["batch"])  # (B, S, S, 3) f32, (B, 77) i32
    data = tf.data.Dataset.from_tensors({"images": images, "token_ids": ids}).repeat()

    train, losses = fr.fit_timed(model, data, c["warmup"], c["steps"])
    return dict(train=train, loss=statistics.fmean(losses), params=model.count_params(),
                versions=fr.versions("tensorflow", "keras"))


def torch_child(c):
    """open_clip's training step (open_clip_train's train_one_epoch, without its logging)."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss
    model = fr.open_clip_model(c["config"]).train()

    def no_decay(n, p):  # open_clip_train/main.py's `exclude`
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hp = c["adamw"]
    opt = torch.optim.AdamW(
        [dict(params=[p for n, p in named if no_decay(n, p)], weight_decay=0.0),
         dict(params=[p for n, p in named if not no_decay(n, p)],
              weight_decay=hp["weight_decay"])],
        lr=fr.LR, betas=tuple(hp["betas"]), eps=hp["eps"])
    loss_fn = ClipLoss()
    run = torch.compile(model) if c.get("compile") else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if c.get("bf16") else \
        contextlib.nullcontext
    images, ids = (torch.from_numpy(x)  # (B, 3, S, S) float32, (B, 77) int64
                   for x in fr.synthetic_batch(c["config"], c["batch"], nchw=True))
    step_no = [0]

    def step():
        # the cosine decay clip_optimizer gives our side (no warm-up), as open_clip's cosine_lr
        lr = fr.LR * 0.5 * (1 + math.cos(math.pi * step_no[0] / total_steps(c)))
        for group in opt.param_groups:
            group["lr"] = lr
        step_no[0] += 1
        opt.zero_grad()
        with autocast():
            image_features, text_features, scale = run(images, ids)[:3]
            loss = loss_fn(image_features, text_features, scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    train, losses = fr.time_steps(step, c["warmup"], c["steps"])
    return dict(train=train, loss=statistics.fmean(losses),
                params=sum(p.numel() for p in model.parameters()),
                versions=dict(fr.versions("torch"), open_clip=open_clip.__version__))


def report(data, rows):
    a = data["args"]
    lines = fr.header("CLIP training: keras_clip vs open_clip 3.3.0 (CPU)", data) + [
        f"Per process: the first step (timed, compile included), untimed steps: {a['warmup']}, "
        f"timed steps: {a['steps']}; samples/s over the timed steps; GFLOP/s = samples/s × 3 × "
        "forward FLOPs/sample; % of own peak: of the row's framework's matmul peak at its "
        "precision. Loss: mean over the timed steps (random init, lr 1e-5).", ""]
    for preset, d in data["presets"].items():
        if "error" in d:
            continue
        f = d["open_clip"]["flops"]
        flops = 3 * (f["image"] + f["text"]) if f["image"] and f["text"] else None
        for b in a["batch_sizes"]:
            lines += [f"## {preset}, batch {b}", ""]
            lines += fr.speed_table(data, rows, preset, b, "train", flops, "samples",
                                    "first step", extra=[("loss", lambda ok: fr.fmt(
                                        [r["loss"] for r in ok], 4))])
            pairs = [(r, o) for r, o in PAIRS if r in a["rows"] and o in a["rows"]]
            if pairs:
                lines += ["", "Paired within each repetition:", ""]
                lines += fr.paired_table(data, ROWS, preset, b, "train", pairs, flops)
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    fr.main(__file__, __doc__, ROWS, dict(tf=ours_child, torch=torch_child), report,
            batch_sizes=[16, 64], steps=10, warmup=2)
