"""A training run killed with SIGKILL mid-epoch and restarted ends with the same weights as an
uninterrupted run; a run over data with corrupt records completes and counts them."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import keras
import keras_clip  # noqa: F401  (registers the classes for load_model)
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10


def _cmd(logdir, output, *extra):
    return [sys.executable, "-m", "keras_clip.train", "--preset", "ViT-Tiny", "--epochs", "2",
            "--batch-size", "16", "--steps-per-epoch", str(STEPS), "--num-examples", "160",
            "--eval-examples", "0", "--save-freq", "3", "--logdir", str(logdir),
            "--output", str(output), "--verbose", "0", *extra]


def _run(cmd, timeout=600):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def _weights(path):
    return [v.numpy() for v in keras.saving.load_model(str(path)).weights]


@pytest.mark.slow  # ~90 s on 2 cores: `make test-slow`
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    _run(_cmd(tmp_path / "a", tmp_path / "a.keras"))

    logdir, meta = tmp_path / "b", tmp_path / "b" / "backup" / "backup.json"
    proc = subprocess.Popen(_cmd(logdir, tmp_path / "b.keras"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not meta.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert meta.exists(), "the run never wrote a backup"
    killed_at = json.loads(meta.read_text())["global_step"]
    assert killed_at < 2 * STEPS and not (tmp_path / "b.keras").exists()

    out = _run(_cmd(logdir, tmp_path / "b.keras"))
    assert f"at global step {killed_at}" in out
    a, b = _weights(tmp_path / "a.keras"), _weights(tmp_path / "b.keras")
    worst = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    assert worst <= 1e-6, f"resumed from step {killed_at}: max weight diff {worst}"
    if killed_at % STEPS == 0:
        pytest.xfail(f"killed at an epoch boundary (step {killed_at}), not mid-epoch")


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
