"""Image search inside the CLIP SavedModel: a collection's embeddings plus exact top-k signatures.

:class:`CLIPSearchModule` is :class:`export.saved_model.CLIPServingModule` (all its signatures)
plus two search signatures over an image collection whose embeddings are stored in the
SavedModel's variables:

* ``search``: ``texts`` tf.string [B] + ``k`` int32 [B] or [1] → ``ids`` tf.string [B, k] (the
  collection's ids, best first) and ``scores`` float32 [B, k] (cosine similarity in [-1, 1]
  between the query's and the image's L2-normalised embeddings).
* ``search_image``: ``images`` tf.string [B] (encoded JPEG/PNG/GIF/BMP/WebP, query by example)
  + ``k`` → the same outputs.

``k`` has one value per query (so TF Serving's row format, ``{"instances": [{"texts": "a red
circle", "k": 5}]}``, works) or a single value for the whole batch (columnar format, ``{"inputs":
{"texts": [...], "k": [5]}}``); every value must be equal and in ``[1, N]`` with N the collection
size, else the request fails with InvalidArgument ("k must be between 1 and the collection size
N, got ..." / "k: all values must be equal ...").

The search is exact: one ``[B, D] x [D, N]`` matmul and ``tf.math.top_k`` (TF core ops only, so
the stock ``tensorflow_model_server`` runs it). Cost grows linearly with N in SavedModel size
(4·N·D bytes) and query time; see the README for measured sizes and latencies.

The collection comes from an index directory (``keras_clip.index`` layout: ``manifest.json``,
``img_emb/img_emb_*.npy``, ``metadata/metadata_*.parquet`` with columns id, path, caption).

Example:
    >>> module = CLIPSearchModule.from_index(model, "runs/demo/index")
    >>> out = module.search(tf.constant(["a red circle"]), tf.constant([3]))
    >>> out["ids"].shape, out["scores"].shape
    (TensorShape([1, 3]), TensorShape([1, 3]))
    $ python -m export.saved_model runs/demo/clip.keras --base-path models/clip --index DIR
"""

import os

import numpy as np
import tensorflow as tf

from export.clip_signatures import CLIPServingModule, DEFAULT_TEMPLATE, check_batch, checked

SEARCH_SIGNATURES = ("search", "search_image")


class Collection:
    """A loaded image collection: ``embeddings`` float32 (N, D) L2-normalised rows, ``ids``,
    ``paths`` (the path or key column), ``captions`` (lists of N str or None) and the index's
    ``manifest`` dict."""

    def __init__(self, embeddings, ids, paths, captions, manifest):
        self.embeddings = embeddings
        self.ids = [str(i) for i in ids]
        self.paths, self.captions, self.manifest = list(paths), list(captions), dict(manifest)

    def image_file(self, i):
        """The image file of row ``i``, or None when the source was not files (TFRecord /
        WebDataset keys). Folder sources store the path below the folder
        (``manifest["source"]["data"]``); TSV sources the path as written."""
        source = self.manifest.get("source", {})
        path = self.paths[i]
        if path is None or source.get("format") not in ("folder", "tsv"):
            return None
        if source["format"] == "folder" and not os.path.isabs(path):
            return os.path.join(source["data"], path)
        return path


def load_collection(index_dir, model=None):
    """Read an embedding folder written by ``python -m keras_clip.embed`` into a
    :class:`Collection` (with ``keras_clip.index.ImageIndex.load``).

    Raises FileNotFoundError (no folder / manifest / shard) or ValueError (shards disagree with
    the manifest; ``model`` given and its embedding size, image size or architecture differs
    from the one that made the index), naming the file or the mismatch.
    """
    from keras_clip.index import ImageIndex

    index = ImageIndex.load(os.fspath(index_dir), model=model)
    return Collection(index.embeddings, index.ids, index.paths, index.captions, index.manifest)


