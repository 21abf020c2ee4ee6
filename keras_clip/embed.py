r"""Embedding job: every image of a source → L2-normalised CLIP image embeddings on disk.

``python -m keras_clip.embed --model M.keras --data SRC --out DIR``

Sources (``--data``): a folder of images (searched recursively; JPEG, PNG, GIF, WebP, BMP — what
:class:`~keras_clip.preprocessing.CLIPImagePreprocessor` decodes — with optional ``<stem>.txt``
captions, see :mod:`keras_clip.data.image_folder`), img2dataset TFRecord shards, WebDataset tar
shards, or an open_clip TSV/CSV (the readers of :mod:`keras_clip.data.readers`); shard sources may
be globs or brace ranges.

Output (``DIR``; clip-retrieval's layout)::

    DIR/manifest.json                      model, preset/config, embed_dim, image_size,
                                           preprocessing, dtype, count, skipped, shards
    DIR/img_emb/img_emb_00000.npy          (n_i, embed_dim) float16 (default) or float32,
                                           L2-normalised rows, in source order
    DIR/metadata/metadata_00000.parquet    columns id (string), path | key (string),
                                           caption (string or null); row i ↔ embedding row i

``id`` is the record's position in the source stream (``"0"``, ``"1"``, …; a skipped record keeps
its number, so ids are stable across runs); ``path`` (folder: path below the folder; TSV: the
file path as written) or ``key`` (TFRecord / WebDataset: ``<shard file>/<record number>``).

How it runs: records are read in a fixed order and numbered; images are decoded and resized by
``CLIPImagePreprocessor`` in ``tf.data`` (an undecodable or missing image is caught per record,
skipped, counted and listed in the manifest with its reason); batches go through
``tf.distribute.MirroredStrategy`` over the local devices (GPUs, else the CPU) with the image
tower XLA-compiled per replica (``jit_compile``), every batch padded to the same size so it
compiles once. Output shard *k* holds records ``[k * shard_size, (k + 1) * shard_size)``.

Resuming: the job works in a hidden sibling folder ``.DIR.partial`` and writes each finished
shard there atomically (temporary file + rename; the shard's small state file last). A run that
is killed (even SIGKILL) and started again with the same arguments skips the finished shards and
recomputes only the rest; shard boundaries are batch boundaries, so the resumed run computes the
very same batches and the final ``DIR`` equals an uninterrupted run's byte for byte. ``DIR``
itself appears only when everything is written: the staging folder is renamed to it.

Errors (nothing is written to ``DIR``): an empty folder or one without image files, a source in
which no image decodes, an existing non-empty ``DIR``, a resume with different arguments,
``shard_size`` not a multiple of ``batch_size``, a batch not divisible over the replicas.

Test hook: ``KERAS_CLIP_TEST_KILL_AT_BATCH=N`` makes the process SIGKILL itself right after its
N-th batch was embedded (``tests/test_embed.py``).

Example:
    >>> from keras_clip.embed import embed_images
    >>> manifest = embed_images("clip.keras", "/photos", "/index/photos", batch_size=128)
    >>> manifest["count"], manifest["embed_dim"]
    (10342, 512)
"""

import argparse
import json
import os
import shutil
import signal
import sys

import numpy as np

from keras_clip import cli
from keras_clip.saving import write_bytes_atomic

SHARD_FORMAT = "img_emb/img_emb_{:05d}.npy"
METADATA_FORMAT = "metadata/metadata_{:05d}.parquet"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "keras_clip.image_embeddings/1"
DTYPES = ("float16", "float32")
KILL_AT_BATCH_ENV = "KERAS_CLIP_TEST_KILL_AT_BATCH"
REASON_EMPTY = "no image data in the record"
REASON_BAD = "not a readable, decodable image (JPEG, PNG, GIF, WebP or BMP)"
_BLOCK = 16  # records per guarded decode block (see _decode)
_STATE_DIR = "state"
_JOB = "job.json"

__all__ = ["EmbeddingSource", "embed_images", "main", "staging_dir"]


# ----------------------------------------------------------------------------------------------
# Sources

