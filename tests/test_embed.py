"""The embedding job (keras_clip.embed): output layout and values, every source format, bad
images skipped and listed, bad input refused with nothing written, and a SIGKILLed run that
resumes to the same folder as an uninterrupted one."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile

import keras_clip  # noqa: F401
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from PIL import Image

from keras_clip.embed import (KILL_AT_BATCH_ENV, REASON_BAD, REASON_EMPTY, embed_images, main,
                              staging_dir)
from keras_clip.model import CLIP
from keras_clip.preprocessing import preprocess_images
from keras_clip.saving import save_model_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(rng, h, w, mode="RGB"):
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    a = rng.integers(0, 256, (h, w, channels), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if channels == 1 else a, mode).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_folder(root, n=21, seed=0):
    """n images (PNG/JPEG, several modes and sizes, in sub-folders), captions for some, one
    corrupt .jpg and a non-image file. Returns {relative path: (bytes, caption)} of the images."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n):
        sub = ("", "a/", "a/b/")[i % 3]
        if i % 2:
            name, data = f"{sub}img{i:03d}.jpg", _jpeg(rng, 20 + i, 40 - i)
        else:
            name, data = f"{sub}img{i:03d}.png", _png(rng, 30 + i, 25, ("RGB", "L", "RGBA")[i % 3])
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        caption = f"picture number {i}" if i % 4 == 0 else None
        if caption:
            with open(path.rsplit(".", 1)[0] + ".txt", "w") as f:
                f.write(caption + "\n")
        images[name] = (data, caption)
    with open(os.path.join(root, "a", "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("not an image")
    return images


@pytest.fixture(scope="module")
def model():
    return CLIP.from_preset("ViT-Tiny")


@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory):
    return save_model_atomic(model, str(tmp_path_factory.mktemp("model") / "tiny.keras"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return str(root), make_folder(str(root))


def _reference(model, datas):
    x = preprocess_images(list(datas), image_size=model.image_size)
    e = np.array(model.encode_image(x), np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _read(out):
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    emb = np.concatenate([np.load(os.path.join(out, s["embeddings"])) for s in manifest["shards"]])
    meta = [pq.read_table(os.path.join(out, s["metadata"])).to_pylist()
            for s in manifest["shards"]]
    return manifest, emb, [row for rows in meta for row in rows]


def test_folder_job_layout_values_and_skips(model, model_path, folder, tmp_path):
    root, images = folder
    out = str(tmp_path / "out")
    manifest = embed_images(model_path, root, out, batch_size=4, shard_size=8, progress=False)
    assert sorted(os.listdir(out)) == ["img_emb", "manifest.json", "metadata"]
    assert not os.path.exists(staging_dir(out))
    disk, emb, rows = _read(out)
    assert disk == manifest
    # 21 images + the corrupt one = 22 records in path order: shards of 8, 8 and 6 records.
    names = sorted(list(images) + ["a/corrupt.jpg"])
    assert manifest["num_records"] == 22 and manifest["count"] == 21
    bad = names.index("a/corrupt.jpg")  # its record number; shards hold 8 records each
    assert [s["count"] for s in manifest["shards"]] == [8 - (bad // 8 == k) for k in (0, 1)] + [
        6 - (bad >= 16)]
    assert manifest["skipped"] == [{"id": str(names.index("a/corrupt.jpg")),
                                    "path": "a/corrupt.jpg", "reason": REASON_BAD}]
    assert manifest["embed_dim"] == 32 and manifest["image_size"] == 32
    assert manifest["dtype"] == "float16" and emb.dtype == np.float16
    assert manifest["model"] == os.path.abspath(model_path)
    assert manifest["model_config"]["vision_patch_size"] == 8
    assert manifest["preprocessing"]["mean"][0] == pytest.approx(0.48145466)
    good = [n for n in names if n != "a/corrupt.jpg"]
    assert [r["path"] for r in rows] == good
    assert [r["id"] for r in rows] == [str(names.index(n)) for n in good]
    assert [r["caption"] for r in rows] == [images[n][1] for n in good]
    ref = _reference(model, [images[n][0] for n in good])
    np.testing.assert_allclose(emb.astype(np.float32), ref, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)


def test_float32_and_default_strategy(model, folder, tmp_path):
    root, images = folder
    out = str(tmp_path / "out32")
    manifest = embed_images(model, root, out, batch_size=8, dtype="float32", strategy="default",
                            jit_compile=False, progress=False)
    _, emb, rows = _read(out)
    assert manifest["dtype"] == "float32" and emb.dtype == np.float32
    assert manifest["model"] is None and len(manifest["shards"]) == 1
    ref = _reference(model, [images[r["path"]][0] for r in rows])
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def _tfrecord(path, items):
    with tf.io.TFRecordWriter(path) as w:
        for key, data, caption in items:
            feats = {"key": key.encode(), "jpg": data, "txt": caption.encode()}
            w.write(tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
                for k, v in feats.items()})).SerializeToString())


def _tar(path, items):
    with tarfile.open(path, "w") as t:
        for key, data, caption in items:
            for ext, payload in (("jpg", data), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))


@pytest.mark.slow  # three jobs, ~30-60 s on 2 cores: `make test-slow`
def test_shard_and_tsv_sources(model, tmp_path):
    rng = np.random.default_rng(1)
    items = [(f"{i:09d}", _jpeg(rng, 24 + i, 30), f"caption {i}") for i in range(7)]
    items[3] = (items[3][0], b"", "no image here")  # a sample without image data
    _tfrecord(str(tmp_path / "s-0.tfrecord"), items[:4])
    _tfrecord(str(tmp_path / "s-1.tfrecord"), items[4:])
    _tar(str(tmp_path / "w-0.tar"), items[:4])
    _tar(str(tmp_path / "w-1.tar"), items[4:])
    os.makedirs(tmp_path / "files")
    lines = ["filepath\ttitle"]
    for key, data, caption in items:
        with open(tmp_path / "files" / f"{key}.jpg", "wb") as f:
            f.write(data)
        lines.append(f"files/{key}.jpg\t{caption}")
    lines.append(f"files/missing.jpg\tgone")
    (tmp_path / "list.tsv").write_text("\n".join(lines) + "\n")
    good = [i for i in range(7) if i != 3]
    ref = _reference(model, [items[i][1] for i in good])
    for pattern, fmt_keys in ((str(tmp_path / "s-*.tfrecord"), "tfrecord"),
                              (str(tmp_path / "w-{0..1}.tar"), "webdataset")):
        out = str(tmp_path / f"out-{fmt_keys}")
        manifest = embed_images(model, pattern, out, batch_size=2, shard_size=4, progress=False,
                                jit_compile=False)
        _, emb, rows = _read(out)
        assert manifest["source"]["format"] == fmt_keys
        prefix = "s" if fmt_keys == "tfrecord" else "w"
        keys = [f"{prefix}-{i // 4}.{'tfrecord' if prefix == 's' else 'tar'}/{i % 4}"
                for i in range(7)]
        assert [r["key"] for r in rows] == [keys[i] for i in good]
        assert [r["caption"] for r in rows] == [items[i][2] for i in good]
        assert manifest["skipped"] == [{"id": "3", "key": keys[3], "reason": REASON_EMPTY}]
        np.testing.assert_allclose(emb.astype(np.float32), ref, atol=2e-3)
    out = str(tmp_path / "out-tsv")
    manifest = embed_images(model, str(tmp_path / "list.tsv"), out, batch_size=2, shard_size=4,
                            progress=False, jit_compile=False)
    _, emb, rows = _read(out)
    folder = str(tmp_path)
    assert [r["path"] for r in rows] == [f"{folder}/files/{items[i][0]}.jpg" for i in good]
    assert manifest["skipped"] == [  # an empty file, a missing one
        {"id": "3", "path": f"{folder}/files/{items[3][0]}.jpg", "reason": REASON_BAD},
        {"id": "7", "path": f"{folder}/files/missing.jpg", "reason": REASON_BAD}]
    np.testing.assert_allclose(emb.astype(np.float32), ref, atol=2e-3)


def test_bad_input_is_refused_and_nothing_is_written(model, folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no image files in .*empty.*found no files at all"):
        embed_images(model, str(empty), str(out), progress=False)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("hello")
    (texts / "b.csv").write_text("x")
    with pytest.raises(ValueError, match=r"no image files .* found 2 other file"):
        embed_images(model, str(texts), str(out), progress=False)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "a.jpg").write_bytes(b"nope")
    (fake / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"no image of .*fake could be embedded: 2 records, all "
                                         r"skipped"):
        embed_images(model, str(fake), str(out), batch_size=2, progress=False)
    assert not out.exists() and not os.path.exists(staging_dir(out))
    with pytest.raises(FileNotFoundError, match="no such image folder or file: .*nope"):
        embed_images(model, str(tmp_path / "nope"), str(out), progress=False)
    with pytest.raises(ValueError, match=r"shard_size \(10\) must be a multiple of batch_size"):
        embed_images(model, folder[0], str(out), batch_size=4, shard_size=10, progress=False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        embed_images(model, folder[0], str(out), dtype="int8", progress=False)
    assert not out.exists() and not os.path.exists(staging_dir(out))
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists and is not an empty folder"):
        embed_images(model, folder[0], str(out), progress=False)
    assert os.listdir(out) == ["mine.txt"]
    # The CLI: one line on stderr, exit 1.
    assert main(["--model", str(tmp_path / "m.keras"), "--data", folder[0], "--out",
                 str(tmp_path / "o2")]) == 1
    assert "error: CLIP file not found" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused(model, folder, tmp_path):
    out = tmp_path / "out"
    staging = staging_dir(out)
    os.makedirs(staging)
    with open(os.path.join(staging, "job.json"), "w") as f:
        json.dump({"dtype": "float32"}, f)
    with pytest.raises(ValueError, match=r"unfinished run with other settings .*dtype: "
                                         r"'float32' then, 'float16' now"):
        embed_images(model, folder[0], str(out), progress=False)


def _cli(model_path, data, out, **env):
    cmd = [sys.executable, "-m", "keras_clip.embed", "--model", model_path, "--data", data,
           "--out", out, "--batch-size", "4", "--shard-size", "8", "--cpu-replicas", "2",
           "--no-progress"]
    clean = {k: v for k, v in os.environ.items() if k != KILL_AT_BATCH_ENV}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**clean, **env})


