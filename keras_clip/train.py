r"""Train CLIP with ``model.fit`` on the built-in shapes data or image–caption shards.

    python -m keras_clip.train --preset ViT-S-Demo --data shapes --epochs 10 --batch-size 128 \
        --logdir runs/clip --output runs/clip/clip.keras

Fine-tuning, open_clip's way: ``--init-from CHECKPOINT`` starts from pretrained weights (a
``.keras`` model or anything `keras_clip.load_pretrained` reads; the architecture comes from it),
``--lock-image`` / ``--lock-text`` lock towers (LiT: ``--lock-image`` alone), ``--accum-freq K``
accumulates K micro-batches without losing negatives, ``--loss siglip`` trains with SigLIP's
sigmoid loss.

The run resumes from ``<logdir>/backup`` when restarted, at the batch after its last backup
(every ``--save-freq`` steps and at each epoch end); steps trained after that backup are
trained again. A run whose backup already holds every step of ``--epochs`` trains nothing
and says so (``--output`` is still written, from the backup). A backup made by a different run
(another model or ``--init-from``, data, split, loss, batch size, accumulation, seed, precision
or locks) is refused with an error naming what differs; epochs, steps and the optimizer's
settings may change on resume.

Test hook: ``KERAS_CLIP_TEST_KILL_AT_STEP`` (see ``callbacks.ResumableBackup``).
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_clip.cli import (RawDescriptionDefaultsHelpFormatter, add_tf_logs_flag,
                            non_negative_int, positive_int)
from keras_clip import callbacks as cb
from keras_clip.saving import ModelClassError, save_model_atomic
from keras_clip.strategy import STRATEGIES, is_chief, make_strategy
from keras_clip.validation import check_positive_int


# Zero-shot prompts in the captions' own register ("a small red circle"). Small and large
# shapes look different, so each size is its own prototype (ensemble="max"): averaging the two
# embeddings gave 20-30% top-1 where the per-size prototypes gave 88% on the same model.
SHAPES_TEMPLATES = ("a small {}", "a large {}")


def shapes_eval_data(image_size, num_examples, seed=0, context_length=77):
    """Evaluation sets from the built-in shapes data.

    Zero-shot classification (val and heldout splits) uses the single-object images: with two
    objects the image alone cannot tell which one the caption names first, so "the class of
    the first object" is not a well-posed label. Retrieval (val) uses every image and caption.

    Returns ``(classnames, zero_shot, retrieval, projector_sample)``.
    """
    from keras_clip.data import shapes
    from keras_clip.preprocessing import CLIPImagePreprocessor
    from keras_clip.text.tokenizer import tokenize

    pre = CLIPImagePreprocessor(image_size=image_size)
    zero_shot, retrieval, sample = {}, {}, None
    for split in ("val", "heldout"):
        # About half the scenes have one object: draw twice as many to keep num_examples of them.
        data = shapes.generate_shapes(2 * num_examples, split=split, image_size=image_size, seed=seed)
        images = pre(data["images"]).numpy()
        single = np.array([len(a["objects"]) == 1 for a in data["attributes"]])
        keep = np.flatnonzero(single)[:num_examples]
        zero_shot[split] = (images[keep], shapes.labels(data["attributes"])[keep])
        if split == "val":
            ids = tokenize(data["captions"][:num_examples], context_length=context_length)
            retrieval[split] = (images[:num_examples], ids)
            sample = (images[:200], ids[:200], data["captions"][:200])
    return shapes.class_names(), zero_shot, retrieval, sample


def _initial_model(init_from, preset, loss, overrides):
    """The model to train: a preset, or ``init_from``'s architecture and weights (plus SigLIP's
    logit bias when switching to loss="siglip": bias -10 and logit scale ln 10, SigLIP's init)."""
    import math

    from keras_clip.checkpoints import load_clip
    from keras_clip.model import CLIP

    siglip = dict(logit_bias_init=-10.0, logit_scale_init=math.log(10.0))
    if init_from is None:
        return CLIP.from_preset(preset, **(siglip if loss == "siglip" else {}), **overrides)
    if os.fspath(init_from).endswith(".keras"):
        source = load_clip(init_from)
    else:  # a checkpoint: the overrides (e.g. activation) describe it
        source, overrides = load_clip(init_from, **overrides), {}
    if loss != "siglip" or source.logit_bias is not None:
        if not overrides:
            return source
        siglip = {}
    if siglip:
        print(f"--loss siglip on {init_from}: adding SigLIP's logit bias (-10) and resetting the "
              f"logit scale to ln 10 (was {float(source.logit_scale.numpy()):.4f})")
    config = dict(source.get_config(), **overrides, **siglip)
    config.pop("name", None)
    model = CLIP.from_config(config)
    fresh = {"logit_scale", "logit_bias"} if siglip else set()
    by_path = {v.path.split("/", 1)[-1]: v for v in source.weights}
    for variable in model.weights:
        key = variable.path.split("/", 1)[-1]
        if key in fresh:
            continue
        if key not in by_path or tuple(by_path[key].shape) != tuple(variable.shape):
            raise ValueError(f"--init-from {init_from}: cannot copy {key} into the model built "
                             f"with {overrides}")
        variable.assign(by_path[key])
    return model


