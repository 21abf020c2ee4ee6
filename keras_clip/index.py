"""Image search over the embeddings written by ``python -m keras_clip.embed``.

``ImageIndex.load(DIR)`` reads the folder (``manifest.json``, ``img_emb/*.npy``,
``metadata/*.parquet``; see :mod:`keras_clip.embed`); ``search(texts=… | images=…, k)`` encodes
the queries with the CLIP model — texts through the in-graph
:class:`~keras_clip.text.tokenizer.CLIPTokenizer`, images (encoded bytes, file paths or pixel
arrays) through :class:`~keras_clip.preprocessing.CLIPImagePreprocessor` configured as the
manifest says — and returns the ``k`` most similar images by cosine similarity.

Exact search (the default) is a chunked matrix product: queries (B, d) against ``chunk_size``
rows of the embeddings at a time, keeping a running top-k, so memory stays about
``B * chunk_size * 4`` bytes whatever the collection size. For large collections
``build_ann()`` adds a FAISS inverted-file index (the ``[ann]`` extra, ``faiss-cpu``; inner
product on the unit vectors, i.e. cosine); searches then use it unless ``exact=True``.

Example:
    >>> index = ImageIndex.load("/index/photos", model=keras_clip.saving.load_model("clip.keras"))
    >>> result = index.search(texts=["a dog on a beach"], k=5)
    >>> result.ids[0], result.scores[0]            # 5 ids (str), float32 (5,) best first
    >>> index.search(images=["query.jpg"], k=10).paths[0]
    >>> index.search_embeddings(np.random.randn(3, index.dim), k=10).scores.shape
    (3, 10)
"""

import json
import os

import numpy as np

from keras_clip.embed import MANIFEST

__all__ = ["ImageIndex", "SearchResult"]

ANN_KINDS = ("ivf_flat", "ivf_sq8")


class SearchResult(dict):
    """The answer to a search of B queries; a dict whose keys are also attributes.

    Keys: ``ids`` (B lists of k str), ``scores`` (float32 (B, k), cosine similarity, best
    first), ``indices`` (int64 (B, k), rows of ``ImageIndex.embeddings``), ``paths`` (B lists of
    k str: the path or key column) and ``captions`` (B lists of k str or None).
    """

    __getattr__ = dict.__getitem__

    def __dir__(self):
        return list(self.keys())


