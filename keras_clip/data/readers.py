"""Image–caption readers and the CLIP / DALL·E training input pipeline (tf.data, TF ops only).

Readers return unbatched ``{"image_bytes": tf.string, "captions": tf.string}`` datasets:

* :func:`read_tfrecord` — shards written by img2dataset's ``tfrecord`` output format
  (``tf.train.Example`` with bytes features ``key``, ``jpg`` — or the encode format's name,
  ``png`` / ``webp`` — and ``txt``, plus the metadata columns).
* :func:`read_webdataset` — WebDataset tar shards (``key.jpg`` + ``key.txt`` …, grouped by key
  in tar order; open_clip's image keys ``jpg;png;jpeg;webp``). The tar is parsed with TF ops, so
  shards interleave in parallel and the pipeline stays serialisable.
* :func:`read_tsv` — open_clip's CSV loader format: a header line, columns ``filepath`` and
  ``title`` by default, comma-separated in a ``.csv`` file and tab-separated in a ``.tsv`` one;
  relative paths are resolved against the file's folder.

:func:`make_clip_dataset` turns any of them (or the built-in ``"shapes"`` data) into batched,
prefetched ``{"images": float32 (B, S, S, 3), "token_ids": int32 (B, 77)}`` with the same
:class:`~keras_clip.preprocessing.CLIPImagePreprocessor` and in-graph
:class:`~keras_clip.text.tokenizer.CLIPTokenizer` that the exported models use.

Bad records never stop the pipeline; they are dropped and counted in a :class:`SkipCounter`
(``bad_image``: missing / unreadable / undecodable image; ``empty_caption``: missing or blank;
``bad_caption``: not UTF-8; ``bad_record``: a TSV row without the needed columns).

Example:
    >>> ds = make_clip_dataset("/data/cc3m/{split}-*.tar", batch_size=256, image_size=224)
    >>> model.fit(ds, epochs=10)
    >>> ds.skip_counter.result()
    {'bad_image': 12, 'empty_caption': 3, 'bad_caption': 0, 'bad_record': 0}
"""

import csv
import functools
import logging
import os
import re

import numpy as np
import tensorflow as tf

from keras_clip.data import shapes as shapes_lib
from keras_clip.preprocessing import CLIPImagePreprocessor, normalize_uint8
from keras_clip.text.tokenizer import CONTEXT_LENGTH, CLIPTokenizer, tokenize

AUTOTUNE = tf.data.AUTOTUNE
REASONS = ("bad_image", "empty_caption", "bad_caption", "bad_record")
IMAGE_EXTENSIONS = ("jpg", "png", "jpeg", "webp")  # open_clip's webdataset image keys, in order
IMAGE_FORMATS = ("clip", "unit", "uint8")

_TFRECORD_EXTS = (".tfrecord", ".tfrecords", ".tfrec")
_TAR_EXTS = (".tar", ".tar.gz", ".tgz")
_TSV_EXTS = (".tsv", ".csv")
_GUARD_BLOCK = 16  # records per guarded mini-dataset (amortises its setup cost)

logger = logging.getLogger("keras_clip.data")


