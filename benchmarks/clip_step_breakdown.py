"""Where a CLIP training step's time goes (issue 18's "profile first"; a profiling aid, not yet a
BENCHMARKS table): the towers' forward pass, forward + backward (the train step's tape), the
AdamW update alone, a whole `fit` step, and a 2048² float32 `tf.matmul` as the peak, in one
process (TensorFlow intra-op threads 2, inter-op 1; medians of 3 after one warm-up call).

    .venv/bin/python benchmarks/clip_step_breakdown.py ViT-B-32 16
"""
import json
import os
import sys
import time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(2); tf.config.threading.set_inter_op_parallelism_threads(1)
import keras
from keras_clip.model import CLIP, _tf_variables
from keras_clip.optimizer import clip_optimizer
preset, b = sys.argv[1], int(sys.argv[2])
keras.utils.set_random_seed(0)
m = CLIP.from_preset(preset)
m.compile(optimizer=clip_optimizer(m, total_steps=100, learning_rate=1e-5, warmup_steps=0), jit_compile=False)
rng = np.random.default_rng(0)
images = tf.constant(rng.standard_normal((b, m.image_size, m.image_size, 3)).astype("float32"))
ids = np.zeros((b, m.context_length), np.int32); ids[:, 0], ids[:, 13] = 49406, 49407
ids[:, 1:13] = rng.integers(1, 49000, (b, 12)); ids = tf.constant(ids)
variables = m.trainable_weights
def t(fn, n=3):
    fn(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); r = fn()
        if r is not None: [x.numpy() for x in tf.nest.flatten(r)[:1]]
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
fwd = tf.function(lambda: m._towers(images, ids, True))
@tf.function
def fwd_bwd():
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(_tf_variables(variables))
        img, txt = m._towers(images, ids, True, tape)
        loss = m._loss(img, txt)
    return tape.gradient(loss, _tf_variables(variables))
grads = fwd_bwd()
@tf.function
def apply():
    m.optimizer.apply_gradients(zip(grads, variables))
out = {"preset": preset, "batch": b, "forward_s": t(fwd), "forward_backward_s": t(fwd_bwd), "optimizer_s": t(apply)}
data = tf.data.Dataset.from_tensors({"images": images, "token_ids": ids}).repeat()
m.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
t0 = time.perf_counter(); m.fit(data, steps_per_epoch=5, epochs=1, verbose=0); out["fit_step_s"] = (time.perf_counter() - t0) / 5
a = tf.random.normal((2048, 2048)); mm = tf.function(lambda: tf.matmul(a, a))
out["matmul_gflops"] = 2 * 2048**3 / t(mm, 10) / 1e9
print(json.dumps(out))
