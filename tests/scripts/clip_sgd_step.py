"""One SGD step of a tiny CLIP on a fixed global batch of 8; writes loss + weights to an npz.

    python clip_sgd_step.py OUT.npz --strategy one|mirrored|multi_worker [--xla]
        [--accum-freq K] [--loss contrastive|siglip]

Used by tests/test_train_distributed.py (run in a subprocess: logical devices and TF_CONFIG
must be set before TensorFlow starts).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--strategy", default="one")
parser.add_argument("--xla", action="store_true")
parser.add_argument("--steps", type=int, default=1)
parser.add_argument("--accum-freq", type=int, default=1)
parser.add_argument("--loss", default="contrastive")
args = parser.parse_args()

import tensorflow as tf  # noqa: E402

from keras_clip.strategy import make_strategy, split_cpu  # noqa: E402

if args.strategy == "mirrored":
    strategy = make_strategy("mirrored", cpu_replicas=2)
elif args.strategy == "multi_worker":
    strategy = make_strategy("multi_worker")
else:
    split_cpu(2)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

import keras  # noqa: E402
keras.config.disable_traceback_filtering()
import numpy as np  # noqa: E402

from keras_clip.model import CLIP  # noqa: E402

rng = np.random.default_rng(0)
images = rng.standard_normal((8 * args.steps, 32, 32, 3)).astype("float32")
ids = np.zeros((8 * args.steps, 77), np.int32)
ids[:, 0], ids[:, 2] = 49406, 49407
ids[:, 1] = rng.integers(1, 40000, 8 * args.steps)
ds = tf.data.Dataset.from_tensor_slices({"images": images, "token_ids": ids}).batch(8)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
ds = ds.with_options(options)

keras.utils.set_random_seed(1)
with strategy.scope():
    siglip = dict(logit_bias_init=-10.0, logit_scale_init=float(np.log(10))) \
        if args.loss == "siglip" else {}
    model = CLIP.from_preset("ViT-Tiny", **siglip)
    model.compile(optimizer=keras.optimizers.SGD(0.1), xla_towers=args.xla, jit_compile=False,
                  loss=args.loss, accum_freq=args.accum_freq)
history = model.fit(ds, epochs=1, verbose=0)
np.savez(args.out, loss=history.history["loss"][0], replicas=strategy.num_replicas_in_sync,
         **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)})
