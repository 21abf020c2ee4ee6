"""A training run killed with SIGKILL mid-epoch and restarted ends with the same weights as an
uninterrupted run; a run over data with corrupt records completes and counts them."""

import io
import json
import os
import re
import signal
import subprocess
import sys

import keras
import keras_clip  # noqa: F401  (registers the classes for load_model)
import numpy as np
import pytest

from keras_clip.callbacks import KILL_AT_STEP_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS, SAVE_FREQ = 2, 10, 3
# The run kills itself at the end of global step 7 (epoch 1, batch 7): the newest backup is
# then step 6's, mid-epoch, and step 7 is lost and must be trained again.
KILL_AT = 7
BACKUP_AT = KILL_AT - KILL_AT % SAVE_FREQ


def _cmd(logdir, output, *extra):
    return [sys.executable, "-m", "keras_clip.train", "--preset", "ViT-Tiny", "--epochs", str(EPOCHS),
            "--batch-size", "16", "--steps-per-epoch", str(STEPS), "--num-examples", "160",
            "--eval-examples", "0", "--save-freq", str(SAVE_FREQ), "--logdir", str(logdir),
            "--output", str(output), "--verbose", "0", *extra]


def _run(cmd, timeout=600, expect=0, **env):
    clean = {k: v for k, v in os.environ.items() if k != KILL_AT_STEP_ENV}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**clean, **env})
    assert result.returncode == expect, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def _steps(out):
    """(steps trained by the process, its first global step, its last) from train's last line."""
    m = re.search(r"trained (\d+) steps \(global step (\d+) -> (\d+)\)", out)
    assert m, out[-2000:]
    return tuple(int(g) for g in m.groups())


def _weights(path):
    return [v.numpy() for v in keras.saving.load_model(str(path)).weights]


@pytest.mark.slow  # ~40 s on 2 cores: `make test-slow`
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    total = EPOCHS * STEPS
    assert 0 < BACKUP_AT < KILL_AT < STEPS  # the kill and the backup are both mid-epoch
    assert _steps(_run(_cmd(tmp_path / "a", tmp_path / "a.keras"))) == (total, 0, total)

    logdir, output = tmp_path / "b", tmp_path / "b.keras"
    _run(_cmd(logdir, output), expect=-signal.SIGKILL, **{KILL_AT_STEP_ENV: str(KILL_AT)})
    meta = json.loads((logdir / "backup" / "backup.json").read_text())
    assert meta["global_step"] == BACKUP_AT and not output.exists()

    out = _run(_cmd(logdir, output))
    assert f"at global step {BACKUP_AT} (epoch 1, batch {BACKUP_AT})" in out
    # Only the steps after the backup were trained again, and the optimizer's step count (which
    # drives the learning-rate schedule) came back from the backup.
    assert _steps(out) == (total - BACKUP_AT, BACKUP_AT, total)
    a, b = _weights(tmp_path / "a.keras"), _weights(output)
    assert len(a) == len(b)
    worst = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    assert worst == 0.0, f"resumed from step {BACKUP_AT}: max weight diff {worst}"


def test_a_finished_run_restarted_says_it_was_already_complete(tmp_path):
    # Was: "trained 0 steps (global step 2 -> 2) in 0s; final: " with nothing after "final:".
    output = tmp_path / "m.keras"
    cmd = [sys.executable, "-m", "keras_clip.train", "--preset", "ViT-Tiny", "--epochs", "1",
           "--batch-size", "8", "--steps-per-epoch", "2", "--num-examples", "16",
           "--eval-examples", "0", "--logdir", str(tmp_path / "logs"), "--output", str(output),
           "--verbose", "0", "--no-xla"]
    first = _run(cmd)
    assert _steps(first) == (2, 0, 2) and "; final: " in first and "loss=" in first
    output.rename(tmp_path / "first.keras")
    again = _run(cmd)
    assert _steps(again) == (0, 2, 2)
    assert "the run was already complete" in again and "final:" not in again
    assert f"was already complete; wrote {output} from its backup" in again
    a, b = _weights(tmp_path / "first.keras"), _weights(output)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(batch_size=-1), "batch_size must be an integer >= 1, got -1"),
    (dict(steps_per_epoch=0), "steps_per_epoch must be an integer >= 1, got 0"),
    (dict(eval_examples=-5), "eval_examples must be an integer >= 0, got -5"),
])
def test_train_clip_rejects_counts_that_are_not_positive(kwargs, message, tmp_path):
    from keras_clip.train import train_clip

    with pytest.raises(ValueError, match=re.escape(message)):
        train_clip("ViT-Tiny", logdir=str(tmp_path), **kwargs)
    assert not list(tmp_path.iterdir())  # checked before anything is built or written


def _write_tfrecord(path, num=200, bad_images=(17, 123), empty_caption=50):
    """An img2dataset-style shard (key / jpg / txt): 1% corrupt JPEGs and one empty caption."""
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)

    def feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(num):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
            data = buf.getvalue()[:200] if i in bad_images else buf.getvalue()
            caption = b"" if i == empty_caption else f"a photo number {i}".encode()
            example = tf.train.Example(features=tf.train.Features(feature={
                "key": feature(f"{i:06d}".encode()), "jpg": feature(data), "txt": feature(caption)}))
            writer.write(example.SerializeToString())


def test_training_on_data_with_corrupt_records_completes_and_counts_them(tmp_path):
    shard = tmp_path / "00000.tfrecord"
    _write_tfrecord(shard)
    # 197 good records = 12 batches of 16 per pass; by the end of the second epoch the first
    # pass has been read completely (the second may have been partly read ahead).
    cmd = [sys.executable, "-m", "keras_clip.train", "--preset", "ViT-Tiny", "--data", str(shard),
           "--epochs", "2", "--batch-size", "16", "--steps-per-epoch", "12", "--eval-examples", "0",
           "--logdir", str(tmp_path / "logs"), "--output", str(tmp_path / "m.keras"), "--verbose", "0"]
    out = _run(cmd)
    assert (tmp_path / "m.keras").exists()
    final = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split("final: ")[1].split(", "))
    assert 2 <= float(final["skipped_bad_image"]) <= 4
    assert 1 <= float(final["skipped_empty_caption"]) <= 2
    assert "skipped records so far" in out
    events = list((tmp_path / "logs").rglob("events.out.tfevents*"))
    assert events, "no TensorBoard event file written"


def test_a_backup_of_a_different_run_is_refused_not_resumed(tmp_path):
    # Was (new-user trial): fine-tuning with --init-from / --lock-image into a logdir holding
    # another run's backup silently resumed that run and dropped the new model and locks.
    logs = str(tmp_path / "logs")
    cmd = [sys.executable, "-m", "keras_clip.train", "--preset", "ViT-Tiny", "--epochs", "1",
           "--batch-size", "8", "--steps-per-epoch", "1", "--num-examples", "16",
           "--eval-examples", "0", "--logdir", logs, "--verbose", "0", "--no-xla"]
    _run(cmd)
    other = subprocess.run(cmd + ["--lock-image", "--seed", "1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert other.returncode != 0
    assert "holds the backup of a different run" in other.stderr
    assert "locks: backup {}, this run {'image': [0, False]}" in other.stderr
    assert "seed: backup 0, this run 1" in other.stderr