class EmbeddingSource:
    """A numbered record stream of one source (folder, TFRecord, WebDataset or TSV).

    ``dataset()`` gives unbatched ``{"index": int64, "name": string, "caption": string,
    "has_caption": bool, "data": string}`` in a fixed order (``data`` is the encoded image, or
    for folder / TSV sources the file path to read). ``total`` is the number of records when it
    is known without decoding (folder, TSV), else None. ``name_column`` is ``"path"`` or
    ``"key"``.

    Raises (constructor): FileNotFoundError (no such folder / no file matches), ValueError (a
    folder without image files, an unknown format, a TSV without the columns).
    """

    def __init__(self, source, format=None, image_key=None, caption_key=None, sep="\t"):
        from keras_clip.data import readers

        self.source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
        if (isinstance(self.source, str) and "://" not in self.source
                and not any(c in self.source for c in "*?[{") and not os.path.exists(self.source)):
            raise FileNotFoundError(f"no such image folder or file: {self.source}")
        if format is None:
            is_dir = isinstance(self.source, str) and os.path.isdir(self.source)
            format = "folder" if is_dir else readers.source_format(self.source)
        if format not in ("folder", "tfrecord", "webdataset", "tsv"):
            raise ValueError(f"unknown source format {format!r}: expected folder, tfrecord, "
                             "webdataset or tsv")
        self.format = format
        self.image_key, self.caption_key, self.sep = image_key, caption_key, sep
        self.reads_files = format in ("folder", "tsv")
        self.name_column = "path" if self.reads_files else "key"
        self.bad_records = 0
        if format == "folder":
            from keras_clip.data.image_folder import list_image_folder

            self._files = list_image_folder(self.source)
            self.total = len(self._files)
        else:
            self._files = readers.list_files(self.source)
            self.total = self._count_tsv() if format == "tsv" else None

    def describe(self):
        source = self.source if isinstance(self.source, str) else list(self.source)
        if isinstance(source, str) and "://" not in source:
            source = os.path.abspath(source)
        return {"data": source, "format": self.format, "name_column": self.name_column}

    def dataset(self):
        import tensorflow as tf

        if self.format == "folder":
            ds = tf.data.Dataset.from_tensor_slices({
                "name": [f.relative for f in self._files],
                "caption": [f.caption or "" for f in self._files],
                "has_caption": [f.caption is not None for f in self._files],
                "data": [f.path for f in self._files]})
        elif self.format == "tsv":
            paths, captions = self._tsv
            ds = tf.data.Dataset.from_tensor_slices({
                "name": tf.constant(paths, tf.string), "caption": tf.constant(captions, tf.string),
                "has_caption": [bool(c.strip()) for c in captions],
                "data": tf.constant(paths, tf.string)})
        else:
            ds = None
            for f in self._files:
                d = self._shard(f)
                ds = d if ds is None else ds.concatenate(d)
        return ds.enumerate().map(lambda i, x: {"index": i, **x})

    def _shard(self, path):
        import tensorflow as tf

        from keras_clip.data import readers

        kwargs = {}
        if self.format == "tfrecord":
            if self.image_key:
                kwargs["image_key"] = self.image_key
            if self.caption_key:
                kwargs["caption_key"] = self.caption_key
            gz = path.endswith(".gz")
            d = readers.read_tfrecord(path, compression_type="GZIP" if gz else None, **kwargs)
        else:
            if self.image_key:
                kwargs["image_ext"] = self.image_key
            if self.caption_key:
                kwargs["caption_ext"] = self.caption_key
            d = readers.read_webdataset(path, **kwargs)
        prefix = os.path.basename(path) + "/"
        return d.enumerate().map(lambda i, x: {
            "name": prefix + tf.strings.as_string(i), "caption": x["captions"],
            "has_caption": tf.strings.length(tf.strings.strip(x["captions"])) > 0,
            "data": x["image_bytes"]})

    def _tsv_rows(self):
        """(paths, captions) of every TSV row that has both columns; counts the others."""
        import csv

        import tensorflow as tf

        image_key, caption_key = self.image_key or "filepath", self.caption_key or "title"
        if len(self.sep) != 1:
            raise ValueError(f"sep must be one character, got {self.sep!r}")
        paths, captions, self.bad_records = [], [], 0
        for file in self._files:
            folder = os.path.dirname(file)
            with tf.io.gfile.GFile(file, "r") as f:
                rows = csv.reader((line.rstrip("\r\n") for line in f), delimiter=self.sep)
                header = next(rows, [])
                missing = [k for k in (image_key, caption_key) if k not in header]
                if missing:
                    raise ValueError(f"{file}: no column {missing} in the header {header} (set "
                                     "--image-key / --caption-key, or --sep)")
                i, j = header.index(image_key), header.index(caption_key)
                for row in rows:
                    if not row or not "".join(row).strip():
                        continue  # blank line
                    if len(row) <= max(i, j) or not row[i]:
                        self.bad_records += 1
                        continue
                    path = row[i]
                    if folder and not (path.startswith("/") or "://" in path):
                        path = folder + "/" + path
                    paths.append(path)
                    captions.append(row[j])
        return paths, captions

    def _count_tsv(self):
        self._tsv = self._tsv_rows()
        if not self._tsv[0]:
            raise ValueError(f"no rows in {self.source} (after the header; "
                             f"{self.bad_records} rows without the needed columns)")
        return len(self._tsv[0])


