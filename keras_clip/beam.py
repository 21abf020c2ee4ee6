r"""The embedding job on Apache Beam (the engine TFX uses for batch inference).

``python -m keras_clip.beam --runner DirectRunner|DataflowRunner|FlinkRunner|SparkRunner
--model M.keras --data SRC --out DIR [Beam pipeline options …]`` (the options of
``python -m keras_clip.embed`` plus ``--runner``; options it does not know go to Beam's
``PipelineOptions``) or :func:`run_beam_embedding`:
the same sources, the same preprocessing and the same output layout as
:mod:`keras_clip.embed` (``manifest.json``, ``img_emb/*.npy``, ``metadata/*.parquet``), computed
by a Beam pipeline whose inference step is ``RunInference`` with :class:`CLIPImageModelHandler`
(a ``ModelHandler`` that loads the ``.keras`` CLIP once per worker and embeds batches with the
XLA-compiled image tower, every batch padded to ``batch_size`` as in the local job).

The pipeline: output shard numbers → ``Reshuffle`` (spread over workers) → read that shard's
records from the source and decode them with ``CLIPImagePreprocessor`` (the local job's
``decode_records``; bad images go to a side output) → ``RunInference`` → group by shard →
write the shard (atomically, into the staging folder ``.DIR.partial``). The driver then writes
the manifest and renames the staging folder to ``DIR``, as the local job does. Finished shards
of an interrupted run (local or Beam) are not recomputed.

Needs the ``[beam]`` extra (``apache-beam==2.77.*``). Workers must be able to import
``keras_clip`` and read the model and the data (for Dataflow / Flink / Spark: a shared file
system or GCS paths, and ``--setup_file`` or a container with this package). Reading shard *k*
of a TFRecord / WebDataset source skips the records before it, so each worker reads the
source up to its shards; the driver counts the records first (one pass without decoding).

Example:
    >>> run_beam_embedding("clip.keras", "/data/shards/*.tar", "/index/shards",
    ...                    runner="DirectRunner",
    ...                    beam_args=["--direct_num_workers=2",
    ...                               "--direct_running_mode=multi_processing"])
"""

import os
import sys

import numpy as np

from keras_clip import embed as embed_lib

__all__ = ["CLIPImageModelHandler", "run_beam_embedding"]


def _beam():
    try:
        import apache_beam as beam
    except ImportError as e:
        raise ImportError("--runner needs Apache Beam: pip install 'keras-clip-dalle[beam]' "
                          "(apache-beam==2.77.*)") from e
    return beam


class _LoadedModel:
    """What the handler's load_model returns (Beam's shared cache needs a weak-referenceable
    object, not a tuple)."""

    def __init__(self, model, encode):
        self.model, self.encode = model, encode


def _make_handler_class():
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class CLIPImageModelHandler(ModelHandler):
        """RunInference model handler: preprocessed images float32 (S, S, 3) → L2-normalised
        float32 (embed_dim,) embeddings of a ``.keras`` CLIP's image tower.

        Args:
            model_path: the ``.keras`` file (readable by every worker).
            batch_size: largest batch; every batch is zero-padded to it (one XLA program).
            jit_compile: XLA-compile the tower, as the local job does: True, False or
                ``"auto"`` (XLA unless the model computes in bfloat16).
        """

        def __init__(self, model_path, batch_size=256, jit_compile="auto"):
            super().__init__()
            self.model_path = model_path
            self.batch_size = int(batch_size)
            self.jit_compile = jit_compile if jit_compile == "auto" else bool(jit_compile)

        def load_model(self):
            os.environ.setdefault("KERAS_BACKEND", "tensorflow")
            import keras_clip  # noqa: F401  (registers the classes)

            model, _ = embed_lib.load_clip(self.model_path)
            return _LoadedModel(model, embed_lib.make_image_encoder(model, self.jit_compile))

        def run_inference(self, batch, model, inference_args=None):
            import tensorflow as tf

            encode = model.encode
            images = np.stack(batch).astype(np.float32)
            n = len(images)
            if n < self.batch_size:
                images = np.concatenate([images, np.zeros((self.batch_size - n,)
                                                          + images.shape[1:], np.float32)])
            emb = encode(tf.constant(images)).numpy()[:n]
            return [PredictionResult(x, e) for x, e in zip(batch, emb)]

        def get_num_bytes(self, batch):
            return sum(np.asarray(x).nbytes for x in batch)

        def batch_elements_kwargs(self):
            return {"min_batch_size": 1, "max_batch_size": self.batch_size}

        def get_metrics_namespace(self):
            return "keras_clip_embed"

    return CLIPImageModelHandler


try:
    CLIPImageModelHandler = _make_handler_class()
except ImportError:  # Beam is an optional extra; run_beam_embedding says how to install it
    CLIPImageModelHandler = None


class _ReadShard:
    """DoFn body: shard number → its decoded records (main output) and skipped records /
    the shard's record count (side outputs)."""

    def __init__(self, source_args, shard_size, preprocessing):
        self.source_args = source_args
        self.shard_size = shard_size
        self.preprocessing = preprocessing
        self.source = None

    def setup(self):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        from keras_clip.preprocessing import CLIPImagePreprocessor

        self.source = embed_lib.EmbeddingSource(**self.source_args)
        p = self.preprocessing
        self.pre = CLIPImagePreprocessor(p["image_size"], mean=p["mean"], std=p["std"],
                                         resize_method=p["resize_method"],
                                         antialias=p["antialias"])

    def process(self, shard):
        beam = _beam()
        start = shard * self.shard_size
        records = self.source.dataset().skip(start).take(self.shard_size)
        n = 0
        for x in embed_lib.decode_records(records, self.pre, self.source.reads_files) \
                .as_numpy_iterator():
            n += 1
            index, name = int(x["index"]), x["name"].decode("utf-8", "replace")
            if not x["ok"]:
                yield beam.pvalue.TaggedOutput("skipped", (shard, embed_lib.skipped_entry(
                    index, name, bool(x["empty"]), self.source.name_column)))
                continue
            caption = x["caption"].decode("utf-8", "replace") if x["has_caption"] else None
            yield ((shard, index, name, caption), x["images"])
        yield beam.pvalue.TaggedOutput("records", (shard, n))