class ImageIndex:
    """L2-normalised image embeddings with their ids, paths / keys and captions; searchable.

    Attributes:
        embeddings: float32 (N, d) numpy, L2-normalised rows.
        ids, paths, captions: lists of N (str, str, str or None).
        manifest: the folder's ``manifest.json`` (dict); ``{}`` for an index made from arrays.
        dim: d. ``model``: the CLIP model used to encode text / image queries, or None.
    """

    def __init__(self, embeddings, ids=None, paths=None, captions=None, manifest=None,
                 model=None):
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty (N, d) array, got shape {emb.shape}")
        n = emb.shape[0]
        self.embeddings = np.ascontiguousarray(emb)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(n)]
        self.paths = list(paths) if paths is not None else [None] * n
        self.captions = list(captions) if captions is not None else [None] * n
        for name, values in (("ids", self.ids), ("paths", self.paths),
                             ("captions", self.captions)):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} embeddings")
        self.manifest = dict(manifest or {})
        self.dim = emb.shape[1]
        self.model = None
        self._ann = None
        if model is not None:
            self.set_model(model)

    def __len__(self):
        return self.embeddings.shape[0]

    def __repr__(self):
        ann = f", ann={self._ann[0]}" if self._ann else ""
        return f"ImageIndex({len(self)} images, dim {self.dim}{ann})"

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory, model=None):
        """Reads an embedding folder written by ``python -m keras_clip.embed``.

        Args:
            directory: the job's ``--out`` folder.
            model: optional CLIP model (object, or ``.keras`` path) for text / image queries;
                checked against the manifest (see :meth:`set_model`).

        Raises:
            FileNotFoundError: no folder, no ``manifest.json`` or a shard file missing.
            ValueError: a shard whose shape, dtype or row count disagrees with the manifest.
        """
        import pyarrow.parquet as pq

        directory = os.fspath(directory)
        path = os.path.join(directory, MANIFEST)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"embedding folder not found: {directory}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} has no {MANIFEST}: not an embedding folder "
                                    "written by python -m keras_clip.embed (or its run has not "
                                    "finished)")
        with open(path) as f:
            manifest = json.load(f)
        dim = int(manifest["embed_dim"])
        name_column = manifest.get("metadata_columns", ["id", "path", "caption"])[1]
        embs, ids, paths, captions = [], [], [], []
        for shard in manifest["shards"]:
            emb_path = os.path.join(directory, shard["embeddings"])
            meta_path = os.path.join(directory, shard["metadata"])
            for p in (emb_path, meta_path):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{p} (listed in {path}) is missing")
            emb = np.load(emb_path)
            if emb.ndim != 2 or emb.shape != (shard["count"], dim):
                raise ValueError(f"{emb_path}: shape {emb.shape}, the manifest says "
                                 f"({shard['count']}, {dim})")
            if emb.dtype.name != manifest["dtype"]:
                raise ValueError(f"{emb_path}: dtype {emb.dtype}, the manifest says "
                                 f"{manifest['dtype']}")
            table = pq.read_table(meta_path)
            if table.num_rows != shard["count"]:
                raise ValueError(f"{meta_path}: {table.num_rows} rows for {shard['count']} "
                                 "embeddings")
            missing = {"id", name_column, "caption"} - set(table.column_names)
            if missing:
                raise ValueError(f"{meta_path}: no column(s) {sorted(missing)} (has "
                                 f"{table.column_names})")
            embs.append(emb.astype(np.float32))
            ids += table.column("id").to_pylist()
            paths += table.column(name_column).to_pylist()
            captions += table.column("caption").to_pylist()
        if sum(len(e) for e in embs) != manifest["count"]:
            raise ValueError(f"{directory}: the shards hold {sum(len(e) for e in embs)} "
                             f"embeddings, the manifest says {manifest['count']}")
        return cls(np.concatenate(embs), ids, paths, captions, manifest, model)

    # -- models --------------------------------------------------------------------------------
    def set_model(self, model):
        """Uses ``model`` (a CLIP, or a ``.keras`` path) to encode queries from now on.

        Raises:
            ValueError: its embedding size differs from the index's, or — for an index loaded
                from a folder — its image size or architecture (the manifest's
                ``model_config``) differs from the model that made the embeddings.
        """
        from keras_clip.embed import load_clip, model_summary

        model = load_clip(model)[0]
        self._check_model(model, model_summary)
        self.model = model
        return model

    def _check_model(self, model, model_summary):
        if model.embed_dim != self.dim:
            raise ValueError(f"model/index mismatch: the model's embedding size is "
                             f"{model.embed_dim}, the index's {self.dim}")
        size = self.manifest.get("image_size")
        if size is not None and model.image_size != size:
            raise ValueError(f"model/index mismatch: the model takes {model.image_size}px "
                             f"images, the index was embedded at {size}px (preprocessing "
                             f"{self.manifest.get('preprocessing', {}).get('image_size')}px)")
        config = self.manifest.get("model_config")
        if config:
            mine = model_summary(model)
            diff = sorted(k for k in config if k in mine and _jsonable(mine[k]) != config[k])
            if diff:
                detail = ", ".join(f"{k}: {config[k]!r} vs {mine[k]!r}" for k in diff)
                raise ValueError(f"model/index mismatch: the index was made by another "
                                 f"architecture (index vs model: {detail})")

    def _model(self, model):
        if model is not None:
            if model is not self.model:
                from keras_clip.embed import load_clip, model_summary

                model = load_clip(model)[0]
                self._check_model(model, model_summary)
            return model
        if self.model is None:
            raise ValueError("text and image queries need a CLIP model: pass model= to "
                             "ImageIndex.load or to search (or use search_embeddings)")
        return self.model

    def encode_texts(self, texts, model=None):
        """Texts (str or list of str) → L2-normalised float32 (B, d) with the CLIP text tower."""
        from keras_clip.model import l2_normalize
        from keras_clip.text.tokenizer import CLIPTokenizer

        model = self._model(model)
        texts = [texts] if isinstance(texts, (str, bytes)) else list(texts)
        if not texts:
            raise ValueError("texts is empty: give at least one query text")
        ids = CLIPTokenizer(context_length=model.context_length)(texts)
        return np.asarray(l2_normalize(np.asarray(model.encode_text(ids), np.float32)))

    def encode_images(self, images, model=None):
        """Query images → L2-normalised float32 (B, d) through the index's image path.

        ``images``: encoded bytes or file paths (one or a list), or a uint8 / [0, 1] float array
        (B, H, W, C) — preprocessed by ``CLIPImagePreprocessor`` with the manifest's settings.
        """
        import tensorflow as tf

        from keras_clip.model import l2_normalize
        from keras_clip.preprocessing import CLIPImagePreprocessor

        model = self._model(model)
        conf = self.manifest.get("preprocessing", {})
        pre = CLIPImagePreprocessor(conf.get("image_size", model.image_size),
                                    **{k: conf[k] for k in ("mean", "std", "resize_method",
                                                            "antialias") if k in conf})
        if isinstance(images, (bytes, str, os.PathLike)):
            images = [images]
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images is empty: give at least one query image")
            data = []
            for i, item in enumerate(images):
                if isinstance(item, bytes):
                    data.append(item)
                elif isinstance(item, (str, os.PathLike)):
                    if not os.path.isfile(item):
                        raise FileNotFoundError(f"query image {i} not found: {item}")
                    with open(item, "rb") as f:
                        data.append(f.read())
                else:
                    raise TypeError(f"query image {i}: expected bytes or a file path, got "
                                    f"{type(item).__name__} (pass arrays as one (B, H, W, C) "
                                    "array)")
            pixels = pre(tf.constant(data))
        else:
            pixels = pre(np.asarray(images))
        return np.asarray(l2_normalize(np.asarray(model.encode_image(pixels), np.float32)))

    # -- search --------------------------------------------------------------------------------
    def search(self, texts=None, images=None, k=10, model=None, exact=None):
        """The ``k`` nearest images of each text or image query (give exactly one of them).

        Returns a :class:`SearchResult`. ``exact``: None uses the ANN index if
        :meth:`build_ann` was called, else exact search; True / False force one.

        Raises:
            ValueError: both or neither of texts / images, no model, a model/index mismatch,
                k outside [1, N]; see also :meth:`encode_images`.
        """
        if (texts is None) == (images is None):
            raise ValueError("give exactly one of texts= or images=")
        self._check_k(k)
        queries = (self.encode_texts(texts, model) if texts is not None
                   else self.encode_images(images, model))
        return self.search_embeddings(queries, k, exact=exact)

    def search_embeddings(self, queries, k=10, exact=None, chunk_size=None):
        """The ``k`` rows of ``embeddings`` with the largest dot product with each query.

        Args:
            queries: (B, d) or (d,) float; normalise them for cosine similarity.
            k: 1 <= k <= N.
            exact: see :meth:`search`.
            chunk_size: embedding rows per matrix product in exact search (default: about
                64 MiB of scores).

        Returns:
            :class:`SearchResult`, best first (exact search: equal scores in row order; a tie
            at the k-th place may keep any of the tied rows).
        """
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got shape {q.shape}")
        self._check_k(k)
        if self._ann is not None and exact is not True:
            scores, indices = self._ann_search(q, k)
        elif exact is False:
            raise ValueError("exact=False needs an ANN index: call build_ann() first")
        else:
            scores, indices = exact_search(self.embeddings, q, k, chunk_size)
        return self._result(scores, indices)

    def _check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (the collection size), got {k}")

    def _result(self, scores, indices):
        rows = [[int(i) for i in r] for r in indices]
        return SearchResult(
            ids=[[self.ids[i] for i in r] for r in rows], scores=scores.astype(np.float32),
            indices=indices.astype(np.int64), paths=[[self.paths[i] for i in r] for r in rows],
            captions=[[self.captions[i] for i in r] for r in rows])

    # -- approximate search --------------------------------------------------------------------
    def build_ann(self, kind="ivf_flat", nlist=None, nprobe=None, train_size=None, threads=None,
                  seed=0):
        """Builds a FAISS inverted-file index over the embeddings (needs ``faiss-cpu``).

        Args:
            kind: ``"ivf_flat"`` (float32 vectors, IndexIVFFlat) or ``"ivf_sq8"`` (8-bit
                scalar-quantised vectors, 4x less memory, IndexIVFScalarQuantizer).
            nlist: k-means cells (default ``4 * sqrt(N)``, at least 1, at most N / 39).
            nprobe: cells visited per query (default ``nlist // 16``, at least 1); settable
                later with :meth:`set_nprobe`.
            train_size: vectors sampled for k-means (default ``min(N, 64 * nlist)``).
            threads: OpenMP threads for FAISS (default: its own).

        Returns:
            self. Searches use the ANN index from now on unless ``exact=True``.
        """
        try:
            import faiss
        except ImportError as e:
            raise ImportError("approximate search needs faiss: pip install "
                              "'keras-clip-dalle[ann]' (faiss-cpu)") from e
        if kind not in ANN_KINDS:
            raise ValueError(f"kind must be one of {ANN_KINDS}, got {kind!r}")
        n = len(self)
        if nlist is None:
            nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be in [1, {n}], got {nlist}")
        if threads:
            faiss.omp_set_num_threads(int(threads))
        quantizer = faiss.IndexFlatIP(self.dim)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist,
                                                  faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        train_size = min(n, train_size or 64 * nlist)
        rng = np.random.default_rng(seed)
        sample = self.embeddings[np.sort(rng.choice(n, train_size, replace=False))]
        index.cp.seed = int(seed)
        index.train(sample)
        index.add(self.embeddings)
        self._ann = (kind, index, quantizer)
        self.set_nprobe(nprobe if nprobe is not None else max(1, nlist // 16))
        return self

    def set_nprobe(self, nprobe):
        """Cells the ANN index visits per query (more: better recall, slower)."""
        if self._ann is None:
            raise ValueError("no ANN index: call build_ann() first")
        index = self._ann[1]
        if not 1 <= nprobe <= index.nlist:
            raise ValueError(f"nprobe must be in [1, {index.nlist}], got {nprobe}")
        index.nprobe = int(nprobe)

    def drop_ann(self):
        """Back to exact search only."""
        self._ann = None

    def _ann_search(self, q, k):
        scores, indices = self._ann[1].search(np.ascontiguousarray(q), k)
        if (indices < 0).any():  # fewer than k vectors in the visited cells: fill exactly
            bad = np.nonzero((indices < 0).any(axis=1))[0]
            scores[bad], indices[bad] = exact_search(self.embeddings, q[bad], k)
        return scores, indices


def exact_search(embeddings, queries, k, chunk_size=None):
    """Exact top-``k`` inner products, ``chunk_size`` rows of ``embeddings`` at a time.

    Returns (scores float32 (B, k), indices int64 (B, k)), best first; equal scores in row order.
    Memory: the (B, chunk_size) score block plus (B, 2k) candidates.
    """
    emb = np.asarray(embeddings)
    q = np.asarray(queries, np.float32)
    n, b = emb.shape[0], q.shape[0]
    if chunk_size is None:
        chunk_size = max(1024, (16 << 20) // max(b, 1))  # 64 MiB of float32 scores
    best_s = np.full((b, 0), -np.inf, np.float32)
    best_i = np.zeros((b, 0), np.int64)
    for start in range(0, n, chunk_size):
        block = emb[start:start + chunk_size]
        s = q @ block.astype(np.float32, copy=False).T  # (B, c)
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else \
            np.broadcast_to(np.arange(s.shape[1]), (b, s.shape[1]))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + start], 1)
        order = np.lexsort((cand_i, -cand_s), axis=-1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def _jsonable(value):
    return json.loads(json.dumps(value))
