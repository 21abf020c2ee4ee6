r"""Train the DALL·E transformer with `model.fit` on captions + frozen-dVAE image tokens.

    python -m keras_dalle.transformer.train --data shapes --vae runs/demo/dvae.keras --preset dalle-shapes \
        --logdir runs/dalle --output runs/dalle/dalle.keras

(the defaults: 5 epochs × 100 steps of batch 32, lr 1e-3, 20,000 training and 300 held-out
shapes examples; `make demo-dalle-train` adds ``--max-objects 1`` and uses the "dvae-shapes-8x8"
dVAE; results and timings: README, "Transformer" and "Prompt fidelity").

The grid size and image vocabulary come from the dVAE (a preset's are overridden to match).
`--data shapes` encodes the built-in "train" split once (`--num-examples` images) and trains on
the in-memory tokens; a shard path/glob (.tfrecord, .tar, .tsv, as `keras_clip.train`) is
streamed and encoded batch by batch, with `--eval-data` as its held-out set.

At the end it prints the image-token cross-entropy on held-out data (shapes: the "heldout"
split, whose colour–shape pairs never occur in training) against the unigram baseline: the
entropy of the training image tokens' unigram distribution (and that distribution's
cross-entropy on the held-out tokens). TensorBoard (`--logdir`): loss, text_loss, image_loss,
tokens_per_second per epoch. Training resumes from `<logdir>/backup` after an interruption
(`keras.callbacks.BackupAndRestore`, at epoch boundaries).
"""

import argparse
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag
from keras_clip.saving import load_model, save_model_atomic
from keras_clip.strategy import STRATEGIES, make_strategy
from keras_clip.text.tokenizer import VOCAB_SIZE
from keras_dalle.transformer.callbacks import SampleGrid, TokensPerSecond
from keras_dalle.vae.model import DiscreteVAE
from keras_dalle.transformer.presets import DALLE_PRESETS
from keras_dalle.transformer.data import (dalle_dataset, encode_token_arrays,
                                          positional_unigram_cross_entropy, shuffled_captions,
                                          token_dataset, unigram_cross_entropy, unigram_entropy)

__all__ = ["train_dalle", "heldout_image_loss", "main"]


def heldout_image_loss(model, arrays, batch_size=64):
    """Mean image-token cross-entropy (nats) of `model` over token arrays (every example)."""
    @tf.function
    def fn(text, image):
        return model.compute_losses(text, image)[2]

    total, count = 0.0, 0
    n = len(arrays["text_token_ids"])
    for start in range(0, n, batch_size):
        text = tf.constant(arrays["text_token_ids"][start:start + batch_size], tf.int32)
        image = tf.constant(arrays["image_tokens"][start:start + batch_size], tf.int32)
        image = tf.reshape(image, (len(text), -1))
        total += float(fn(text, image)) * len(text)
        count += len(text)
    return total / count


def _model_config(preset, vae, overrides):
    config = dict(DALLE_PRESETS[preset])
    config.update(overrides)
    # The stream must match the dVAE's grid and codebook, and the CLIP BPE's ids.
    config.update(grid_height=vae.token_grid_size, grid_width=vae.token_grid_size,
                  image_vocab_size=vae.vocab_size)
    config["text_vocab_size"] = max(config.get("text_vocab_size", VOCAB_SIZE), VOCAB_SIZE)
    return config


def _at_most(arrays, max_objects, num_examples, seed, image_size):
    # The shapes split is a pure function of (split, seed, index), and dalle_dataset kept its
    # order (shuffle=False), so row i of the arrays is scene i of generate_shapes.
    from keras_clip.data.shapes import generate_shapes

    # image_size: the dataset's, so generate_shapes' cache answers.
    scenes = generate_shapes(num_examples, split="train", image_size=image_size,
                             seed=seed)["attributes"]
    keep = np.array([len(s["objects"]) <= max_objects for s in scenes])
    if not keep.any():
        raise ValueError(f"no training scene has at most {max_objects} object(s)")
    return {key: value[keep] for key, value in arrays.items()}


