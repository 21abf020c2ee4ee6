"""Where a CLIP training step's time goes (issue 18's "profile first"; a profiling aid beside the
fair benchmark `clip_train.py`): in one process, with TensorFlow's intra-op threads 2 and
inter-op 1, the towers' forward pass, forward + backward (the train step's tape), the optimizer
update alone (as `train_step` applies it: one XLA function with ``xla_optimizer``), a whole
`fit` step, and the float32 matmul peak as `fair_runner` measures it; medians of ``--reps``
calls after one warm-up call; GFLOP/s from the analytic ViT count (3 × forward for training).

    .venv/bin/python benchmarks/clip_step_breakdown.py ViT-B-32 16
    .venv/bin/python benchmarks/clip_step_breakdown.py ViT-B-32 16 --no-xla-towers
    .venv/bin/python benchmarks/clip_step_breakdown.py RN50 16 --no-xla-optimizer

Prints one JSON line. Timings of a shared machine are noisy: compare runs made side by side.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fair_runner as fr  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("batch_size", type=int)
    p.add_argument("--no-xla-towers", action="store_true")
    p.add_argument("--no-xla-optimizer", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    fr.pin({"threads": 2, "interop": 1, "framework": "tf"})
    import keras
    import tensorflow as tf

    from keras_clip.model import CLIP
    from keras_clip.optimizer import clip_optimizer
    from keras_clip.presets import get_preset

    keras.utils.set_random_seed(0)
    m = CLIP.from_preset(args.preset)
    m.compile(optimizer=clip_optimizer(m, total_steps=100, learning_rate=1e-5, warmup_steps=0),
              jit_compile=False, xla_towers=not args.no_xla_towers,
              xla_optimizer=not args.no_xla_optimizer,
              text_padding="max_length")  # all 77 positions, as open_clip
    images, ids = (tf.constant(x) for x in fr.synthetic_batch(get_preset(args.preset),
                                                               args.batch_size))
    variables = m.trainable_weights

    def timed(fn, reps=args.reps):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = fn()
            if r is not None:
                tf.nest.flatten(r)[0].numpy()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    forward_backward = fr.towers_forward_backward(m, images, ids)
    grads = forward_backward()
    out = {"preset": args.preset, "batch": args.batch_size, "xla_towers": m.xla_towers,
           "xla_optimizer": m.xla_optimizer,
           "forward_s": timed(tf.function(lambda: m._towers(images, ids, True))),
           "forward_backward_s": timed(forward_backward),
           "optimizer_s": timed(tf.function(lambda: m._apply_gradients(grads, variables)))}
    data = tf.data.Dataset.from_tensors({"images": images, "token_ids": ids}).repeat()
    train, _ = fr.fit_timed(m, data, warmup=1, steps=max(args.reps, 3))
    out["fit_step_s"] = train["timed_s"] / train["n"]
    out["matmul_peak_gflops"] = fr.peak_child({"framework": "tf"})["fp32"]
    if m.vision_patch_size:
        train_flops = 3 * sum(fr.analytic_flops(get_preset(args.preset)).values()) * args.batch_size
        out["fit_gflops"] = train_flops / out["fit_step_s"] / 1e9
        out["fit_share_of_peak"] = out["fit_gflops"] / out["matmul_peak_gflops"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