@pytest.mark.slow  # three runs of the CLI (~15 s each on 2 cores): `make test-slow`
def test_killed_run_resumes_to_the_same_folder(model_path, folder, tmp_path):
    root = folder[0]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run = _cli(model_path, root, a)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "embedded 21 images (1 skipped)" in run.stdout
    # Killed after its 5th batch: shards 0 and 1 (batches 1-4) are finished, batch 5 is lost.
    run = _cli(model_path, root, b, **{KILL_AT_BATCH_ENV: "5"})
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    assert not os.path.exists(b)
    staging = staging_dir(b)
    assert sorted(os.listdir(os.path.join(staging, "state"))) == ["shard_00000.json",
                                                                 "shard_00001.json"]
    assert sorted(os.listdir(os.path.join(staging, "img_emb"))) == ["img_emb_00000.npy",
                                                                   "img_emb_00001.npy"]
    run = _cli(model_path, root, b)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not os.path.exists(staging)
    files_a = sorted(os.path.relpath(os.path.join(d, f), a)
                     for d, _, fs in os.walk(a) for f in fs)
    files_b = sorted(os.path.relpath(os.path.join(d, f), b)
                     for d, _, fs in os.walk(b) for f in fs)
    assert files_a == files_b and len(files_a) == 7
    for f in files_a:
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            assert x.read() == y.read(), f