def train_dalle(vae, data="shapes", preset="dalle-shapes", epochs=4, steps_per_epoch=20,
                batch_size=16, learning_rate=1e-3, weight_decay=0.01, logdir=None, output=None,
                strategy="default", cpu_replicas=None, mixed_precision=False, xla=True,
                attention_impl=None, num_examples=4_000, heldout_examples=300, eval_data=None,
                seed=0, verbose=2, sample_prompts=None, max_objects=None, **model_overrides):
    """Build, train, evaluate and save a `DALLE`; returns a result dict.

    vae: a `DiscreteVAE` or the path of a saved one (frozen; tokenizes the images).
    batch_size: the global batch (split over replicas). Returns dict(model, history,
    heldout_image_loss, unigram_entropy, unigram_heldout_cross_entropy, train_seconds,
    output, config). ``sample_prompts``: prompts whose samples go to TensorBoard each epoch
    (needs ``logdir``). ``max_objects`` (shapes only): train on the scenes with at most this many
    objects among the first ``num_examples`` (1: single-object captions only; None: all); the
    held-out set is unfiltered. Raises ValueError for ``max_objects`` with file data, or not 1
    or 2, or leaving no example.

    Example:
        >>> result = train_dalle("dvae.keras", preset="dalle-shapes", epochs=1, steps_per_epoch=5)
    """
    from keras_dalle.transformer.model import DALLE

    if max_objects is not None and (data != "shapes" or max_objects not in (1, 2)):
        raise ValueError("max_objects is for the shapes data (1 or 2 objects), got "
                         f"max_objects={max_objects!r} with data={data!r}")
    strategy = make_strategy(strategy, cpu_replicas)  # first: it may configure devices
    if isinstance(vae, (str, os.PathLike)):  # before the policy: the dVAE stays float32
        vae = load_model(vae, DiscreteVAE)
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(seed)
    if attention_impl is not None:
        model_overrides["attention_impl"] = attention_impl
    config = _model_config(preset, vae, model_overrides)
    text_len = config["text_len"]

    t0 = time.perf_counter()
    if data == "shapes":
        train = encode_token_arrays(dalle_dataset(
            "shapes", 256, vae, text_len, split="train", shuffle=False, seed=seed,
            num_examples=num_examples, drop_remainder=False))
        if max_objects is not None:
            train = _at_most(train, max_objects, num_examples, seed, vae.image_size)
        heldout = encode_token_arrays(dalle_dataset(
            "shapes", 256, vae, text_len, split="heldout", shuffle=False, seed=seed,
            num_examples=heldout_examples, drop_remainder=False)) if heldout_examples else None
        train_ds = token_dataset(train, batch_size, shuffle=True, seed=seed)
        unigram_tokens = train["image_tokens"]
    else:
        train_ds = dalle_dataset(data, batch_size, vae, text_len, split="train", shuffle=True,
                                 seed=seed, num_examples=num_examples).repeat()
        # The unigram baseline from (up to) 50 training batches.
        unigram_tokens = np.concatenate([b["image_tokens"].numpy() for b in train_ds.take(50)])
        heldout = encode_token_arrays(dalle_dataset(
            eval_data, 64, vae, text_len, split="val", shuffle=False,
            num_examples=heldout_examples, drop_remainder=False)) if eval_data else None
    encode_seconds = time.perf_counter() - t0
    if verbose:
        print(f"encoded the data with the dVAE in {encode_seconds:.0f} s")

    with strategy.scope():
        model = DALLE(**config)
        total = epochs * steps_per_epoch
        warmup = min(100, max(1, total // 10))
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, total - warmup), alpha=0.1, warmup_target=learning_rate,
            warmup_steps=warmup)
        model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay,
                                                       beta_2=0.95), xla=xla)
    callbacks = [TokensPerSecond(batch_size * model.sequence_length)]
    if logdir:
        callbacks += [keras.callbacks.BackupAndRestore(os.path.join(logdir, "backup")),
                      keras.callbacks.TensorBoard(logdir, update_freq="epoch")]
        if sample_prompts:
            callbacks.append(SampleGrid(sample_prompts, vae, logdir, seed=seed))
    t0 = time.perf_counter()
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        callbacks=callbacks, verbose=verbose, shuffle=False)  # already shuffled
    train_seconds = time.perf_counter() - t0

    result = dict(model=model, history=history.history, train_seconds=train_seconds,
                  encode_seconds=encode_seconds, output=output, config=model.get_config(),
                  unigram_entropy=unigram_entropy(unigram_tokens, model.image_vocab_size),
                  heldout_image_loss=None, unigram_heldout_cross_entropy=None,
                  positional_unigram_heldout_cross_entropy=None,
                  shuffled_captions_heldout_image_loss=None)
    if heldout is not None:
        result["heldout_image_loss"] = heldout_image_loss(model, heldout)
        result["unigram_heldout_cross_entropy"] = unigram_cross_entropy(
            unigram_tokens, heldout["image_tokens"], model.image_vocab_size)
        result["positional_unigram_heldout_cross_entropy"] = positional_unigram_cross_entropy(
            unigram_tokens, heldout["image_tokens"], model.image_vocab_size)
        if len(heldout["image_tokens"]) > 1:
            result["shuffled_captions_heldout_image_loss"] = heldout_image_loss(
                model, shuffled_captions(heldout, seed=seed))
        result["heldout_examples"] = len(heldout["image_tokens"])
    if output:
        save_model_atomic(model, output)
    return result