class SkipCounter(tf.Module):
    """Per-reason counts of records dropped by the input pipeline (int64 ``tf.Variable`` s).

    Updated from inside tf.data as records are processed (prefetching runs a few batches ahead
    of training); read from Python at any time. Being a ``tf.Module``, it can be checkpointed
    with the training state. Works created inside or outside ``strategy.scope()``.

    Example:
        >>> counter = SkipCounter()
        >>> ds = make_clip_dataset("shards/*.tfrecord", 64, 224, skip_counter=counter)
        >>> for batch in ds: ...
        >>> counter.result()           # {'bad_image': 2, 'empty_caption': 1, ...}
        >>> counter.log()              # one INFO line on the "keras_clip.data" logger
        >>> counter.write_summaries(step)   # TensorBoard scalars data/skipped/<reason>
    """

    def __init__(self, log_each=False, name="skip_counter"):
        super().__init__(name=name)
        self.log_each = bool(log_each)  # also log every dropped decode error (tf.data warning)
        with tf.init_scope(), tf.device("/cpu:0"):
            self.counts = {r: tf.Variable(0, dtype=tf.int64, trainable=False, name=r)
                           for r in REASONS}

    def add(self, reason, skipped):
        """Graph op: add ``skipped`` (bool or int, scalar) to ``reason``'s count."""
        return self.counts[reason].assign_add(tf.cast(skipped, tf.int64), read_value=False)

    def __getitem__(self, reason):
        return int(self.counts[reason].numpy())

    def result(self):
        """``{reason: count}`` as Python ints."""
        return {r: self[r] for r in REASONS}

    @property
    def total(self):
        return sum(self.result().values())

    def reset(self):
        for v in self.counts.values():
            v.assign(0)

    def log(self, level=logging.INFO):
        """Log the counts (one line) and return the message."""
        counts = self.result()
        detail = ", ".join(f"{r}={n}" for r, n in counts.items() if n) or "none"
        message = f"input pipeline skipped {sum(counts.values())} records ({detail})"
        logger.log(level, message)
        return message

    def write_summaries(self, step, prefix="data/skipped/"):
        """Write each count as a ``tf.summary`` scalar (needs a default summary writer)."""
        for r, v in self.counts.items():
            tf.summary.scalar(prefix + r, v, step=step)

    def __repr__(self):
        return f"SkipCounter({self.result()})"


# ----------------------------------------------------------------------------------------------
# Files

def list_files(pattern, split=None):
    """Sorted paths for a glob, a WebDataset brace range or a list of them (error if none).

    ``{split}`` in a pattern is replaced by ``split``; ``{000..099}`` expands to zero-padded
    numbers as in WebDataset shard specs; ``*?[`` globs use ``tf.io.gfile`` (local, GCS, …).

    Example:
        >>> list_files("/data/laion/{00000..00009}.tar")[:2]
        ['/data/laion/00000.tar', '/data/laion/00001.tar']
    """
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files = []
    for p in patterns:
        p = os.fspath(p)
        if split is not None:
            p = p.replace("{split}", split)
        for q in _expand_braces(p):
            if any(c in q for c in "*?["):
                files.extend(sorted(tf.io.gfile.glob(q)))
            elif tf.io.gfile.exists(q):
                files.append(q)
            else:
                raise FileNotFoundError(f"no such file: {q!r}")
    if not files:
        raise FileNotFoundError(f"no files match {pattern!r}")
    return files


def _expand_braces(pattern):
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    return [q for i in range(int(lo), int(hi) + 1)
            for q in _expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]


def _files_dataset(files, shuffle_files, seed):
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds


def _interleave_files(files, open_fn, shuffle_files, seed, cycle_length=None):
    cycle = min(len(files), cycle_length or 8)
    return _files_dataset(files, shuffle_files, seed).interleave(
        open_fn, cycle_length=cycle, block_length=1, num_parallel_calls=AUTOTUNE)


# ----------------------------------------------------------------------------------------------
# TFRecord (img2dataset)

def read_tfrecord(pattern, image_key=IMAGE_EXTENSIONS, caption_key="txt", shuffle_files=False,
                  seed=None, compression_type=None):
    """img2dataset ``tfrecord`` shards → ``{"image_bytes", "captions"}`` (unbatched).

    img2dataset writes one ``tf.train.Example`` per image: ``key`` (bytes), the image under the
    encode format's name (``jpg`` by default), ``txt`` (the caption, when captions are saved)
    and the metadata columns. ``image_key`` may list several names: the first non-empty wins.
    A missing caption reads as empty (counted later as ``empty_caption``).

    Example:
        >>> ds = read_tfrecord("/data/cc3m/*.tfrecord")
        >>> next(iter(ds))["captions"]
        <tf.Tensor: shape=(), dtype=string, numpy=b'a dog on a beach'>
    """
    files = list_files(pattern)
    keys = (image_key,) if isinstance(image_key, str) else tuple(image_key)
    features = {k: tf.io.FixedLenFeature([], tf.string, default_value="")
                for k in (*keys, caption_key)}

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        image = example[keys[0]]
        for k in keys[1:]:
            image = tf.where(tf.strings.length(image) > 0, image, example[k])
        return {"image_bytes": image, "captions": example[caption_key]}

    records = _interleave_files(
        files, lambda f: tf.data.TFRecordDataset(f, compression_type=compression_type),
        shuffle_files, seed)
    return records.map(parse, num_parallel_calls=AUTOTUNE)