def decode_records(records, preprocessor, reads_files, deterministic=True):
    """Numbered records → the same records with ``"ok"`` (bool), ``"empty"`` (bool: no image data)
    and ``"images"`` (float32 (S, S, 3), zeros when not ok), in the same order.

    Each block of records is decoded in a small dataset whose ``ignore_errors`` drops the
    records whose read / decode raises; the survivors are matched back to the block by their
    ``index``, so every record comes out, failed ones flagged (unlike ``readers._try_map``,
    which drops them: the job must name what it skipped).
    """
    import tensorflow as tf

    size = preprocessor.image_size

    def decode(x):
        data = tf.io.read_file(x["data"]) if reads_files else x["data"]
        return x["index"], preprocessor(tf.reshape(data, [1]))[0]

    def attempt(block):
        empty = (tf.zeros([0], tf.int64), tf.zeros([0, size, size, 3], tf.float32))
        done = tf.data.Dataset.from_tensor_slices(block).map(decode).ignore_errors()
        got, images = (done.batch(_BLOCK).concatenate(tf.data.Dataset.from_tensors(empty))
                       .take(1).get_single_element())
        match = tf.equal(block["index"][:, None], got[None, :])  # (block, decoded)
        ok = tf.reduce_any(match, axis=1)
        # Position of each record among the decoded ones; len(got) (a zero image) if it failed.
        match = tf.concat([match, tf.ones([tf.shape(match)[0], 1], tf.bool)], 1)
        pos = tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int32)
        images = tf.gather(tf.concat([images, tf.zeros([1, size, size, 3])], 0), pos)
        nodata = tf.zeros_like(ok) if reads_files else tf.equal(tf.strings.length(block["data"]), 0)
        out = {k: v for k, v in block.items() if k != "data"}
        return {**out, "ok": ok, "empty": nodata, "images": images}

    blocks = records.batch(_BLOCK).map(attempt, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=deterministic)
    return blocks.unbatch()


# ----------------------------------------------------------------------------------------------
# Model

def model_summary(model):
    """The manifest's description of a CLIP model: its constructor config (JSON types)."""
    keys = ("embed_dim", "image_size", "vision_layers", "vision_width", "vision_patch_size",
            "vision_heads", "context_length", "vocab_size", "text_width", "text_heads",
            "text_layers", "text_encoder", "activation", "mlp_ratio")
    return {k: getattr(model, k) for k in keys if hasattr(model, k)}


def preprocessing_summary(preprocessor):
    """The manifest's description of the image path (``CLIPImagePreprocessor``'s config)."""
    config = preprocessor.get_config()
    return {"class": "keras_clip.preprocessing.CLIPImagePreprocessor",
            "image_size": config["image_size"], "mean": list(config["mean"]),
            "std": list(config["std"]), "resize_method": config["resize_method"],
            "antialias": config["antialias"],
            "description": "decode (JPEG/PNG/GIF/WebP/BMP) -> resize shorter side (PIL 13 "
                           "bicubic in the mode PIL opens) -> center crop -> RGB -> "
                           "(x / 255 - mean) / std"}