def test_a_resume_removes_the_temporary_files_a_killed_write_left(tmp_path):
    # A run killed while a shard's file was being written leaves the hidden temporary file;
    # the resumed run must not carry it into the final folder (it would differ from an
    # uninterrupted run's).
    from keras_clip.embed import finished_shards
    staging = tmp_path / ".out.partial"
    for sub in ("img_emb", "metadata", "state"):
        (staging / sub).mkdir(parents=True)
    (staging / "metadata" / ".metadata_00000.parquet.x1y2z3").write_bytes(b"")
    (staging / "img_emb" / ".img_emb_00000.npy.abcdef").write_bytes(b"12")
    (staging / "img_emb" / "img_emb_00000.npy").write_bytes(b"kept")
    assert finished_shards(str(staging)) == []
    assert sorted(p.name for p in (staging / "metadata").iterdir()) == []
    assert sorted(p.name for p in (staging / "img_emb").iterdir()) == ["img_emb_00000.npy"]


def test_image_encoder_uses_xla_in_float32_and_the_graph_in_bfloat16(model):
    """jit_compile="auto": XLA for a float32 model, TensorFlow's graph (oneDNN's bf16 matmuls)
    for a mixed_bfloat16 one; either way the same normalised float32 embeddings."""
    import keras

    from keras_clip.embed import make_image_encoder
    from keras_clip.model import xla_pays

    images = np.random.default_rng(0).uniform(-1, 1, (2, model.image_size, model.image_size,
                                                      3)).astype(np.float32)
    encode = make_image_encoder(model)
    assert xla_pays(model, training=False) and encode._jit_compile is True
    np.testing.assert_allclose(encode(images).numpy(),
                               make_image_encoder(model, jit_compile=False)(images).numpy(),
                               atol=1e-5)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        bf16 = CLIP.from_preset("ViT-Tiny")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    bf16.set_weights(model.get_weights())
    encode = make_image_encoder(bf16)
    assert not xla_pays(bf16, training=False) and encode._jit_compile is False
    out = encode(images).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(out, make_image_encoder(model)(images).numpy(), atol=0.05)
    assert make_image_encoder(bf16, jit_compile=True)._jit_compile is True