# ----------------------------------------------------------------------------------------------
# WebDataset tar shards

def read_webdataset(pattern, image_ext=IMAGE_EXTENSIONS, caption_ext="txt", shuffle_files=False,
                    seed=None, cycle_length=4):
    """WebDataset tar shards → ``{"image_bytes", "captions"}`` (unbatched), in tar order.

    As in ``webdataset``: a member ``dir/key.ext`` has key ``dir/key`` (up to the basename's
    first dot) and extension ``ext`` (lower-cased); consecutive members with the same key form
    one sample; the image is the first member whose extension is in ``image_ext``, the caption
    the ``caption_ext`` member. A sample without an image yields empty ``image_bytes`` (counted
    as ``bad_image`` downstream), one without a caption an empty caption.

    Parsed with TF ops: each shard is read whole (keep shards < 2 GiB; ``.tar.gz`` / ``.tgz``
    are decompressed in memory), ``cycle_length`` shards at a time — memory is about twice
    that many shards. ustar, GNU long names and pax ``path`` records are handled; a key
    repeated later in the tar starts a new sample, but a repeated extension within one run of
    a key does not (the first member wins).

    Example:
        >>> ds = read_webdataset("/data/laion/{00000..00099}.tar")
    """
    files = list_files(pattern)
    image_ext = (image_ext,) if isinstance(image_ext, str) else tuple(image_ext)

    def open_shard(path):
        data = tf.io.read_file(path)
        if any(f.endswith((".gz", ".tgz")) for f in files):
            gz = tf.strings.regex_full_match(path, r".*\.(tar\.gz|tgz)")
            data = tf.cond(gz, lambda: tf.io.decode_compressed(data, "GZIP"), lambda: data)
        return tf.data.Dataset.from_tensor_slices(
            _webdataset_samples(data, image_ext, caption_ext))

    return _interleave_files(files, open_shard, shuffle_files, seed, cycle_length)


def _cstring(field):
    """A NUL-terminated tar header field → its text."""
    return tf.strings.regex_replace(field, r"(?s)\x00.*", "")


def _octal(fields):
    """Tar numeric header fields (octal ASCII, space/NUL padded) of one size → int64."""
    b = tf.cast(tf.io.decode_raw(fields, tf.uint8), tf.int64)  # (..., width)
    digit = (b >= 48) & (b <= 55)
    started = tf.cumsum(tf.cast(digit, tf.int64), axis=-1) > 0
    ended = tf.cumsum(tf.cast(started & ~digit, tf.int64), axis=-1) > 0
    use = digit & ~ended
    power = tf.cumsum(tf.cast(use, tf.int64), axis=-1, reverse=True, exclusive=True)
    return tf.reduce_sum(tf.where(use, (b - 48) * tf.pow(tf.constant(8, tf.int64), power), 0),
                         axis=-1)