def lock_towers(model, lock_image=False, lock_image_unlocked_groups=0,
                lock_image_freeze_bn_stats=False, lock_text=False, lock_text_unlocked_layers=0,
                lock_text_freeze_layer_norm=True):
    """Applies the ``--lock-*`` options (open_clip's) to ``model``; returns a one-line summary.

    Prints a warning line for a tower asked to be locked whose unlocked groups / layers are all
    of its groups: nothing of it is locked (0 locks it whole)."""
    from keras_clip.locking import image_tower_groups, text_tower_groups

    if not lock_image and (lock_image_unlocked_groups or lock_image_freeze_bn_stats):
        raise ValueError("--lock-image-unlocked-groups / --lock-image-freeze-bn-stats need "
                         "--lock-image")
    if not lock_text and lock_text_unlocked_layers:
        raise ValueError("--lock-text-unlocked-layers needs --lock-text")
    before = len(model.trainable_weights)
    if lock_image:
        model.lock_image_tower(lock_image_unlocked_groups, lock_image_freeze_bn_stats)
        _warn_if_nothing_locked("--lock-image-unlocked-groups", lock_image_unlocked_groups,
                                len(image_tower_groups(model)), "image tower")
    if lock_text:
        model.lock_text_tower(lock_text_unlocked_layers, lock_text_freeze_layer_norm)
        _warn_if_nothing_locked("--lock-text-unlocked-layers", lock_text_unlocked_layers,
                                len(text_tower_groups(model)), "text tower")
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return (f"{before - len(model.trainable_weights)} of {before} weight tensors locked; "
            f"{trainable:,} trainable parameters")


def _warn_if_nothing_locked(option, unlocked, groups, tower):
    if unlocked >= groups:  # (more than there are is refused by the lock itself)
        print(f"warning: {option} {unlocked} leaves all {groups} groups of the {tower} "
              f"unlocked: nothing of the {tower} is locked (0 locks it whole)")


XLA_TOWERS = {"auto": "auto", "on": True, "off": False}  # --xla-towers → compile's xla_towers