def _write_shard(item, staging, shard_size, name_column, dtype, dim):
    shard, groups = item
    rows = sorted(groups["rows"])
    skipped = sorted(groups["skipped"], key=lambda s: int(s["id"]))
    (num_records,) = groups["records"]
    emb = np.stack([r[3] for r in rows]) if rows else np.zeros((0, dim), np.float32)
    embed_lib.write_shard(staging, shard, shard * shard_size, num_records, emb,
                          [str(r[0]) for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                          skipped, name_column, dtype)
    return shard


def run_beam_embedding(model, data, out, runner="DirectRunner", beam_args=(), *,
                       batch_size=256, shard_size=None, dtype="float16", format=None,
                       image_key=None, caption_key=None, sep="\t", jit_compile="auto"):
    """Runs the embedding job as a Beam pipeline (see the module docstring).

    Args:
        model: the path of a ``.keras`` CLIP (workers load it; a model object is a TypeError).
        data, out, batch_size, shard_size, dtype, format, image_key, caption_key, sep,
            jit_compile: as for :func:`keras_clip.embed.embed_images`.
        runner: a Beam runner name.
        beam_args: further pipeline options (``--direct_num_workers=2``, ``--project`` …).

    Returns:
        the manifest (dict), written to ``out/manifest.json``.

    Raises:
        ImportError: Beam is not installed. Otherwise as ``embed_images``.
    """
    beam = _beam()
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from keras_clip.preprocessing import CLIPImagePreprocessor

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError("the Beam job needs the model as a .keras path (its workers load it), "
                        f"got {type(model).__name__}")
    shard_size = 40 * batch_size if shard_size is None else shard_size
    embed_lib.check_sizes(batch_size, shard_size, dtype)
    source_args = dict(source=data, format=format, image_key=image_key,
                       caption_key=caption_key, sep=sep)
    source = embed_lib.EmbeddingSource(**source_args)
    source_args["format"] = source.format
    clip, model_path = embed_lib.load_clip(model)
    pre = CLIPImagePreprocessor(clip.image_size)
    job = embed_lib.job_settings(model_path, clip, pre, source, shard_size, dtype)
    total = source.total
    if total is None:
        total = int(source.dataset().reduce(np.int64(0), lambda n, _: n + 1).numpy())
    if total == 0:
        raise ValueError(f"no records in {data}")
    num_shards = -(-total // shard_size)
    staging = embed_lib.prepare_output(out, job)
    done = {s["shard"] for s in embed_lib.finished_shards(staging)}
    todo = [k for k in range(num_shards) if k not in done]
    dim = clip.embed_dim
    del clip

    if todo:
        options = PipelineOptions(list(beam_args), runner=runner)
        handler = KeyedModelHandler(CLIPImageModelHandler(model_path, batch_size, jit_compile))
        reader = _ReadShard(source_args, shard_size, job["preprocessing"])

        class ReadShard(beam.DoFn):
            def setup(self):
                reader.setup()

            def process(self, shard):
                yield from reader.process(shard)

        with beam.Pipeline(options=options) as p:
            parts = (p | "Shards" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
                     | "Decode" >> beam.ParDo(ReadShard()).with_outputs("skipped", "records",
                                                                         main="images"))
            rows = (parts.images | "Embed" >> RunInference(handler)
                    | "ByShard" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[0][2], kv[0][3],
                                                                   kv[1].inference))))
            _ = ({"rows": rows, "skipped": parts.skipped, "records": parts.records}
                 | "Group" >> beam.CoGroupByKey()
                 | "Write" >> beam.Map(_write_shard, staging, shard_size, source.name_column,
                                       dtype, dim))
    states = embed_lib.finished_shards(staging)
    if len(states) != num_shards:
        raise RuntimeError(f"the Beam pipeline finished {len(states)} of {num_shards} shards "
                           f"in {staging}; run again to finish the rest")
    extra = {"bad_records": source.bad_records} if source.format == "tsv" else None
    return embed_lib.finish_output(staging, out, job, states, extra)


def main(argv=None):
    parser = embed_lib.build_parser(prog="python -m keras_clip.beam")
    parser.description = ("The embedding job (python -m keras_clip.embed) on Apache Beam with "
                          "RunInference; options it does not know go to Beam's PipelineOptions "
                          "(e.g. --direct_num_workers=2 --direct_running_mode=multi_processing).")
    parser.add_argument("--runner", default="DirectRunner",
                        help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, "
                             "SparkRunner, …")
    args, beam_args = parser.parse_known_args(argv)
    data = args.data[0] if len(args.data) == 1 else args.data
    try:
        manifest = run_beam_embedding(
            args.model, data, args.out, runner=args.runner, beam_args=beam_args,
            batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
            format=args.format, image_key=args.image_key, caption_key=args.caption_key,
            sep=args.sep, jit_compile=False if args.no_xla else "auto")
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, TypeError,
            ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(embed_lib.summary_line(manifest, args.out))
    return 0


if __name__ == "__main__":
    import keras_clip  # noqa: F401  (quiet start-up, registers the model classes)

    sys.exit(main())