def _tar_members(data):
    """Walk the 512-byte headers of a tar held in a scalar tf.string.

    Returns (names, types, data offsets, sizes), one entry per header (pax and GNU long-name
    headers included; the caller applies them to the next member).
    """
    length = tf.cast(tf.strings.length(data), tf.int64)

    def more(offset, _):
        # Stop at the end of the data or at the zero block that ends an archive.
        first = tf.strings.substr(data, tf.minimum(offset, length), 1)
        return (offset + 512 <= length) & tf.not_equal(first, "\x00")

    def step(offset, offsets):
        # Only what the walk needs (the size); the rest of the header is parsed vectorised.
        size = _octal(tf.strings.substr(data, offset + 124, 12))
        return offset + 512 + (size + 511) // 512 * 512, offsets.write(offsets.size(), offset)

    offsets = tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[])
    _, offsets = tf.while_loop(more, step, [tf.constant(0, tf.int64), offsets])
    offsets = offsets.stack()

    def field(pos, size):
        return tf.strings.substr(data, offsets + pos,
                                 tf.fill(tf.shape(offsets), tf.constant(size, tf.int64)))

    names = _cstring(field(0, 100))
    prefix = _cstring(field(345, 155))
    ustar = tf.equal(field(257, 5), "ustar")
    names = tf.where(ustar & tf.not_equal(prefix, ""), prefix + "/" + names, names)
    return names, field(156, 1), offsets + 512, _octal(field(124, 12))


_WDS_NAME = r"(?s)((?:.*/)?[^.]+)\.([^/]*)"  # webdataset's base_plus_ext: key, extension


def _webdataset_samples(data, image_ext, caption_ext):
    names, types, offsets, sizes = _tar_members(data)
    # Long names: a GNU 'L' member holds the next member's name, a pax 'x' member a path=.
    def previous(t, first):
        return tf.concat([[first], t], 0)[:-1]

    prev_type = previous(types, "")
    is_long = tf.equal(prev_type, "L") | tf.equal(prev_type, "x")
    prev_data = tf.strings.substr(data, previous(offsets, tf.constant(0, tf.int64)),
                                  tf.where(is_long, previous(sizes, tf.constant(0, tf.int64)), 0))
    pax = r"(?s)(?:.*\n)?\d+ path=([^\n]*)\n.*"
    pax_path = tf.where(tf.strings.regex_full_match(prev_data, pax),
                        tf.strings.regex_replace(prev_data, pax, r"\1"), "")
    long_name = tf.where(tf.equal(prev_type, "L"), _cstring(prev_data), pax_path)
    names = tf.where(tf.not_equal(long_name, ""), long_name, names)

    regular = tf.equal(types, "0") | tf.equal(types, "\x00") | tf.equal(types, "7")
    keep = regular & tf.strings.regex_full_match(names, _WDS_NAME)
    names, offsets, sizes = [tf.boolean_mask(t, keep) for t in (names, offsets, sizes)]
    keys = tf.strings.regex_replace(names, _WDS_NAME, r"\1")
    exts = tf.strings.lower(tf.strings.regex_replace(names, _WDS_NAME, r"\2"))

    n = tf.size(keys, out_type=tf.int64)
    starts = tf.concat([tf.ones([tf.minimum(n, 1)], tf.bool),
                        tf.not_equal(keys[1:], keys[:-1])], 0)
    segment = tf.cumsum(tf.cast(starts, tf.int64)) - 1
    num_samples = tf.reduce_sum(tf.cast(starts, tf.int64))
    index = tf.range(n)
    none = tf.fill([n], n)  # "no such member" marker

    def member(mask):
        """Bytes of the first member per sample that matches mask ("" if none)."""
        first = tf.math.unsorted_segment_min(tf.where(mask, index, none), segment, num_samples)
        found = first < n
        safe = tf.where(found, first, 0)
        pos = tf.where(found, tf.gather(offsets, safe), 0)
        size = tf.where(found, tf.gather(sizes, safe), 0)
        return tf.strings.substr(data, pos, size)

    is_image = tf.reduce_any(tf.equal(exts[:, None], tf.constant(image_ext)[None, :]), axis=1)
    return {"image_bytes": member(is_image), "captions": member(tf.equal(exts, caption_ext))}


# ----------------------------------------------------------------------------------------------
# TSV / CSV (open_clip's CsvDataset)

def default_separator(path):
    """The column separator of a caption table from its extension: ``","`` for ``.csv``,
    tab for anything else (``.tsv``, open_clip's default)."""
    return "," if os.fspath(path).lower().endswith(".csv") else "\t"