def train_clip(preset="ViT-S-Demo", data="shapes", epochs=10, batch_size=128,
               steps_per_epoch=None, logdir="runs/clip", output=None, learning_rate=5e-4,
               warmup_steps=None, weight_decay=0.2, strategy="default", cpu_replicas=None,
               mixed_precision=False, xla="auto", seed=0, eval_examples=1000, save_freq=50,
               profile=False, deterministic=True, num_examples=None, verbose=1, init_from=None,
               loss=None, accum_freq=1, lock_image=False, lock_image_unlocked_groups=0,
               lock_image_freeze_bn_stats=False, lock_text=False, lock_text_unlocked_layers=0,
               lock_text_freeze_layer_norm=True, split="train", text_padding="longest",
               **model_overrides):
    """Build, train and save a CLIP; returns ``(model, history_dict)``.

    ``batch_size`` is the global batch (split over replicas); ``data`` is "shapes" or a shard
    path/glob (.tfrecord, .tar, .tsv); ``split`` is the shapes split ("finetune" has the held-out
    pairs) or fills ``{split}`` in a path. Logs, backups and checkpoints go to ``logdir``.

    ``history["already_complete"]`` is True when the backup in ``logdir`` already held every
    step of the run (nothing trained).

    Fine-tuning: ``init_from`` (a ``.keras`` model or a checkpoint `load_pretrained` reads;
    ``preset`` is then ignored), ``loss`` ("contrastive" or "siglip"), ``accum_freq`` (micro-batches
    per step, see ``CLIP.compile``), and the ``lock_*`` options (see `lock_towers`). Raises
    ValueError when ``accum_freq`` × replicas does not divide ``batch_size``. ``xla`` is
    ``CLIP.compile``'s ``xla_towers`` (True, False or "auto"); ``text_padding`` its
    ``text_padding`` ("longest": each step's token ids cut after the batch's longest text,
    the same loss for less work; "max_length": all ``context_length`` positions).

    Example:
        >>> model, history = train_clip("ViT-Tiny", epochs=1, batch_size=32, steps_per_epoch=5)
    """
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    if steps_per_epoch is not None:
        steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
    save_freq = check_positive_int("save_freq", save_freq)
    eval_examples = check_positive_int("eval_examples", eval_examples or 0, minimum=0)
    from keras_clip.data.readers import SkipCounter, make_clip_dataset
    from keras_clip.optimizer import clip_optimizer

    strategy = make_strategy(strategy, cpu_replicas)  # first: it may configure devices
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    chief = is_chief()
    if not chief:  # other workers log to a throwaway folder (MultiWorkerMirroredStrategy)
        logdir = tempfile.mkdtemp(prefix="keras_clip_worker_")

    with strategy.scope():
        model = _initial_model(init_from, preset, loss, model_overrides)
    if loss is None:  # the starting model's own: SigLIP's if it has SigLIP's logit bias
        loss = "siglip" if model.logit_bias is not None else "contrastive"
    if batch_size % (accum_freq * strategy.num_replicas_in_sync):
        raise ValueError(f"accum_freq {accum_freq} x {strategy.num_replicas_in_sync} replica(s) "
                         f"does not divide the batch size {batch_size}")
    lock_summary = lock_towers(model, lock_image, lock_image_unlocked_groups,
                               lock_image_freeze_bn_stats, lock_text, lock_text_unlocked_layers,
                               lock_text_freeze_layer_norm)
    if lock_image or lock_text:
        print(f"Locked towers: {lock_summary}")
    skip_counter = SkipCounter()

    def stream():
        # A fresh dataset object per fit() call: its shuffle order for repeat k is then a pure
        # function of (seed, k), so a resumed run that skips the batches already trained on sees
        # exactly the batches an uninterrupted run would (one object reshuffles per iterator).
        return make_clip_dataset(data, batch_size, image_size=model.image_size, split=split,
                                 shuffle=True, seed=seed, num_examples=num_examples,
                                 context_length=model.context_length, skip_counter=skip_counter)

    dataset = stream()
    if steps_per_epoch is None:
        cardinality = int(dataset.cardinality())
        if cardinality <= 0:
            raise ValueError(f"Cannot tell how many batches {data!r} holds; pass steps_per_epoch "
                             "(--steps-per-epoch)")
        steps_per_epoch = cardinality
    total_steps = epochs * steps_per_epoch
    with strategy.scope():
        model.compile(optimizer=clip_optimizer(
            model, total_steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
            weight_decay=weight_decay), loss=loss, accum_freq=accum_freq,
            xla_towers=xla, text_padding=text_padding, jit_compile=False)
    # What makes a backup this run's: resuming another run's backup would silently drop
    # init_from, the locks or the loss (found by a new-user trial). The length of the run and
    # the optimizer's hyper-parameters may change on resume (e.g. more epochs).
    run_config = dict(
        init_from=os.path.abspath(init_from) if isinstance(init_from, (str, os.PathLike))
        else None, preset=None if init_from is not None else preset,
        model_overrides={k: model_overrides[k] for k in sorted(model_overrides)},
        data=data if not isinstance(data, (str, os.PathLike)) or data == "shapes"
        else os.path.abspath(data), split=split, num_examples=num_examples, loss=loss,
        accum_freq=accum_freq, batch_size=batch_size, seed=seed,
        mixed_precision=bool(mixed_precision), locks=dict(model.locks))
    backup = cb.ResumableBackup(os.path.join(logdir, "backup"), save_freq=save_freq,
                                run_config=run_config)
    backup.set_model(model)
    start = backup.restore()
    callbacks = [backup, cb.SkipCountLogger(skip_counter)]
    if eval_examples and data == "shapes":
        names, zero_shot, retrieval, sample = shapes_eval_data(
            model.image_size, eval_examples, seed, model.context_length)
        callbacks.append(cb.ZeroShotEvaluation(names, SHAPES_TEMPLATES, zero_shot, retrieval,
                                               ensemble="max"))
        callbacks.append(cb.EmbeddingProjector(logdir, *sample))
    callbacks += [
        keras.callbacks.TensorBoard(logdir, update_freq="epoch", profile_batch=(2, 4) if profile else 0),
        keras.callbacks.ModelCheckpoint(os.path.join(logdir, "checkpoints", "epoch-{epoch:03d}.keras")),
    ]

    history, t0 = {}, time.time()
    epoch, batch = divmod(start, steps_per_epoch)
    runs = []
    history["already_complete"] = start >= total_steps
    if history["already_complete"]:
        print(f"Nothing to train: the backup in {backup.backup_dir} is at global step {start}, "
              f"and this run has {total_steps} ({epochs} epochs x {steps_per_epoch} steps); the "
              "run was already complete")
    elif start:
        print(f"Resuming from {backup.backup_dir} at global step {start} (epoch {epoch + 1}, batch {batch})")
    if batch and not history["already_complete"]:  # finish the interrupted epoch first
        runs.append((epoch, steps_per_epoch - batch))
        epoch += 1
    if epoch < epochs:
        runs.append((epoch, steps_per_epoch))
    for first_epoch, steps in runs:
        done = first_epoch * steps_per_epoch + (steps_per_epoch - steps)
        last = first_epoch + 1 if steps != steps_per_epoch else epochs
        h = model.fit(stream().repeat().skip(done), epochs=last, initial_epoch=first_epoch,
                      shuffle=False,  # the tf.data stream is shuffled already
                      steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
        for k, v in h.history.items():
            history.setdefault(k, []).extend(v)
    history["train_seconds"] = time.time() - t0
    # Where this process started and ended, and how many batches it trained (a resumed run
    # trains only the steps after its backup).
    history["start_step"] = start
    history["end_step"] = int(model.optimizer.iterations.numpy())
    history["steps_run"] = backup.steps_run
    if output and chief:
        save_model_atomic(model, output)
    return model, history


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_clip.train",
                                description=__doc__.split("\n\nTest hook:")[0],
                                formatter_class=RawDescriptionDefaultsHelpFormatter)
    p.add_argument("--preset", default=None, help="architecture (default ViT-S-Demo; not with "
                                                  "--init-from)")
    p.add_argument("--init-from", default=None,
                   help="start from these weights: a .keras model, or a checkpoint file / folder "
                        "load_pretrained reads (architecture taken from it)")
    p.add_argument("--loss", default=None, choices=["contrastive", "siglip"],
                   help="default: contrastive, or siglip for an --init-from model trained with it "
                        "(one with a logit bias); switching a CLIP to siglip adds SigLIP's bias "
                        "(-10) and resets its logit scale to SigLIP's ln 10")
    p.add_argument("--accum-freq", type=positive_int, default=1,
                   help="micro-batches per step, keeping every negative (open_clip's)")
    p.add_argument("--grad-accum", nargs="?", const="", default=None,
                   help=argparse.SUPPRESS)  # removed: a usage error pointing to --accum-freq
    p.add_argument("--lock-image", action="store_true", help="lock the image tower (LiT)")
    p.add_argument("--lock-image-unlocked-groups", type=non_negative_int, default=0,
                   help="leave the last N groups of the image tower unlocked")
    p.add_argument("--lock-image-freeze-bn-stats", action="store_true",
                   help="freeze the locked groups' BatchNorm statistics (ResNet towers; a "
                   "ViT has none)")
    p.add_argument("--lock-text", action="store_true", help="lock the text tower")
    p.add_argument("--lock-text-unlocked-layers", type=non_negative_int, default=0,
                   help="leave the last N layers (groups: embeddings, each block, the last "
                   "block + ln_final, text_projection) of the text tower unlocked")
    p.add_argument("--lock-text-freeze-layer-norm", action="store_true",
                   help="also freeze the locked layers' LayerNorms (as open_clip's CLI, they "
                        "stay trainable without this flag)")
    p.add_argument("--data", default="shapes",
                   help='"shapes" or shard path/glob (.tfrecord, .tar, .tsv tab-separated / .csv '
                        "comma-separated, with filepath and title columns)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs to train")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size")
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="batches per epoch (default: one pass over the data; needed for data "
                        "whose length is unknown)")
    p.add_argument("--split", default="train",
                   help='shapes split (train; "finetune" has the held-out pairs) or the {split} '
                        "of a shard path")
    p.add_argument("--num-examples", type=positive_int, default=None,
                   help="limit the training examples")
    p.add_argument("--logdir", default="runs/clip",
                   help="TensorBoard logs, the resumable backup and per-epoch checkpoints")
    p.add_argument("--output", default=None, help="where to save the trained model (.keras)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps before the cosine decay (default: 5%% of the "
                        "run's steps)")
    p.add_argument("--weight-decay", type=float, default=0.2, help="AdamW weight decay")
    p.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute strategy")
    p.add_argument("--cpu-replicas", type=positive_int, default=None,
                   help="split the CPU into N logical devices (with --strategy mirrored)")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16, loss in float32")
    p.add_argument("--xla-towers", choices=tuple(XLA_TOWERS), default=None,
                   help="XLA-compile the per-replica towers: auto (default) = on under a "
                        "multi-replica strategy; on one device off where TensorFlow's CPU "
                        "kernels are oneDNN's or with --mixed-precision, else on (see "
                        "CLIP.compile)")
    p.add_argument("--no-xla", action="store_true", help="same as --xla-towers off")
    p.add_argument("--text-padding", choices=("longest", "max_length"), default="longest",
                   help="longest (default): each step cuts the token ids after the batch's "
                        "longest caption, in multiples of 16 (same loss, less text-tower work); "
                        "max_length: all context_length positions, as open_clip")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data and shuffle")
    p.add_argument("--eval-examples", type=non_negative_int, default=1000,
                   help="0 disables evaluation")
    p.add_argument("--save-freq", type=positive_int, default=50, help="backup every N steps")
    p.add_argument("--profile", action="store_true", help="profiler trace of steps 2-4")
    p.add_argument("--text-encoder", default=None, choices=["transformer", "cbow"],
                   help="override the preset's text tower")
    p.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (0, 1 or 2)")
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    if args.grad_accum is not None:
        p.error("--grad-accum was removed: use --accum-freq K (it averaged the K micro-batch "
                "losses, so each saw only its own micro-batch's negatives; --accum-freq keeps "
                "every negative of the whole batch in one loss, as open_clip does)")
    if args.no_xla and args.xla_towers not in (None, "off"):
        p.error(f"--no-xla contradicts --xla-towers {args.xla_towers}: give one of them")
    if args.lock_text_freeze_layer_norm and not args.lock_text:
        p.error("--lock-text-freeze-layer-norm needs --lock-text")
    if args.init_from and (args.preset or args.text_encoder):
        p.error("--init-from takes the architecture from the checkpoint: leave out --preset / "
                "--text-encoder")
    overrides = {"text_encoder": args.text_encoder} if args.text_encoder else {}
    try:
        _, history = train_clip(
            preset=args.preset or "ViT-S-Demo", data=args.data, epochs=args.epochs,
            batch_size=args.batch_size,
            steps_per_epoch=args.steps_per_epoch, logdir=args.logdir, output=args.output,
            learning_rate=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            strategy=args.strategy, cpu_replicas=args.cpu_replicas,
            mixed_precision=args.mixed_precision,
            xla=XLA_TOWERS["off" if args.no_xla else args.xla_towers or "auto"], seed=args.seed,
            eval_examples=args.eval_examples, save_freq=args.save_freq, profile=args.profile,
            num_examples=args.num_examples, verbose=args.verbose, init_from=args.init_from,
            loss=args.loss, accum_freq=args.accum_freq, lock_image=args.lock_image,
            lock_image_unlocked_groups=args.lock_image_unlocked_groups,
            lock_image_freeze_bn_stats=args.lock_image_freeze_bn_stats, lock_text=args.lock_text,
            lock_text_unlocked_layers=args.lock_text_unlocked_layers,
            lock_text_freeze_layer_norm=args.lock_text_freeze_layer_norm, split=args.split,
            text_padding=args.text_padding, **overrides)
    except (ValueError, FileNotFoundError, ModelClassError) as e:  # bad options / files, named
        p.exit(2, f"{p.prog}: error: {e}\n")
    final = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v}
    summary = (f"trained {history['steps_run']} steps (global step {history['start_step']} -> "
               f"{history['end_step']}) in {history['train_seconds']:.0f}s")
    if history["already_complete"]:
        print(f"{summary}: the run in {args.logdir} was already complete"
              + (f"; wrote {args.output} from its backup" if args.output else ""))
    else:
        print(f"{summary}; final: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))
    return history


if __name__ == "__main__":
    main()
