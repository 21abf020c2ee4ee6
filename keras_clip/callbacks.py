"""Training callbacks: zero-shot and retrieval evaluation, embedding projector, data-skip counts,
and a mid-epoch resumable backup."""

import json
import os
import signal

import keras
import numpy as np
import tensorflow as tf


def _normalised(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _encode(fn, data, batch_size):
    return _normalised(np.concatenate([np.asarray(fn(data[i:i + batch_size]))
                                       for i in range(0, len(data), batch_size)]))


def recall_at_k(query, keys, relevant, ks=(1, 5, 10)):
    """Share of queries with a relevant key among their top k by cosine similarity.

    ``relevant`` (Q, K) is boolean: several keys can be right (e.g. identical captions).
    """
    order = np.argsort(-(query @ keys.T), axis=1)  # (Q, K) best first
    hits = np.take_along_axis(relevant, order, axis=1)
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


class ZeroShotEvaluation(keras.callbacks.Callback):
    """Adds zero-shot top-1 and image↔text retrieval R@1/5/10 to the epoch logs.

    Args:
        classnames, templates: the zero-shot classifier (``keras_clip.zero_shot_classifier``).
        ensemble: "mean" — OpenAI's recipe, one renormalised mean embedding per class; "max" —
            one prototype per (class, template), a class scores its best template (for templates
            that describe different-looking members of a class, e.g. small and large shapes).
        zero_shot: {split name: (images, labels)} — normalised float images, int labels into
            ``classnames``.
        retrieval: {split name: (images, token_ids)} — row i of each is a matching pair.

    Placed before ``keras.callbacks.TensorBoard`` in the callback list, the values are written
    to TensorBoard as epoch scalars (``zero_shot_top1_<split>``, ``i2t_R@k_<split>``, ...).
    """

    def __init__(self, classnames, templates, zero_shot=None, retrieval=None, batch_size=256,
                 every=1, ensemble="mean"):
        super().__init__()
        if ensemble not in ("mean", "max"):
            raise ValueError(f"ensemble must be 'mean' or 'max', got {ensemble!r}")
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.ensemble = ensemble
        self.zero_shot = zero_shot or {}
        self.retrieval = retrieval or {}
        self.batch_size = batch_size
        self.every = every

    def evaluate(self):
        from keras_clip.zero_shot import zero_shot_classifier

        model, results = self.model, {}
        if self.ensemble == "mean":
            classifiers = [zero_shot_classifier(model, self.classnames, self.templates)]
        else:
            classifiers = [zero_shot_classifier(model, self.classnames, [t]) for t in self.templates]
        for name, (images, labels) in self.zero_shot.items():
            feats = _encode(model.encode_image, images, self.batch_size)
            scores = np.max([feats @ c for c in classifiers], axis=0)  # (N, C)
            results[f"zero_shot_top1_{name}"] = float(np.mean(scores.argmax(1) == labels))
        for name, (images, token_ids) in self.retrieval.items():
            img = _encode(model.encode_image, images, self.batch_size)
            txt = _encode(model.encode_text, token_ids, self.batch_size)
            token_ids = np.asarray(token_ids)
            same = (token_ids[:, None, :] == token_ids[None, :, :]).all(-1)  # identical captions
            for direction, r in (("i2t", recall_at_k(img, txt, same)), ("t2i", recall_at_k(txt, img, same))):
                results.update({f"{direction}_R@{k}_{name}": v for k, v in r.items()})
        return results

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every == 0:
            logs.update(self.evaluate())


class EmbeddingProjector(keras.callbacks.Callback):
    """Writes image and text embeddings of a sample to TensorBoard's projector at the end of
    training (``<log_dir>/projector``), labelled with their captions."""

    def __init__(self, log_dir, images, token_ids, captions):
        super().__init__()
        self.log_dir = os.path.join(log_dir, "projector")
        self.images, self.token_ids, self.captions = images, token_ids, list(captions)

    def on_train_end(self, logs=None):
        from tensorboard.plugins import projector

        os.makedirs(self.log_dir, exist_ok=True)
        img = _encode(self.model.encode_image, self.images, 256)
        txt = _encode(self.model.encode_text, self.token_ids, 256)
        with open(os.path.join(self.log_dir, "metadata.tsv"), "w", encoding="utf-8") as f:
            f.write("kind\tcaption\n")
            for kind in ("image", "text"):
                for c in self.captions:
                    f.write(f"{kind}\t{c.replace(chr(9), ' ')}\n")
        embeddings = tf.Variable(np.concatenate([img, txt]), name="embeddings")
        tf.train.Checkpoint(embedding=embeddings).save(os.path.join(self.log_dir, "embedding.ckpt"))
        config = projector.ProjectorConfig()
        emb = config.embeddings.add()
        emb.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
        emb.metadata_path = "metadata.tsv"
        projector.visualize_embeddings(self.log_dir, config)


class SkipCountLogger(keras.callbacks.Callback):
    """Adds the data pipeline's skipped-record counts (``skipped_<reason>``) to the epoch logs
    and prints them, so corrupt data is visible in the log and in TensorBoard."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        counts = self.counter.result()
        if logs is not None:
            logs.update({f"skipped_{k}": float(v) for k, v in counts.items()})
        if any(counts.values()):
            print(f"\nskipped records so far: {counts}")


# Test hook (see ResumableBackup): the global step at whose end the process SIGKILLs itself.
KILL_AT_STEP_ENV = "KERAS_CLIP_TEST_KILL_AT_STEP"


class ResumableBackup(keras.callbacks.Callback):
    """Backs up weights + optimizer state and the global step every ``save_freq`` batches and at
    every epoch end.

    Unlike ``keras.callbacks.BackupAndRestore`` (which restarts an interrupted epoch from its
    first batch), the saved global step lets ``keras_clip.train`` resume the data stream at the
    exact batch, so a killed run reaches the same final weights as an uninterrupted one.
    Files are written to a temporary name and renamed, so a kill never leaves a torn backup.
    ``steps_run`` counts the batches this callback saw end in this process.

    ``run_config`` (a dict of what defines the run — model source, data, loss, batch, locks, …;
    values that are not JSON are kept as their ``str``) is saved with every backup; `restore`
    refuses (ValueError naming each differing key, the backup's value and this run's) to resume
    a backup made by a run with a different one, instead of silently continuing another run.
    Backups without one (older versions) are restored as before.

    Test hook: with the environment variable ``KERAS_CLIP_TEST_KILL_AT_STEP=N`` set, the process
    sends itself SIGKILL (``os.kill(os.getpid(), signal.SIGKILL)``) in ``on_train_batch_end`` of
    global step N (the optimizer's ``iterations`` reaching N), right after that step's backup
    has been written if N is a multiple of ``save_freq``, and before the epoch-end backup if N
    ends an epoch. The newest backup left on disk is then the later of step
    ``N - N % save_freq`` and the last epoch end before N. ``tests/test_train_resume.py`` uses
    it to kill a run mid-epoch at a known point.
    """

    def __init__(self, backup_dir, save_freq=50, run_config=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        # As it is saved and read back (tuples → lists, other values → str), so a restore
        # compares like with like.
        self.run_config = (None if run_config is None
                           else json.loads(json.dumps(run_config, default=str)))
        self.meta_path = os.path.join(backup_dir, "backup.json")
        self.steps_run = 0
        kill_at = os.environ.get(KILL_AT_STEP_ENV)
        self.kill_at_step = int(kill_at) if kill_at else None

    def restore(self):
        """Load the last backup into the model; returns the global step it was taken at (0 if none)."""
        if not os.path.exists(self.meta_path):
            return 0
        with open(self.meta_path) as f:
            meta = json.load(f)
        saved = meta.get("run_config")
        if saved is not None and self.run_config is not None:
            now = self.run_config
            diff = [f"{k}: backup {saved.get(k)!r}, this run {now.get(k)!r}"
                    for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
            if diff:
                raise ValueError(
                    f"{self.backup_dir} holds the backup of a different run ("
                    + "; ".join(diff) + "). Use another --logdir for this run, or delete "
                    "that backup folder to start over.")
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, meta["weights"]))
        return int(meta["global_step"])

    def _save(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        name = f"backup-{step}.weights.h5"
        tmp = os.path.join(self.backup_dir, ".tmp.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, os.path.join(self.backup_dir, name))
        # The metadata is renamed last, so it only ever names a complete weights file of its step.
        with open(self.meta_path + ".tmp", "w") as f:
            json.dump({"global_step": step, "weights": name, "run_config": self.run_config}, f)
        os.replace(self.meta_path + ".tmp", self.meta_path)
        for old in os.listdir(self.backup_dir):
            if old.startswith("backup-") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def on_train_batch_end(self, batch, logs=None):
        self.steps_run += 1
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.save_freq == 0:
            self._save()
        if step == self.kill_at_step:  # test hook: die here, as a SIGKILL from outside would
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        self._save()
