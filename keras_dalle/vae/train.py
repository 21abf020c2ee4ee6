"""Train a DALL·E discrete VAE with `model.fit` (recipe and options: `keras_dalle.vae`).

    python -m keras_dalle.vae.train --data shapes --preset dvae-shapes --epochs 5 \\
        --batch-size 8 --steps-per-epoch 220 --logdir logs/dvae --out dvae-shapes.keras

(those are the preset's defaults, see `keras_dalle.vae.presets`; results and timings: README,
"Discrete VAE"). At the end it prints the held-out PSNR of the argmax-token reconstructions and
the codebook usage.

`--data shapes` trains on the built-in shapes images (`keras_clip.data.shapes`, "train" split;
held-out: the "heldout" split, whose colour–shape pairs never occur in training). `--data PATH`
reads image–caption shards (`keras_clip.data.readers`: img2dataset TFRecords, WebDataset tars,
open_clip TSV/CSV; a glob or brace range), decodes the images and resizes / centre-crops them
to the preset's size; the first `--heldout-examples` images are held out, training uses the
rest. Captions are ignored.

The library function is `train_vae(...)`; the CLI only parses arguments.
"""

import argparse
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag
from keras_clip.saving import save_model_atomic
from keras_dalle.vae.presets import PRESETS, dvae_from_preset, get_training_preset
from keras_dalle.vae.model import DiscreteVAE
from keras_dalle.vae.callbacks import (VAEReconstructionCallback, as_unit_images,
                                       evaluate_reconstruction)

__all__ = ["train_vae", "vae_dataset", "heldout_images", "save_model_atomic", "main"]


# ----------------------------------------------------------------------------------------------
# Data

def _decoded_images(source, image_size, shuffle, seed):
    """Unbatched float32 [S, S, 3] images in [0, 1] from image–caption shards."""
    from keras_clip.data import readers

    counter = readers.SkipCounter()
    records = readers.read_source(source, split="train", shuffle=shuffle, seed=seed,
                                  skip_counter=counter)
    if shuffle:
        records = records.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    # Captions are not needed by the dVAE: decode images only (bad images are dropped/counted).
    examples = readers.decode_images(records, image_size, counter, image_format="unit")
    return examples.map(lambda x: x["images"], num_parallel_calls=tf.data.AUTOTUNE), counter