def _parser():
    p = argparse.ArgumentParser(prog="python -m keras_dalle.transformer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="shapes",
                   help='"shapes" or image–caption shards (.tfrecord, .tar, .tsv; glob or range)')
    p.add_argument("--eval-data", default=None, help="held-out shards (file data only)")
    p.add_argument("--vae", required=True, help="a trained DiscreteVAE (.keras)")
    p.add_argument("--preset", default="dalle-shapes", choices=sorted(DALLE_PRESETS))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--num-examples", type=int, default=20_000, help="training examples")
    p.add_argument("--heldout-examples", type=int, default=300)
    p.add_argument("--max-objects", type=int, default=None, choices=(1, 2),
                   help="shapes data: train only on scenes with at most this many objects")
    p.add_argument("--logdir", default=None, help="TensorBoard logs and the resume backup")
    p.add_argument("--output", default=None, help="where to save the model (.keras)")
    p.add_argument("--strategy", default="default", choices=STRATEGIES)
    p.add_argument("--cpu-replicas", type=int, default=None,
                   help="split the CPU into N logical devices (with --strategy mirrored)")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16, loss in float32")
    p.add_argument("--attention-impl", default=None, choices=["sparse", "masked_dense"])
    p.add_argument("--no-xla", action="store_true", help="don't XLA-compile the per-replica step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    p.add_argument("--sample-prompts", nargs="*", default=None,
                   help="prompts whose samples are written to TensorBoard after every epoch")
    add_tf_logs_flag(p)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    result = train_dalle(
        args.vae, data=args.data, preset=args.preset, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, logdir=args.logdir,
        output=args.output, strategy=args.strategy, cpu_replicas=args.cpu_replicas,
        mixed_precision=args.mixed_precision, xla=not args.no_xla,
        attention_impl=args.attention_impl, num_examples=args.num_examples,
        heldout_examples=args.heldout_examples, eval_data=args.eval_data, seed=args.seed,
        verbose=args.verbose, sample_prompts=args.sample_prompts, max_objects=args.max_objects)
    h = result["history"]
    print(f"trained {len(h['loss'])} epochs in {result['train_seconds']:.0f} s; final loss "
          f"{h['loss'][-1]:.4f} (text {h['text_loss'][-1]:.4f}, image {h['image_loss'][-1]:.4f})")
    print(f"unigram baseline: entropy of the training image tokens {result['unigram_entropy']:.4f} "
          "nats")
    if result["heldout_image_loss"] is not None:
        print(f"held-out image-token cross-entropy ({result['heldout_examples']} examples): "
              f"{result['heldout_image_loss']:.4f} nats; baselines on the same tokens: training "
              f"unigram {result['unigram_heldout_cross_entropy']:.4f}, per-position unigram "
              f"{result['positional_unigram_heldout_cross_entropy']:.4f} nats")
        if result["shuffled_captions_heldout_image_loss"] is not None:
            print("the same model with the held-out captions shuffled among the images: "
                  f"{result['shuffled_captions_heldout_image_loss']:.4f} nats")
    if result["output"]:
        print(f"saved {result['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