def read_tsv(pattern, image_key="filepath", caption_key="title", sep=None, skip_counter=None):
    """open_clip-style CSV/TSV (header line, ``filepath`` and ``title`` columns) →
    ``{"image_bytes", "captions"}`` (unbatched), in file order.

    ``sep`` is the column separator; None (default) takes it from each file's extension
    (`default_separator`): comma for ``.csv``, tab for ``.tsv``.

    Fields follow pandas' default quoting (a field *starting* with ``"`` is quoted, ``""``
    escapes a quote; quotes elsewhere are literal); blank lines are ignored; a quoted field may
    not span lines. Relative image paths are resolved against the CSV's folder. Rows without the
    two columns count as ``bad_record``, images that cannot be read as ``bad_image``.

    Example:
        >>> ds = read_tsv("/data/coco/train.tsv")   # filepath<TAB>title, header first
    """
    counter = skip_counter if skip_counter is not None else SkipCounter()
    if sep is not None and (not isinstance(sep, str) or len(sep) != 1):
        raise ValueError(f"sep must be one character (or None: from the extension), got {sep!r}")
    datasets = [_read_one_tsv(f, image_key, caption_key,
                              default_separator(f) if sep is None else sep, counter)
                for f in list_files(pattern)]
    ds = datasets[0]
    for d in datasets[1:]:
        ds = ds.concatenate(d)
    return _try_map(ds, lambda x: {"image_bytes": tf.io.read_file(x["path"]),
                                   "captions": x["captions"]}, counter, "bad_image",
                    output_spec={"image_bytes": tf.TensorSpec([], tf.string),
                                 "captions": tf.TensorSpec([], tf.string)})


def _read_one_tsv(path, image_key, caption_key, sep, counter):
    with tf.io.gfile.GFile(path, "r") as f:
        header = next(csv.reader([f.readline().rstrip("\r\n")], delimiter=sep), [])
    missing = [k for k in (image_key, caption_key) if k not in header]
    if missing:
        shown = {"\t": "tab", ",": "comma"}.get(sep, repr(sep))
        raise ValueError(f"{path}: no column {missing} in the header {header} read with "
                         f"{shown} as the separator (set image_key / caption_key, or sep if "
                         f"the file is not {shown}-separated)")
    s = "\\x{%02x}" % ord(sep)
    field = f'(?:"(?:[^"]|"")*"|[^"{s}][^{s}]*|)'

    def nth(k):  # the k-th field (group 1) of a whole line
        return f"(?s)^(?:{field}{s}){{{k}}}({field})(?:{s}.*)?$"

    image_re, caption_re = nth(header.index(image_key)), nth(header.index(caption_key))
    folder = os.path.dirname(path)

    def unquote(text):
        quoted = tf.strings.regex_full_match(text, '(?s)".*"')
        inner = tf.strings.regex_replace(tf.strings.regex_replace(text, '(?s)^"(.*)"$', r"\1"),
                                         '""', '"')
        return tf.where(quoted, inner, text)

    def parse(line):
        ok = (tf.strings.regex_full_match(line, image_re)
              & tf.strings.regex_full_match(line, caption_re))
        file = unquote(tf.strings.regex_replace(line, image_re, r"\1"))
        absolute = tf.strings.regex_full_match(file, r"(/|[A-Za-z][A-Za-z0-9+.-]*://).*")
        if folder:
            file = tf.where(absolute, file, tf.strings.join([folder, file], "/"))
        return {"ok": ok & tf.not_equal(file, ""), "path": file,
                "captions": unquote(tf.strings.regex_replace(line, caption_re, r"\1"))}

    def keep(x):
        with tf.control_dependencies([counter.add("bad_record", ~x["ok"])]):
            return tf.identity(x["ok"])

    lines = tf.data.TextLineDataset(path).skip(1).map(
        lambda line: tf.strings.regex_replace(line, "\r$", ""))
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    rows = lines.map(parse, num_parallel_calls=AUTOTUNE).filter(keep)
    return rows.map(lambda x: {"path": x["path"], "captions": x["captions"]})


