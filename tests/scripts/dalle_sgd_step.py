"""One SGD step of the tiny DALL·E on a fixed global batch of 8; writes loss + weights to an npz.

    python dalle_sgd_step.py OUT.npz --strategy one|mirrored [--xla] [--impl sparse|masked_dense]

Used by tests/test_dalle_model.py (run in a subprocess: the logical CPU devices must be set
before TensorFlow starts).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--strategy", default="one")
parser.add_argument("--xla", action="store_true")
parser.add_argument("--impl", default="sparse")
args = parser.parse_args()

import tensorflow as tf  # noqa: E402

from keras_clip.strategy import make_strategy, split_cpu  # noqa: E402

if args.strategy == "mirrored":
    strategy = make_strategy("mirrored", cpu_replicas=2)
else:
    split_cpu(2)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_dalle.transformer.model import DALLE  # noqa: E402

rng = np.random.default_rng(0)
text = rng.integers(1, 64, (8, 8)).astype("int32")
text[:, 5:] = 0  # pads
image = rng.integers(0, 16, (8, 4, 4)).astype("int32")
ds = tf.data.Dataset.from_tensor_slices({"text_token_ids": text, "image_tokens": image}).batch(8)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
ds = ds.with_options(options)

keras.utils.set_random_seed(1)
with strategy.scope():
    model = DALLE.from_preset("dalle-tiny", attention_impl=args.impl)
    model.compile(optimizer=keras.optimizers.SGD(0.5), xla=args.xla)
history = model.fit(ds, epochs=1, verbose=0)
np.savez(args.out, loss=history.history["loss"][0], replicas=strategy.num_replicas_in_sync,
         **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)})