def vae_dataset(data, batch_size, image_size, num_examples=None, skip=0, seed=0, repeat=True,
                shuffle=True):
    """Batched float32 [B, S, S, 3] images in [0, 1] for `DiscreteVAE.fit`.

    data: "shapes" (built-in "train" split; `num_examples` images generated once, default
    20,000) or a shard path / glob (see the module docstring; the first `skip` decodable images
    are skipped — they are the held-out set). Infinite when `repeat` (use `steps_per_epoch`).
    """
    if data == "shapes":
        from keras_clip.data.shapes import shapes_dataset

        ds = shapes_dataset("train", num_examples=num_examples, image_size=image_size,
                            seed=seed)
        n = int(ds.cardinality())
        ds = ds.map(lambda x: x["images"])
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    else:
        ds, _ = _decoded_images(data, image_size, shuffle=False, seed=seed)
        ds = ds.skip(skip)
        if num_examples is not None:
            ds = ds.take(num_examples)
        if shuffle:
            ds = ds.shuffle(2_048, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(as_unit_images, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def heldout_images(data, image_size, num_examples, seed=0):
    """Held-out images as a numpy array (uint8 for shapes, float32 in [0, 1] for files).

    shapes: the "heldout" split; files: the first `num_examples` decodable images.
    """
    if num_examples <= 0:
        return None
    if data == "shapes":
        from keras_clip.data.shapes import generate_shapes

        return np.asarray(generate_shapes(num_examples, split="heldout", image_size=image_size,
                                          seed=seed)["images"])
    ds, _ = _decoded_images(data, image_size, shuffle=False, seed=seed)
    images = [x.numpy() for x in ds.take(num_examples)]
    if not images:
        raise ValueError(f"no decodable images in {data!r}")
    return np.stack(images)


# ----------------------------------------------------------------------------------------------
# Training

def train_vae(data="shapes", preset="dvae-shapes", epochs=None, batch_size=None,
              steps_per_epoch=None, learning_rate=None, logdir=None, out=None,
              num_train_examples=None, heldout_examples=1000, resume=None, strategy=None,
              seed=0, verbose="auto", model_overrides=None, callbacks=None):
    """Trains a `DiscreteVAE` from a preset and returns a result dict.

    Args:
        data: "shapes" or a shard path / glob (see `vae_dataset`).
        preset: a `keras_dalle.vae.presets` name; its `TRAINING_PRESETS` entry supplies the
            defaults for `epochs`, `batch_size`, `steps_per_epoch` and the optimizer.
        learning_rate: peak learning rate (AdamW, cosine decay over the whole run to
            `final_learning_rate_fraction` of it).
        logdir: TensorBoard directory: the epoch scalars (`keras.callbacks.TensorBoard`,
            logdir/train) and, per epoch, an image grid of held-out originals vs
            reconstructions plus held-out PSNR / codebook usage (logdir/reconstructions).
        out: `.keras` path; written atomically at the end.
        num_train_examples: shapes images to generate for training (default 20,000) / file
            images to use (default: all after the held-out ones).
        heldout_examples: held-out images for the final evaluation and the callback.
        resume: a `.keras` file of a compiled `DiscreteVAE` to continue training (its
            optimizer state, iteration counter and hence τ / β schedules carry on).
        strategy: a `tf.distribute.Strategy` (default: the current one).
        model_overrides: extra `DiscreteVAE` arguments over the preset.
        callbacks: extra Keras callbacks.

    Returns dict(model, history (dict of lists), heldout (evaluate_reconstruction dict or None),
    train_seconds, steps, out).
    """
    training = get_training_preset(preset)
    epochs = int(epochs if epochs is not None else training["epochs"])
    batch_size = int(batch_size if batch_size is not None else training["batch_size"])
    steps_per_epoch = int(steps_per_epoch if steps_per_epoch is not None
                          else training["steps_per_epoch"])
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("steps_per_epoch", steps_per_epoch)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    keras.utils.set_random_seed(seed)
    strategy = strategy or tf.distribute.get_strategy()
    total_steps = epochs * steps_per_epoch

    with strategy.scope():
        if resume is not None:
            vae = keras.saving.load_model(resume)
            if not isinstance(vae, DiscreteVAE):
                raise ValueError(f"{resume} does not hold a DiscreteVAE")
            if getattr(vae, "optimizer", None) is None:
                raise ValueError(f"{resume} was saved without an optimizer; cannot resume")
        else:
            vae = dvae_from_preset(preset, **(model_overrides or {}))
            opt_args = dict(training["optimizer"])
            peak = float(learning_rate if learning_rate is not None
                         else opt_args.pop("learning_rate"))
            opt_args.pop("learning_rate", None)
            fraction = float(training.get("final_learning_rate_fraction", 1.0))
            schedule = peak if fraction >= 1.0 else keras.optimizers.schedules.CosineDecay(
                peak, decay_steps=total_steps, alpha=fraction)
            vae.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, **opt_args))

    heldout = heldout_images(data, vae.image_size, heldout_examples, seed=seed)
    train_ds = vae_dataset(data, batch_size, vae.image_size, num_examples=num_train_examples,
                           skip=heldout_examples if data != "shapes" else 0, seed=seed)

    cbs = list(callbacks or [])
    if logdir is not None and heldout is not None:
        cbs.append(VAEReconstructionCallback(logdir, images=heldout[:16], heldout=heldout))
    if logdir is not None:
        cbs.append(keras.callbacks.TensorBoard(logdir, update_freq="epoch"))

    start = time.perf_counter()
    history = vae.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=cbs,
                      verbose=verbose, shuffle=False)  # the dataset is already shuffled
    train_seconds = time.perf_counter() - start

    stats = evaluate_reconstruction(vae, heldout) if heldout is not None else None
    if out is not None:
        save_model_atomic(vae, out)
    return dict(model=vae, history=history.history, heldout=stats, train_seconds=train_seconds,
                steps=int(vae.optimizer.iterations.numpy()), out=out)


# ----------------------------------------------------------------------------------------------
# CLI

def _parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_dalle.vae.train",
        description="Train a DALL·E discrete VAE (gumbel-softmax, logit-Laplace, KL to the "
                    "uniform prior) with model.fit.")
    p.add_argument("--data", default="shapes",
                   help='"shapes" (built-in) or image–caption shards: .tfrecord / .tar / .tsv, '
                        "a glob or a {000..009} range")
    p.add_argument("--preset", default="dvae-shapes", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: the preset's")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak AdamW learning rate (cosine decay); default: the preset's")
    p.add_argument("--num-train-examples", type=int, default=None)
    p.add_argument("--heldout-examples", type=int, default=1000)
    p.add_argument("--logdir", default=None, help="TensorBoard log directory")
    p.add_argument("--out", default=None, help="output .keras file (written atomically)")
    p.add_argument("--resume", default=None, help="continue training a saved .keras model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    add_tf_logs_flag(p)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    result = train_vae(data=args.data, preset=args.preset, epochs=args.epochs,
                       batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                       learning_rate=args.learning_rate, logdir=args.logdir, out=args.out,
                       num_train_examples=args.num_train_examples,
                       heldout_examples=args.heldout_examples, resume=args.resume,
                       seed=args.seed, verbose=args.verbose)
    print(f"trained {result['steps']} steps in {result['train_seconds']:.0f} s")
    stats = result["heldout"]
    if stats is not None:
        print(f"held-out ({stats['num_images']} images): PSNR {stats['psnr']:.2f} dB, codebook "
              f"usage {100 * stats['codebook_usage']:.1f}% ({stats['codes_used']}/"
              f"{result['model'].vocab_size} codes), perplexity {stats['perplexity']:.1f}")
    if result["out"]:
        print(f"saved {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