# ----------------------------------------------------------------------------------------------
# Skipping bad records

def _try_map(ds, fn, counter, reason, output_spec=None, deterministic=None):
    """``ds.map(fn)``, except that records on which ``fn`` raises are dropped and counted.

    TF has no try/except in a graph, so each block of records runs in its own small dataset
    whose ``ignore_errors()`` drops only the failing ``fn`` calls (errors from upstream — a
    missing shard — still surface); each block is padded with "failed" stand-ins to its input
    length and a filter counts those. Blocks run in parallel (interleave), in order.
    Records must be scalars or fixed-shape (they are batched into blocks). ``output_spec``
    (fn's element spec) saves tracing ``fn`` an extra time to find it.
    """
    # The stand-in for a failed record needs fn's output structure.
    spec = output_spec if output_spec is not None else ds.map(fn).element_spec

    def stand_in(s):
        return tf.zeros([0 if d is None else d for d in s.shape], s.dtype)

    failed = (False, tf.nest.map_structure(stand_in, spec))

    def attempt(block):
        n = tf.shape(tf.nest.flatten(block)[0], out_type=tf.int64)[0]
        done = tf.data.Dataset.from_tensor_slices(block).map(lambda x: (True, fn(x)))
        done = done.ignore_errors(log_warning=counter.log_each)
        return done.concatenate(tf.data.Dataset.from_tensors(failed).repeat()).take(n)

    def keep(ok, _):
        with tf.control_dependencies([counter.add(reason, ~ok)]):
            return tf.identity(ok)

    out = ds.batch(_GUARD_BLOCK).interleave(
        attempt, cycle_length=AUTOTUNE, block_length=_GUARD_BLOCK,
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return out.filter(keep).map(lambda ok, x: x)


def check_captions(ds, counter):
    """Strip captions; drop (and count) blank ones and ones that are not valid UTF-8."""
    def strip(x):
        return {**x, "captions": tf.strings.strip(x["captions"])}

    def keep(x):
        text = x["captions"]
        utf8 = tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"),
                        text)
        empty = utf8 & tf.equal(tf.strings.length(text), 0)
        with tf.control_dependencies([counter.add("bad_caption", ~utf8),
                                      counter.add("empty_caption", empty)]):
            return utf8 & ~empty

    return ds.map(strip, num_parallel_calls=AUTOTUNE).filter(keep)


def decode_images(ds, image_size, counter, image_format="clip"):
    """``{"image_bytes", ...}`` → ``{"images", ...}`` resized/cropped to ``image_size`` (square);
    undecodable images are dropped and counted as ``bad_image``.

    image_format: ``"clip"`` — CLIP-normalised float32 (CLIPImagePreprocessor); ``"unit"`` —
    float32 in [0, 1] (dVAE input); ``"uint8"`` — 0..255 pixels. Same resize and crop in all
    three.
    """
    pre = _preprocessor(image_size, image_format)

    def decode(x):
        images = _finish(pre(tf.reshape(x["image_bytes"], [1]))[0], image_format)
        return {"images": images, **{k: v for k, v in x.items() if k != "image_bytes"}}

    spec = {k: v for k, v in ds.element_spec.items() if k != "image_bytes"}
    spec["images"] = tf.TensorSpec([image_size, image_size, 3],
                                   tf.uint8 if image_format == "uint8" else tf.float32)
    return _try_map(ds, decode, counter, "bad_image", output_spec=spec)