def load_clip(model, strategy=None):
    """A CLIP model object, or a ``.keras`` path loaded (under ``strategy.scope()``)."""
    from keras_clip.model import CLIP
    from keras_clip.saving import load_model

    if isinstance(model, (str, os.PathLike)):
        if strategy is not None:
            with strategy.scope():
                return load_model(model, expected=CLIP), os.path.abspath(os.fspath(model))
        return load_model(model, expected=CLIP), os.path.abspath(os.fspath(model))
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a keras_clip.CLIP or a .keras path, got "
                        f"{type(model).__name__}")
    return model, None


def make_image_encoder(model, jit_compile="auto"):
    """``images (B, S, S, 3) float32 → L2-normalised float32 (B, embed_dim)``, a tf.function
    (XLA-compiled with ``jit_compile``) — the per-replica step of the job.

    ``jit_compile``: True, False, or ``"auto"`` (default): XLA unless the model computes in
    bfloat16 (see `keras_clip.model.xla_pays`)."""
    import tensorflow as tf

    from keras_clip.model import l2_normalize, xla_pays

    if jit_compile == "auto":
        jit_compile = xla_pays(model, training=False)

    @tf.function(jit_compile=bool(jit_compile), reduce_retracing=True)
    def encode(images):
        return l2_normalize(tf.cast(model.encode_image(images, training=False), tf.float32))

    return encode


# ----------------------------------------------------------------------------------------------
# Output files

def staging_dir(out):
    """The hidden sibling folder a run of ``out`` works in: ``<parent>/.<name>.partial``."""
    out = os.path.abspath(os.fspath(out))
    return os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".partial")


def _write_json(path, obj):
    write_bytes_atomic(path, lambda f: f.write((json.dumps(obj, indent=1, sort_keys=True) + "\n")
                                          .encode()))


def write_shard(staging, shard, first_index, num_records, embeddings, ids, names, captions,
                skipped, name_column, dtype):
    """Writes shard ``shard`` (embeddings .npy, metadata .parquet, then its state file) into the
    staging folder, each file atomically; the state file, written last, marks it finished."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = np.asarray(embeddings, np.float32).astype(dtype)
    table = pa.table({"id": pa.array(ids, pa.string()), name_column: pa.array(names, pa.string()),
                      "caption": pa.array(captions, pa.string())})
    write_bytes_atomic(os.path.join(staging, SHARD_FORMAT.format(shard)), lambda f: np.save(f, emb))
    write_bytes_atomic(os.path.join(staging, METADATA_FORMAT.format(shard)),
                  lambda f: pq.write_table(table, f))
    _write_json(os.path.join(staging, _STATE_DIR, f"shard_{shard:05d}.json"),
                {"shard": shard, "first_index": int(first_index), "num_records": int(num_records),
                 "count": int(len(ids)), "skipped": skipped})


def remove_temporary_files(staging):
    """Deletes the hidden temporary files a killed run left in ``staging`` (a shard's ``.npy`` or
    ``.parquet`` being written when the process died); the finished files are complete."""
    for sub in (os.path.dirname(SHARD_FORMAT), os.path.dirname(METADATA_FORMAT), _STATE_DIR):
        folder = os.path.join(staging, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith("."):
                    os.remove(os.path.join(folder, name))


def finished_shards(staging):
    """States of the shards finished in ``staging``, by shard number (contiguous from 0)."""
    remove_temporary_files(staging)
    folder = os.path.join(staging, _STATE_DIR)
    if not os.path.isdir(folder):
        return []
    states = {}
    for name in os.listdir(folder):
        if name.startswith("shard_") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                state = json.load(f)
            states[state["shard"]] = state
    done = []
    while len(done) in states:
        done.append(states[len(done)])
    return done


def prepare_output(out, job):
    """Checks ``out`` and the staging folder before a run; returns the staging folder.

    A staging folder left by an earlier run with the same ``job`` settings is resumed; one with
    other settings is an error naming the differences.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        what = "holds embeddings" if os.path.exists(os.path.join(out, MANIFEST)) else "exists"
        raise FileExistsError(f"--out {out} already {what} and is not an empty folder; remove "
                              "it or choose another output folder")
    staging = staging_dir(out)
    job_path = os.path.join(staging, _JOB)
    if os.path.exists(job_path):
        with open(job_path) as f:
            previous = json.load(f)
        diff = {k: (previous.get(k), job.get(k)) for k in set(previous) | set(job)
                if previous.get(k) != job.get(k)}
        if diff:
            detail = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"{staging} holds an unfinished run with other settings ({detail}); "
                             "run again with the same settings to resume, or delete that folder "
                             "to start over")
    else:
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        os.makedirs(staging, exist_ok=True)
        _write_json(job_path, job)
    return staging