def search_top_k(queries, embeddings, k):
    """Exact top-k in the graph: ``queries`` float32 [B, D] (L2-normalised), ``embeddings``
    float32 [N, D], ``k`` int32 [B] or [1] (checked: equal values in [1, N]) → ``(ids_index``
    int32 [B, k], ``scores`` float32 [B, k]), best first."""
    n = tf.shape(embeddings)[0]
    k = tf.reshape(k, [-1])
    batch = tf.shape(queries)[0]
    k = checked(k, tf.debugging.Assert(
        tf.logical_or(tf.equal(tf.size(k), 1), tf.equal(tf.size(k), batch)),
        [tf.strings.format("k: expected one value per query ([B]) or one for the batch ([1]); "
                           "got {} values for a batch of {}", (tf.size(k), batch))]))
    k = checked(  # after the size check: k[0] exists
        k,
        tf.debugging.Assert(tf.reduce_all(tf.equal(k, k[0])), [tf.strings.format(
            "k: all values must be equal (one k per request), got {}", k, summarize=16)]),
        tf.debugging.Assert(
            tf.logical_and(tf.reduce_all(k >= 1), tf.reduce_all(k <= n)),
            [tf.strings.format("k must be between 1 and the collection size ({} images), got {}",
                               (n, k), summarize=16)]))
    scores = tf.matmul(queries, embeddings, transpose_b=True)  # [B, N] cosine
    top = tf.math.top_k(scores, k=k[0], sorted=True)
    return top.indices, top.values


class CLIPSearchModule(CLIPServingModule):
    """CLIPServingModule + ``search`` / ``search_image`` over a collection stored inside.

    Args:
        model: a ``keras_clip.CLIP``.
        embeddings: float (N, D) image embeddings of the collection, D = ``model.embed_dim``;
            rows are L2-normalised here again (float16 shards are not exactly unit length).
        ids: N ids (str; anything else is converted with ``str``).
        template: the zero-shot prompt template (see CLIPServingModule).

    Raises:
        ValueError: embeddings not 2-D, empty, not finite, of another width than the model's
            embed_dim, or ``len(ids) != N``.
    """

    def __init__(self, model, embeddings, ids, template=DEFAULT_TEMPLATE):
        super().__init__(model, template=template)
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"collection embeddings must be (N, D) with N >= 1, got shape "
                             f"{embeddings.shape}")
        if embeddings.shape[1] != model.embed_dim:
            raise ValueError(f"collection embeddings have D={embeddings.shape[1]} but the model's "
                             f"embed_dim is {model.embed_dim}: the index was built with another "
                             "model")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("collection embeddings contain NaN or Inf")
        if len(ids) != embeddings.shape[0]:
            raise ValueError(f"{len(ids)} ids for {embeddings.shape[0]} embeddings")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError(f"collection embeddings: row(s) {np.flatnonzero(norms[:, 0] == 0)[:8]}"
                             " are all zeros")
        self.collection_size = int(embeddings.shape[0])
        self.collection_embeddings = tf.Variable(embeddings / norms, trainable=False,
                                                 name="collection_embeddings")
        self.collection_ids = tf.Variable(np.array([str(i).encode() for i in ids], object),
                                          dtype=tf.string, trainable=False, name="collection_ids")
        text_spec = tf.TensorSpec([None], tf.string, name="texts")
        image_spec = tf.TensorSpec([None], tf.string, name="images")
        k_spec = tf.TensorSpec([None], tf.int32, name="k")
        self.search = tf.function(self._search, input_signature=[text_spec, k_spec])
        self.search_image = tf.function(self._search_image, input_signature=[image_spec, k_spec])

    @classmethod
    def from_index(cls, model, index_dir, template=DEFAULT_TEMPLATE):
        """The module for the collection in ``index_dir`` (see :func:`load_collection`)."""
        collection = load_collection(index_dir, model=model)
        return cls(model, collection.embeddings, collection.ids, template=template)

    def _results(self, queries, k):
        index, scores = search_top_k(queries, self.collection_embeddings, k)
        return {"ids": tf.gather(self.collection_ids, index), "scores": scores}

    def _search(self, texts, k):
        texts = check_batch(texts, "texts")
        return self._results(self._text_embeddings(texts), k)

    def _search_image(self, images, k):
        images = check_batch(images, "images")
        return self._results(self._image_embeddings(images), k)

    def signatures(self):
        out = super().signatures()
        out["search"] = self.search.get_concrete_function()
        out["search_image"] = self.search_image.get_concrete_function()
        return out


def search_warmup_requests(model_name, image_size=32):
    """One PredictRequest per search signature (k = 1), for ``assets.extra``."""
    from export.serving_config import predict_request, sample_png

    k = np.array([1], np.int32)
    return [predict_request(model_name, "search", {"texts": np.array([b"a photo"]), "k": k}),
            predict_request(model_name, "search_image",
                            {"images": np.array([sample_png(image_size)]), "k": k})]