def _preprocessor(image_size, image_format):
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if image_format == "clip":
        return CLIPImagePreprocessor(image_size)
    return CLIPImagePreprocessor(image_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _finish(images, image_format):
    if image_format == "uint8":  # the preprocessor's [0, 1] values are exact 8-bit levels / 255
        return tf.cast(tf.round(images * 255.0), tf.uint8)
    return images


# ----------------------------------------------------------------------------------------------
# The training pipeline

def source_format(source):
    """"shapes", "tfrecord", "webdataset" or "tsv", from the name / extension of ``source``."""
    if isinstance(source, str) and source == "shapes":
        return "shapes"
    first = os.fspath(source if isinstance(source, (str, os.PathLike)) else list(source)[0])
    name = first.lower()
    for exts, fmt in ((_TFRECORD_EXTS + tuple(e + ".gz" for e in _TFRECORD_EXTS), "tfrecord"),
                      (_TAR_EXTS, "webdataset"), (_TSV_EXTS, "tsv")):
        if name.endswith(exts):
            return fmt
    raise ValueError(f"cannot tell the format of {first!r} from its extension "
                     f"({_TFRECORD_EXTS + _TAR_EXTS + _TSV_EXTS}); pass format=")


def read_source(source, split="train", shuffle=False, seed=0, skip_counter=None, format=None,
                **reader_kwargs):
    """Any supported file source → unbatched ``{"image_bytes", "captions"}`` (shards shuffled
    when ``shuffle``). See :func:`make_clip_dataset` for the accepted sources."""
    fmt = format or source_format(source)
    files = list_files(source, split=split)
    counter = skip_counter if skip_counter is not None else SkipCounter()
    if fmt == "tfrecord":
        gz = all(f.endswith(".gz") for f in files)
        return read_tfrecord(files, shuffle_files=shuffle, seed=seed,
                             compression_type=reader_kwargs.pop("compression_type",
                                                                "GZIP" if gz else None),
                             **reader_kwargs)
    if fmt == "webdataset":
        return read_webdataset(files, shuffle_files=shuffle, seed=seed, **reader_kwargs)
    if fmt == "tsv":
        return read_tsv(files, skip_counter=counter, **reader_kwargs)
    raise ValueError(f"unknown format {fmt!r}: expected tfrecord, webdataset or tsv")


def make_clip_dataset(source, batch_size, image_size=224, split="train", shuffle=None, seed=0,
                      drop_remainder=True, context_length=CONTEXT_LENGTH, *, num_examples=None,
                      shuffle_buffer=10_000, image_format="clip", tokenizer=None,
                      skip_counter=None, format=None, **reader_kwargs):
    """Batched, prefetched ``{"images": (B, S, S, 3), "token_ids": int32 (B, context_length)}``.

    Args:
        source: ``"shapes"`` (built-in, see ``keras_clip.data.shapes``; ``num_examples``
            defaults to 20k train / 1k val / 1k heldout), or shard path(s): a glob, a WebDataset
            brace range, or a list; ``{split}`` in a path is replaced by ``split``. The format
            comes from the extension: ``.tfrecord``/``.tfrec`` (img2dataset), ``.tar``
            (WebDataset), ``.tsv``/``.csv`` (open_clip's columns; tab-separated ``.tsv``,
            comma-separated ``.csv`` unless ``sep=``).
        batch_size, image_size: per-step batch and square image side.
        split: shapes split; for files it only fills ``{split}``.
        shuffle: shard order and a ``shuffle_buffer``-record buffer (full shuffle for shapes),
            reshuffled each epoch, deterministic given ``seed``. Default: ``split == "train"``.
        num_examples: keep at most this many examples (after skipping bad records).
        image_format: ``"clip"`` (normalised float32), ``"unit"`` (float32 in [0, 1], for the
            dVAE) or ``"uint8"``.
        tokenizer: callable tf.string (B,) → int ids (B, L); default ``CLIPTokenizer``
            in the pipeline. For shapes the captions are a fixed set: they are tokenized once
            up front (default: the exact Python ``tokenize``, same ids).
        skip_counter: a :class:`SkipCounter` to count into; a new one otherwise. Either way it
            is available as ``dataset.skip_counter``.
        reader_kwargs: passed to the reader (``image_key``, ``caption_key``, ``sep``, …).

    The dataset is finite (one epoch per iteration); maps run with AUTOTUNE parallelism and the
    element order is deterministic. It can be passed to ``model.fit`` or
    ``strategy.experimental_distribute_dataset``.

    Example:
        >>> ds = make_clip_dataset("shapes", batch_size=128, image_size=64)
        >>> {k: v.shape for k, v in next(iter(ds)).items()}
        {'images': TensorShape([128, 64, 64, 3]), 'token_ids': TensorShape([128, 77])}
    """
    if shuffle is None:
        shuffle = split == "train"
    counter = skip_counter if skip_counter is not None else SkipCounter()
    fmt = format or source_format(source)
    if fmt == "shapes":
        if reader_kwargs:
            raise TypeError(f"unexpected arguments for the shapes data: {sorted(reader_kwargs)}")
        ds = _shapes_batches(split, batch_size, image_size, shuffle, seed, drop_remainder,
                             num_examples, image_format, tokenizer, context_length)
    else:
        if tokenizer is None:
            tokenizer = CLIPTokenizer(context_length=context_length)
        records = read_source(source, split=split, shuffle=shuffle, seed=seed,
                              skip_counter=counter, format=fmt, **reader_kwargs)
        if shuffle:  # before decoding: encoded bytes are smaller than pixels
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        examples = decode_images(check_captions(records, counter), image_size, counter,
                                 image_format)
        if num_examples is not None:
            examples = examples.take(num_examples)
        ds = examples.batch(batch_size, drop_remainder=drop_remainder,
                            num_parallel_calls=AUTOTUNE)
        ds = ds.map(lambda x: {"images": x["images"],
                               "token_ids": _tokens(tokenizer, x["captions"])},
                    num_parallel_calls=AUTOTUNE)
    ds = ds.prefetch(AUTOTUNE)
    ds.skip_counter = counter
    return ds


def _tokens(tokenizer, captions):
    tokens = tf.convert_to_tensor(tokenizer(captions))
    tokens.set_shape(captions.shape.concatenate(tokens.shape[1:]))  # keep the static batch size
    return tokens


def _shapes_batches(split, batch_size, image_size, shuffle, seed, drop_remainder, num_examples,
                    image_format, tokenizer, context_length):
    # Already square and at size: no JPEG round trip. Captions are tokenized once up front (a
    # fixed set), and each batch gathers images and ids from one in-memory copy.
    if num_examples is None:
        num_examples = shapes_lib.DEFAULT_NUM_EXAMPLES[split]
    data = shapes_lib.generate_shapes(num_examples, split=split, image_size=image_size,
                                      seed=seed)
    if tokenizer is None:
        ids = _shapes_token_ids(num_examples, split, image_size, seed, context_length)
    else:
        ids = _tokenize_in_chunks(tokenizer, data["captions"])
    images, ids = tf.constant(data["images"]), tf.constant(ids)
    pre = _preprocessor(image_size, image_format)

    def pixels(i):
        x = tf.gather(images, i)
        if image_format == "uint8":
            return x
        # Already at size: ToTensor + Normalize only, with the preprocessor's mean/std (the
        # layer's own arithmetic; tests check it equals the layer).
        return normalize_uint8(x, pre.mean, pre.std)

    ds = tf.data.Dataset.range(num_examples)
    if shuffle:
        ds = ds.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda i: {"images": pixels(i), "token_ids": tf.gather(ids, i)},
                  num_parallel_calls=AUTOTUNE)


@functools.lru_cache(maxsize=8)
def _shapes_token_ids(num_examples, split, image_size, seed, context_length):
    # The exact Python tokenizer, once per distinct caption (about half of them repeat).
    captions = shapes_lib.generate_shapes(num_examples, split=split, image_size=image_size,
                                          seed=seed)["captions"]
    unique, index = np.unique(np.array(captions, dtype=object), return_inverse=True)
    ids = tokenize(list(unique), context_length=context_length, truncate=True)[index.ravel()]
    ids.setflags(write=False)
    return ids


def _tokenize_in_chunks(tokenizer, captions, chunk=4096):
    fn = tf.function(lambda c: tf.convert_to_tensor(tokenizer(c)))
    return np.concatenate([fn(tf.constant(captions[i:i + chunk])).numpy()
                           for i in range(0, len(captions), chunk)])