def finish_output(staging, out, job, states, extra=None):
    """Writes the manifest from the shard states and renames ``staging`` to ``out``.

    Raises ValueError (and removes ``staging``) when no image at all was embedded.
    """
    out = os.path.abspath(os.fspath(out))
    count = sum(s["count"] for s in states)
    skipped = [item for s in states for item in s["skipped"]]
    num_records = sum(s["num_records"] for s in states)
    if count == 0:
        shutil.rmtree(staging, ignore_errors=True)
        reasons = sorted({s["reason"] for s in skipped})
        raise ValueError(f"no image of {job['source']['data']} could be embedded: "
                         f"{num_records} records, all skipped ({'; '.join(reasons) or 'none'})")
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": job["model"], "model_config": job["model_config"],
        "embed_dim": job["model_config"]["embed_dim"],
        "image_size": job["preprocessing"]["image_size"],
        "preprocessing": job["preprocessing"], "dtype": job["dtype"], "normalized": True,
        "source": job["source"], "metadata_columns": ["id", job["source"]["name_column"],
                                                      "caption"],
        "count": count, "num_records": num_records,
        "skipped_count": len(skipped), "skipped": skipped,
        "shard_size": job["shard_size"],
        "shards": [{"embeddings": SHARD_FORMAT.format(s["shard"]),
                    "metadata": METADATA_FORMAT.format(s["shard"]), "count": s["count"]}
                   for s in states],
        **(extra or {}),
    }
    _write_json(os.path.join(staging, MANIFEST), manifest)
    shutil.rmtree(os.path.join(staging, _STATE_DIR))
    os.remove(os.path.join(staging, _JOB))
    if os.path.isdir(out):
        os.rmdir(out)  # empty (prepare_output checked)
    os.replace(staging, out)
    return manifest


def skipped_entry(index, name, empty, name_column):
    return {"id": str(int(index)), name_column: name,
            "reason": REASON_EMPTY if empty else REASON_BAD}


def job_settings(model_path, model, preprocessor, source, shard_size, dtype):
    """The settings a resumed run must share with the run it continues (``job.json``)."""
    return {"model": model_path, "model_config": model_summary(model),
            "preprocessing": preprocessing_summary(preprocessor), "source": source.describe(),
            "shard_size": int(shard_size), "dtype": dtype}


def check_sizes(batch_size, shard_size, dtype, replicas=1):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if shard_size % batch_size:
        raise ValueError(f"shard_size ({shard_size}) must be a multiple of batch_size "
                         f"({batch_size}), so that shard boundaries are batch boundaries")
    if batch_size % replicas:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the "
                         f"{replicas} replicas of the strategy")


# ----------------------------------------------------------------------------------------------
# The job

def embed_images(model, data, out, *, batch_size=256, shard_size=None, dtype="float16",
                 strategy="mirrored", cpu_replicas=None, jit_compile="auto", format=None,
                 image_key=None, caption_key=None, sep="\t", progress=True, on_batch=None):
    """Embeds every image of ``data`` with ``model``'s image tower into ``out`` (see the module
    docstring for the layout); resumes an interrupted run of the same job.

    Args:
        model: a ``keras_clip.CLIP`` or the path of a ``.keras`` file holding one.
        data: an image folder, or TFRecord / WebDataset / TSV shard path(s) (glob, brace range
            or list; the format comes from the extension unless ``format=``).
        out: the output folder (must not exist or be empty).
        batch_size: images per step (global, split over the replicas).
        shard_size: records per output shard (a multiple of ``batch_size``; default
            ``40 * batch_size``).
        dtype: ``"float16"`` or ``"float32"`` embeddings on disk.
        strategy: ``"mirrored"`` (MirroredStrategy over the local GPUs, else the CPU) or
            ``"default"``, or a ``tf.distribute.Strategy``; ``cpu_replicas`` splits the CPU
            into that many logical devices (tests).
        jit_compile: XLA-compile the per-replica image tower: True, False or ``"auto"``
            (XLA unless the model computes in bfloat16; see `keras_clip.model.xla_pays`).
        image_key, caption_key, sep: reader options (TFRecord feature / WebDataset extension /
            TSV column names; TSV separator).
        progress: show a tqdm progress bar (images/s, ETA when the record count is known).
        on_batch: optional callable, called with the number of records this run has processed
            after each batch (monitoring; benchmarks/embed_throughput.py times batches with it).

    Returns:
        the manifest (dict), also written to ``out/manifest.json``.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: see the module docstring.
    """
    import tensorflow as tf

    from keras_clip.preprocessing import CLIPImagePreprocessor
    from keras_clip.strategy import make_strategy

    shard_size = 40 * batch_size if shard_size is None else shard_size
    check_sizes(batch_size, shard_size, dtype)
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, cpu_replicas=cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    check_sizes(batch_size, shard_size, dtype, replicas)
    source = EmbeddingSource(data, format=format, image_key=image_key, caption_key=caption_key,
                             sep=sep)
    model, model_path = load_clip(model, strategy)
    pre = CLIPImagePreprocessor(model.image_size)
    job = job_settings(model_path, model, pre, source, shard_size, dtype)
    staging = prepare_output(out, job)
    states = finished_shards(staging)
    start = len(states) * shard_size

    per_replica = batch_size // replicas
    encoders = {}  # one compiled function per replica: an XLA program reads its own device's
    # copy of the variables (one function for all replicas reads replica 1's from device 0)

    def encode(images):
        replica = tf.get_static_value(tf.distribute.get_replica_context()
                                      .replica_id_in_sync_group)
        replica = 0 if replica is None else int(replica)
        if replica not in encoders:
            encoders[replica] = make_image_encoder(model, jit_compile)
        return encoders[replica](images)

    @tf.function
    def step(images):
        return strategy.run(encode, args=(images,))

    def run(images):
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: images[ctx.replica_id_in_sync_group * per_replica:
                               (ctx.replica_id_in_sync_group + 1) * per_replica])
        return np.concatenate([t.numpy() for t in
                               strategy.experimental_local_results(step(values))])

    records = source.dataset().skip(start)
    batches = decode_records(records, pre, source.reads_files).batch(batch_size)
    batches = batches.prefetch(tf.data.AUTOTUNE)
    kill_at = int(os.environ.get(KILL_AT_BATCH_ENV, "0") or 0)
    bar = _progress(progress, source.total, start)
    shard, buf, seen = len(states), _ShardBuffer(), 0
    try:
        for n, batch in enumerate(batches, start=1):
            images = batch["images"].numpy()
            real = len(images)
            if real < batch_size:  # one compiled shape: pad the last batch
                images = np.concatenate([images, np.zeros((batch_size - real,) + images.shape[1:],
                                                          images.dtype)])
            emb = run(tf.constant(images))[:real]
            buf.add(batch, emb, source.name_column)
            seen += real
            if bar is not None:
                bar.update(real)
            if on_batch is not None:
                on_batch(n * batch_size - batch_size + real)
            if n == kill_at:  # test hook: die as a SIGKILL from outside would
                os.kill(os.getpid(), signal.SIGKILL)
            if seen == shard_size:
                states.append(buf.write(staging, shard, shard * shard_size, seen,
                                        source.name_column, dtype))
                shard, buf, seen = shard + 1, _ShardBuffer(), 0
        if seen or not states:
            states.append(buf.write(staging, shard, shard * shard_size, seen, source.name_column,
                                    dtype))
    finally:
        if bar is not None:
            bar.close()
    extra = {"bad_records": source.bad_records} if source.format == "tsv" else None
    return finish_output(staging, out, job, states, extra)


class _ShardBuffer:
    """Rows of the shard being filled."""

    def __init__(self):
        self.emb, self.ids, self.names, self.captions, self.skipped = [], [], [], [], []

    def add(self, batch, emb, name_column):
        ok = batch["ok"].numpy()
        for i, index in enumerate(batch["index"].numpy()):
            name = batch["name"][i].numpy().decode("utf-8", "replace")
            if not ok[i]:
                self.skipped.append(skipped_entry(index, name, bool(batch["empty"][i].numpy()),
                                                  name_column))
                continue
            self.emb.append(emb[i])
            self.ids.append(str(int(index)))
            self.names.append(name)
            self.captions.append(batch["caption"][i].numpy().decode("utf-8", "replace")
                                 if batch["has_caption"][i].numpy() else None)

    def write(self, staging, shard, first_index, num_records, name_column, dtype):
        dim = len(self.emb[0]) if self.emb else 0
        emb = np.stack(self.emb) if self.emb else np.zeros((0, dim), np.float32)
        write_shard(staging, shard, first_index, num_records, emb, self.ids, self.names,
                    self.captions, self.skipped, name_column, dtype)
        return {"shard": shard, "first_index": first_index, "num_records": num_records,
                "count": len(self.ids), "skipped": self.skipped}


def _progress(enabled, total, initial):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, smoothing=0.1,
                desc="embedding")


# ----------------------------------------------------------------------------------------------
# CLI

def build_parser(prog="python -m keras_clip.embed"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Embed every image of a folder / TFRecord / WebDataset / TSV source with a "
                    "CLIP model's image tower into sharded, L2-normalised embeddings with "
                    "Parquet metadata and a manifest (resumable).",
        epilog="Example: python -m keras_clip.embed --model clip.keras --data photos/ "
               "--out index/photos",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a .keras file holding a keras_clip.CLIP")
    parser.add_argument("--data", required=True, nargs="+",
                        help="an image folder, or .tfrecord / .tar / .tsv shard path(s), globs "
                             "or brace ranges")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--format", choices=("folder", "tfrecord", "webdataset", "tsv"),
                        help="source format (default: from the path)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=256)
    parser.add_argument("--shard-size", type=cli.positive_int,
                        help="records per output shard, a multiple of --batch-size "
                             "(default 40 batches)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16")
    parser.add_argument("--strategy", choices=("mirrored", "default"), default="mirrored",
                        help="mirrored: MirroredStrategy over the local GPUs (else the CPU)")
    parser.add_argument("--cpu-replicas", type=cli.positive_int,
                        help="split the CPU into N logical devices (testing multi-replica runs)")
    parser.add_argument("--no-xla", action="store_true", help="do not XLA-compile the tower (by default it is, unless the model computes in bfloat16)")
    parser.add_argument("--image-key", help="TFRecord image feature / WebDataset image "
                                            "extension / TSV image column")
    parser.add_argument("--caption-key", help="TFRecord caption feature / WebDataset caption "
                                              "extension / TSV caption column")
    parser.add_argument("--sep", default="\t", help="TSV separator (default: tab)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_tf_logs_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    data = args.data[0] if len(args.data) == 1 else args.data
    try:
        manifest = embed_images(
            args.model, data, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
            dtype=args.dtype, strategy=args.strategy, cpu_replicas=args.cpu_replicas,
            jit_compile=False if args.no_xla else "auto", format=args.format, image_key=args.image_key,
            caption_key=args.caption_key, sep=args.sep, progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_line(manifest, args.out))
    return 0


def summary_line(manifest, out):
    return (f"embedded {manifest['count']} images ({manifest['skipped_count']} skipped) into "
            f"{os.path.abspath(out)} ({len(manifest['shards'])} shards, {manifest['dtype']})")


if __name__ == "__main__":
    import keras_clip  # noqa: F401  (quiet start-up, registers the model classes)

    sys.exit(main())
