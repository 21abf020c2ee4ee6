r"""Evaluate a CLIP: zero-shot classification, zero-shot retrieval, linear probe, similarity.

    python -m keras_clip.evaluate --model runs/demo/clip.keras --data shapes:val \
        --task zeroshot_classification --out results/shapes_val.json
    python -m keras_clip.evaluate --model clip.keras --data pets/test --train-data pets/train \
        --task linear_probe --out results/pets_lp.json
    python -m keras_clip.evaluate --model clip.keras --data "coco/val-*.tar" \
        --task zeroshot_retrieval --out results/coco.json
    python -m keras_clip.evaluate --model clip.keras --data shapes:val --task similarity \
        --out results/similarity.json
    python -m keras_clip.evaluate --model ft.keras --wise-ft-zero-shot zs.keras \
        --alphas 0 0.25 0.5 0.75 1 --data shapes:val --task zeroshot_classification --out wise.json

Data (``--data``, and ``--train-data`` for the linear probe):

* ``shapes[:split]`` — the built-in shapes data (a split of ``keras_clip.data.shapes.SPLITS``,
  default val). For
  classification the single-object images (the first ``--num-examples`` of them), labelled with
  the 30 (colour, shape) classes, as ``keras_clip.train`` evaluates; for retrieval and similarity
  every image and its caption.
* a folder — an ImageFolder (one sub-folder per class; ``keras_clip.data.imagefolder``), for
  classification and the linear probe. Class names from the folder names or ``--classnames``.
* shard path(s) — the caption formats the trainer reads (img2dataset ``.tfrecord``, WebDataset
  ``.tar``, open_clip ``.tsv`` (tab-separated) / ``.csv`` (comma-separated)), for retrieval and
  similarity.

Results: ``--out`` (.json) gets CLIP_benchmark's result JSON (``dataset``, ``model``, ``task``,
``metrics``, ``language``; see ``keras_clip.metrics`` for the metric definitions) plus
``num_examples``, ``skipped`` (unreadable images and other dropped records, counted as training
counts them) and task details (similarity: ``similarity``, the images × captions matrix, with
``"rows": "images"``, ``"columns": "captions"`` and the ``captions``; its figure draws it
transposed, captions as rows, and labels its axes so). Beside it: ``<stem>.confusion.png`` and
``<stem>.per_class.csv`` (classification and linear probe), ``<stem>.similarity.png``
(similarity), ``<stem>.wise_ft.png`` (an alpha sweep). Every file is written to a temporary
name and renamed. ``--logdir`` also writes the metrics (and figures) to TensorBoard.

Zero-shot classification scores are cosine similarities with prompt-ensembled class embeddings
(``keras_clip.zero_shot``): ``--ensemble mean`` is OpenAI's recipe (the renormalised mean of
the templates' embeddings; default for ImageFolders, with OpenAI's 80 ImageNet templates);
``--ensemble max`` keeps one prototype per template and a class scores its best one (default
for the shapes data, with ``keras_clip.train``'s templates "a small {}", "a large {}").

The linear probe follows the CLIP paper (Radford et al. 2021, appendix A.3): L2-regularised
logistic regression (scikit-learn, L-BFGS, at most 1000 iterations) on frozen image features;
the inverse regularisation strength C is chosen on a validation split of the training data
(``--val-fraction``) by the paper's parametric search over 10^-6 … 10^6 (7 starting values,
then halving the step around the best until 8 steps per decade), and the final classifier is
trained on train + validation with that C. Features are L2-normalised (CLIP_benchmark's
default).

WiSE-FT sweep: with ``--wise-ft-zero-shot A``, ``--model`` is the fine-tuned model B and the task
runs for each ``--alphas`` value on ``keras_clip.wise_ft.wise_ft(A, B, alpha)``; ``metrics``
are B's (alpha 1), ``wise_ft.sweep`` lists every alpha's.
"""

import argparse
import csv
import io
import json
import math
import os
import warnings
import weakref

import numpy as np

from keras_clip.cli import add_tf_logs_flag, positive_int
from keras_clip.saving import write_atomic, write_text_atomic

__all__ = ["TASKS", "encode_images", "encode_pairs", "evaluate", "linear_probe",
           "parse_data", "plot_confusion_matrix", "plot_similarity", "plot_wise_ft_sweep",
           "similarity_matrix", "zero_shot_scores", "zeroshot_classification",
           "zeroshot_retrieval"]

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "similarity")
ENSEMBLES = ("mean", "max")

# CLIP paper A.3: C over 10^-6 .. 10^6, 8 steps per decade; start from every 2 decades.
C_GRID = np.logspace(-6, 6, 97)
C_START = tuple(range(0, 97, 16))


def _tqdm(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)


# ----------------------------------------------------------------------------------------------
# Data

def parse_data(data):
    """``("shapes", split)`` for ``"shapes"`` / ``"shapes:<split>"`` (split default "val"),
    ``("folder", path)`` for a directory, else ``("shards", data)``."""
    from keras_clip.data.shapes import SPLITS

    text = os.fspath(data)
    if text == "shapes" or text.startswith("shapes:"):
        split = text.partition(":")[2] or "val"
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r} in {text!r}: expected one of {SPLITS}")
        return "shapes", split
    if os.path.isdir(text):
        return "folder", text
    return "shards", text


def shapes_classification_arrays(split, num_examples, image_size, seed=0):
    """uint8 images (N, S, S, 3) and int64 labels of the first ``num_examples`` single-object
    scenes of a shapes split — the images ``keras_clip.train``
    evaluates zero-shot top-1 on (with two objects the first one's class is not well posed)."""
    from keras_clip.data import shapes

    drawn = 2 * num_examples  # about half the scenes have one object: draw more until enough
    while True:
        data = shapes.generate_shapes(drawn, split=split, image_size=image_size, seed=seed)
        single = np.array([len(a["objects"]) == 1 for a in data["attributes"]])
        if single.sum() >= num_examples:
            break
        drawn *= 2
    keep = np.flatnonzero(single)[:num_examples]
    return data["images"][keep], data["labels"][keep]


def _array_dataset(images, labels, batch_size):
    import tensorflow as tf

    from keras_clip.preprocessing import normalize_uint8

    ds = tf.data.Dataset.from_tensor_slices({"images": images, "labels": labels})
    # The shapes are drawn at the model's size: ToTensor + Normalize only (the one image path).
    return ds.batch(batch_size).map(lambda x: {"images": normalize_uint8(x["images"]),
                                               "labels": x["labels"]})


def classification_data(data, image_size, batch_size=64, num_examples=1000, seed=0,
                        classnames=None, skip_counter=None):
    """``(dataset, classnames, default_templates, default_ensemble)`` for classification.

    ``dataset`` yields ``{"images": float32 (B, S, S, 3), "labels": int64 (B,)}`` and can be
    iterated again (for an alpha sweep). Unreadable ImageFolder images are counted in
    ``skip_counter``. Raises ValueError for shard data (no labels) or a bad ImageFolder.
    """
    kind, where = parse_data(data)
    if kind == "shapes":
        from keras_clip.data.shapes import class_names
        from keras_clip.train import SHAPES_TEMPLATES

        if classnames is not None:
            raise ValueError("the shapes data has its own 30 class names; --classnames is for "
                             "ImageFolders")
        images, labels = shapes_classification_arrays(where, num_examples, image_size, seed)
        return (_array_dataset(images, labels, batch_size), class_names(),
                SHAPES_TEMPLATES, "max")
    if kind == "folder":
        from keras_clip.data.imagefolder import image_folder_dataset, read_image_folder
        from keras_clip.zero_shot import OPENAI_IMAGENET_TEMPLATES

        folder = read_image_folder(where, classnames=classnames)
        ds = image_folder_dataset(folder, image_size, batch_size, skip_counter)
        return ds, folder.classnames, OPENAI_IMAGENET_TEMPLATES, "mean"
    raise ValueError(f"classification needs labelled images: 'shapes[:split]' or an ImageFolder "
                     f"directory (one sub-folder per class); {where!r} is not a directory")


def retrieval_data(data, image_size, context_length, batch_size=64, num_examples=1000,
                   split="val", skip_counter=None):
    """Batched ``{"images", "token_ids"}`` of image–caption pairs (row i of each is a pair):
    the shapes data or shards in a format the trainer reads (``make_clip_dataset``, not
    shuffled, the last batch kept); at most ``num_examples`` pairs (None: every shard pair)."""
    from keras_clip.data.readers import make_clip_dataset

    kind, where = parse_data(data)
    if kind == "folder":
        raise ValueError(f"retrieval needs captions: 'shapes[:split]' or shards (.tfrecord, .tar, "
                         f".tsv/.csv); {where!r} is a directory")
    source, split = ("shapes", where) if kind == "shapes" else (where, split)
    if kind == "shapes" and num_examples is None:
        raise ValueError("the shapes data is drawn on the fly: give num_examples")
    return make_clip_dataset(source, batch_size, image_size=image_size, split=split,
                             shuffle=False, drop_remainder=False, context_length=context_length,
                             num_examples=num_examples, skip_counter=skip_counter)


def captioned_images(data, count, image_size, split="val", skip_counter=None):
    """The first ``count`` (uint8 image (S, S, 3), caption) pairs of shapes or shard data."""
    kind, where = parse_data(data)
    if kind == "shapes":
        from keras_clip.data.shapes import generate_shapes

        d = generate_shapes(count, split=where, image_size=image_size)
        return np.array(d["images"]), list(d["captions"])
    if kind == "folder":
        raise ValueError(f"the similarity figure needs captions: 'shapes[:split]' or shards "
                         f"(.tfrecord, .tar, .tsv/.csv); {where!r} is a directory")
    from keras_clip.data.readers import SkipCounter, check_captions, decode_images, read_source

    counter = skip_counter if skip_counter is not None else SkipCounter()
    records = check_captions(read_source(where, split=split, skip_counter=counter), counter)
    images, captions = [], []
    for x in decode_images(records, image_size, counter, "uint8").take(count):
        images.append(x["images"].numpy())
        captions.append(x["captions"].numpy().decode("utf-8"))
    if not images:
        raise ValueError(f"no readable image–caption pairs in {where!r}")
    return np.stack(images), captions


# ----------------------------------------------------------------------------------------------
# Features

def _normalised(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


_COMPILED = weakref.WeakKeyDictionary()  # model -> {name: tf.function}, traced once per model


def _compiled(model, name):
    import tensorflow as tf

    functions = _COMPILED.setdefault(model, {})
    if name not in functions:
        functions[name] = tf.function(getattr(model, name), reduce_retracing=True)
    return functions[name]


def _num_batches(dataset):
    n = int(dataset.cardinality())
    return n if n > 0 else None


def encode_images(model, dataset, progress=True, desc="images"):
    """L2-normalised image features float32 (N, D) and labels int64 (N,) of a dataset of
    ``{"images", "labels"}`` batches."""
    fn = _compiled(model, "encode_image")
    feats, labels = [], []
    for batch in _tqdm(dataset, total=_num_batches(dataset), desc=f"encode {desc}",
                       disable=not progress):
        feats.append(np.asarray(fn(batch["images"])))
        labels.append(batch["labels"].numpy())
    if not feats:
        raise ValueError("no images to evaluate (every image was skipped, or the data is empty)")
    return _normalised(np.concatenate(feats)), np.concatenate(labels).astype(np.int64)


def encode_pairs(model, dataset, progress=True):
    """L2-normalised image and text features (N, D) and token ids (N, L) of a dataset of
    ``{"images", "token_ids"}`` batches."""
    image_fn = _compiled(model, "encode_image")
    text_fn = _compiled(model, "encode_text")
    img, txt, ids = [], [], []
    for batch in _tqdm(dataset, total=_num_batches(dataset), desc="encode pairs",
                       disable=not progress):
        img.append(np.asarray(image_fn(batch["images"])))
        txt.append(np.asarray(text_fn(batch["token_ids"])))
        ids.append(batch["token_ids"].numpy())
    if not img:
        raise ValueError("no image–caption pairs to evaluate (every record was skipped, or the "
                         "data is empty)")
    return _normalised(np.concatenate(img)), _normalised(np.concatenate(txt)), np.concatenate(ids)


def zero_shot_scores(model, features, classnames, templates, ensemble="mean", progress=True):
    """Cosine scores (N, C) of L2-normalised image features (N, D) against prompt-ensembled
    class embeddings.

    ensemble: "mean" — ``keras_clip.zero_shot_classifier`` over all templates (OpenAI); "max" —
    one classifier per template, each class scoring its best template.
    """
    from keras_clip.zero_shot import zero_shot_classifier

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    classnames, templates = list(classnames), list(templates)
    groups = [templates] if ensemble == "mean" else [[t] for t in templates]
    per_chunk = max(1, 256 // len(templates))  # classes per encode batch of about 256 prompts
    chunks = [(g, classnames[i:i + per_chunk]) for g in groups
              for i in range(0, len(classnames), per_chunk)]
    weights = {}
    for g, names in _tqdm(chunks, desc="class embeddings", disable=not progress):
        weights.setdefault(tuple(g), []).append(zero_shot_classifier(model, names, g))
    classifiers = [np.concatenate(weights[tuple(g)], axis=1) for g in groups]  # each (D, C)
    return np.max([features @ c for c in classifiers], axis=0)


def similarity_matrix(model, images, captions):
    """Cosine similarities float32 (N_images, N_captions) of uint8 images (N, S, S, 3) at the
    model's size and caption strings."""
    from keras_clip.preprocessing import normalize_uint8
    from keras_clip.text.tokenizer import tokenize

    img = _normalised(model.encode_image(normalize_uint8(images)))
    ids = tokenize(list(captions), context_length=model.context_length, truncate=True)
    txt = _normalised(model.encode_text(ids))
    return img @ txt.T


# ----------------------------------------------------------------------------------------------
# Tasks

def zeroshot_classification(model, dataset, classnames, templates, ensemble="mean",
                            progress=True):
    """CLIP_benchmark's metrics ``{"acc1", "acc5", "mean_per_class_recall"}`` and the
    details ``{"labels", "predictions", "scores"}`` (numpy) of a labelled dataset."""
    from keras_clip.metrics import classification_metrics

    features, labels = encode_images(model, dataset, progress)
    scores = zero_shot_scores(model, features, classnames, templates, ensemble, progress)
    return classification_metrics(scores, labels), {
        "labels": labels, "predictions": scores.argmax(axis=1), "scores": scores}


def zeroshot_retrieval(model, dataset, ks=(1, 5, 10), match_identical_captions=True,
                       progress=True):
    """Image↔text recall@k (CLIP_benchmark's keys) of a dataset of pairs.

    match_identical_captions: a caption also matches the images of other identical captions
    (the shapes data repeats captions: without this the "right" one of several images with the
    same caption is a coin toss).
    """
    from keras_clip.metrics import retrieval_recall

    img, txt, ids = encode_pairs(model, dataset, progress)
    positives = None
    if match_identical_captions:
        _, caption_id = np.unique(ids, axis=0, return_inverse=True)
        caption_id = caption_id.ravel()
        positives = caption_id[:, None] == caption_id[None, :]
    return retrieval_recall(img, txt, np.arange(len(img)), ks, positives), {"num_pairs": len(img)}


def _fit_logistic(x, y, c, max_iter):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    # Small problems: one BLAS thread (several threads on 2 cores were 10x slower, measured on
    # 100 x 32 features); large ones keep the default.
    limit = 1 if x.size < 10_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(limits=limit):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _scores(clf, x, num_classes):
    out = np.full((len(x), num_classes), -np.inf)
    out[:, clf.classes_] = clf.decision_function(x).reshape(len(x), -1) \
        if len(clf.classes_) > 2 else np.stack([-clf.decision_function(x),
                                                clf.decision_function(x)], axis=1)
    return out


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes=None,
                 val=None, val_fraction=0.2, seed=0, max_iter=1000, progress=True):
    """Logistic-regression linear probe with C chosen on a validation split (CLIP paper A.3).

    Args:
        train_features, train_labels: (N, D) float features, int labels.
        test_features, test_labels: the evaluation set.
        num_classes: number of classes (default: 1 + the largest label seen).
        val: ``(features, labels)`` to choose C on; default: a seeded random ``val_fraction``
            of the training set (the rest trains the candidates).
        val_fraction: share of the training set held out when ``val`` is None.
        seed: the held-out split's seed.
        max_iter: L-BFGS iterations per fit (the paper's 1000).

    Returns:
        ``(metrics, details)``: metrics with CLIP_benchmark's linear-probe keys ``lp_acc1``,
        ``lp_acc5``, ``lp_mean_per_class_recall`` plus ``C`` (chosen), ``val_acc1`` (its
        validation accuracy), ``seed``; details ``{"c_sweep": {C: val acc1},
        "labels", "predictions", "scores"}``. The final classifier is fit on train +
        validation with the chosen C.

    Raises:
        ValueError: fewer than 2 classes in the training split, an empty split, or a
            ``val_fraction`` outside (0, 1).
    """
    from keras_clip.metrics import classification_metrics

    x, y = np.asarray(train_features, np.float64), np.asarray(train_labels, np.int64)
    tx, ty = np.asarray(test_features, np.float64), np.asarray(test_labels, np.int64)
    if num_classes is None:
        num_classes = int(max(y.max(), ty.max())) + 1
    if val is None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(x))
        n_val = int(round(val_fraction * len(x)))
        if n_val < 1 or n_val >= len(x):
            raise ValueError(f"{len(x)} training examples cannot be split {val_fraction:g} for "
                             f"validation (need at least one example on each side)")
        vx, vy, fx, fy = x[order[:n_val]], y[order[:n_val]], x[order[n_val:]], y[order[n_val:]]
    else:
        vx, vy = np.asarray(val[0], np.float64), np.asarray(val[1], np.int64)
        fx, fy = x, y
    if len(np.unique(fy)) < 2:
        raise ValueError(f"the linear probe's training split has {len(np.unique(fy))} class; "
                         f"need at least 2")
    if not len(vx) or not len(tx):
        raise ValueError("empty validation or test set")

    sweep = {}

    def val_acc(i):
        if i not in sweep:
            clf = _fit_logistic(fx, fy, C_GRID[i], max_iter)
            sweep[i] = float(np.mean(clf.predict(vx) == vy))
            bar.update(1)
        return sweep[i]

    def best(indices):  # highest validation accuracy; ties go to the smaller C
        return max(sorted(set(indices)), key=lambda i: (val_acc(i), -i))

    with _tqdm(desc="linear probe: C on validation", disable=not progress) as bar:
        peak = best(C_START)
        step = 8
        while step:
            peak = best([max(peak - step, 0), peak, min(peak + step, len(C_GRID) - 1)])
            step //= 2
    c = float(C_GRID[peak])
    final = _fit_logistic(np.concatenate([fx, vx]), np.concatenate([fy, vy]), c, max_iter)
    scores = _scores(final, tx, num_classes)
    m = classification_metrics(scores, ty)
    metrics = {"lp_acc1": m["acc1"], "lp_acc5": m["acc5"],
               "lp_mean_per_class_recall": m["mean_per_class_recall"], "C": c,
               "val_acc1": sweep[peak], "seed": seed}
    return metrics, {"c_sweep": {float(C_GRID[i]): a for i, a in sorted(sweep.items())},
                     "labels": ty, "predictions": scores.argmax(axis=1), "scores": scores}


# ----------------------------------------------------------------------------------------------
# Files and figures

def _write_text(path, text):
    return write_text_atomic(path, text, newline="")


def _save_figure(fig, path):
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100,
                                                       bbox_inches="tight"))


def plot_confusion_matrix(matrix, classnames, path, title="confusion matrix"):
    """Writes a PNG of the confusion matrix (rows: true class, columns: predicted), coloured by
    the share of each true class, with the counts written in when there are at most 40
    classes. Returns ``path``."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(matrix)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(6.0, 0.32 * n + 2), 60.0)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 100:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classnames, fontsize=8)
    if n <= 40:
        for i, j in zip(*np.nonzero(matrix)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save_figure(fig, path)


def plot_similarity(similarity, images, captions, path, title=None):
    """Writes the N images × M captions cosine-similarity figure of OpenAI's "Interacting with
    CLIP" notebook: ``similarity`` (N, M) (rows: images, as in the results JSON) drawn
    transposed — captions as the figure's rows, images as its columns with their thumbnails
    above, values written in; the axes are labelled so. ``images`` are uint8 (N, H, W, 3).
    Returns ``path``."""
    return _save_figure(_similarity_figure(similarity, images, captions, title), path)


def _similarity_figure(similarity, images, captions, title=None):
    from matplotlib.figure import Figure

    similarity = np.asarray(similarity)
    n_img, n_txt = similarity.shape
    fig = Figure(figsize=(2 + 1.3 * n_img + 0.09 * max(len(c) for c in captions), 2 + 1.1 * n_txt))
    ax = fig.add_subplot()
    ax.imshow(similarity.T, cmap="viridis", aspect="equal",
              extent=(-0.5, n_img - 0.5, n_txt - 0.5, -0.5))
    for i, image in enumerate(images):  # thumbnails in a row above the matrix
        ax.imshow(image, extent=(i - 0.45, i + 0.45, -0.6, -1.5))
    lo, hi = float(similarity.min()), float(similarity.max())
    for i in range(n_img):
        for j in range(n_txt):  # dark text on viridis' light (high) end
            light = hi > lo and (similarity[i, j] - lo) / (hi - lo) > 0.6
            ax.text(i, j, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if light else "white")
    ax.set_xlim(-0.5, n_img - 0.5)
    ax.set_ylim(n_txt - 0.5, -1.6)
    ax.set_yticks(range(n_txt), captions, fontsize=10)
    ax.set_xticks([])
    # The JSON's matrix is images x captions; this figure shows it transposed: say which is which.
    ax.set_ylabel("captions (rows here; the JSON's columns)")
    ax.set_xlabel("images (columns here, thumbnails above; the JSON's rows)")
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or "cosine similarity between image and text features")
    return fig


def plot_wise_ft_sweep(alphas, metrics, path, keys=None):
    """Writes a PNG of metric values against the WiSE-FT alpha (one line per metric key).
    ``metrics`` is a list of dicts, one per alpha. Returns ``path``."""
    from matplotlib.figure import Figure

    keys = keys or [k for k, v in metrics[0].items()  # the [0, 1] metrics (not the probe's C)
                    if isinstance(v, float) and k != "C"]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for k in keys:
        ax.plot(alphas, [m[k] if m[k] is not None else np.nan for m in metrics], marker="o",
                label=k)
    ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel("metric")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("WiSE-FT weight-space interpolation")
    return _save_figure(fig, path)


def _csv_table(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def _print_table(rows, limit=30):
    shown = rows if len(rows) <= limit else sorted(
        rows, key=lambda r: (r["recall"] if r["recall"] is not None else 2.0))[:10]
    if len(shown) < len(rows):
        print(f"the 10 classes with the lowest recall (of {len(rows)}):")
    width = max(len(r["class"]) for r in shown)
    print(f"{'class':{width}}  support  recall  precision  most confused with")
    for r in shown:
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        print(f"{r['class']:{width}}  {r['support']:7d}  {recall:>6}  {precision:>9}  "
              f"{r['most_confused_with'] or '-'}")


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def _stem(out):
    out = os.fspath(out)
    return out[:-5] if out.endswith(".json") else out


def _tensorboard(logdir, results, figures, steps):
    """Scalars ``<task>/<dataset>/<metric>`` (at step round(100 alpha) for a sweep, else 0)
    and the figures as images."""
    import tensorflow as tf

    name = results["dataset"].replace(os.sep, "_")
    with tf.summary.create_file_writer(logdir).as_default():
        for step, metrics in steps:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                    tf.summary.scalar(f"{results['task']}/{name}/{k}", float(v), step=step)
        for key, path in figures.items():
            with open(path, "rb") as f:
                image = tf.io.decode_png(f.read(), channels=3)
            tf.summary.image(f"{results['task']}/{name}/{key}", image[None], step=0)


# ----------------------------------------------------------------------------------------------
# The command's library function

def evaluate(model, data, task, out=None, *, model_name=None, train_data=None, classnames=None,
             templates=None, ensemble=None, batch_size=64, num_examples=1000,
             train_examples=5000, split="val", seed=0, val_fraction=0.2,
             match_identical_captions=True, similarity_count=8, wise_ft_zero_shot=None,
             alphas=(0.0, 0.25, 0.5, 0.75, 1.0), logdir=None, progress=True):
    """Runs one evaluation task and (with ``out``) writes the results JSON and figures.

    Args:
        model: a CLIP, or the path of a ``.keras`` file or of a checkpoint file or folder
            (`keras_clip.checkpoints.load_clip`) (the fine-tuned model B of a WiSE-FT sweep).
        data: ``"shapes[:split]"``, an ImageFolder directory or shard path(s) (see the module
            docstring).
        task: one of ``TASKS``.
        out: the results ``.json`` path; figures and the per-class table go beside it.
        model_name: the ``model`` entry of the JSON (default: the path, or the class name).
        train_data: linear probe: the training data (default ``"shapes:train"`` for shapes).
        classnames: ImageFolder class names: a list or a classnames file path.
        templates: zero-shot templates: a list or a file path (one per line).
        ensemble: "mean" or "max" (default per data, see the module docstring).
        batch_size: images per encoder call.
        num_examples: how many shapes examples (classification: single-object images) and the
            most pairs read from shards (None: all); ``train_examples`` for the linear
            probe's shapes training data.
        split: the ``{split}`` of shard paths.
        seed: shapes data seed and the linear probe's validation split.
        val_fraction: the linear probe's validation share of the training data.
        match_identical_captions: retrieval: identical captions match each other's images.
        similarity_count: images (and captions) in the similarity figure.
        wise_ft_zero_shot: a zero-shot CLIP (or path): sweep ``alphas`` of WiSE-FT between it
            and ``model``.
        logdir: also write metrics and figures to TensorBoard there.
        progress: tqdm progress bars.

    Returns:
        the results dict (as written to ``out``).

    Raises:
        ValueError: an unknown task, data the task cannot use (e.g. an ImageFolder for
            retrieval), a bad ImageFolder (no images, one class), alphas outside [0, 1] …
        FileNotFoundError: a missing model or data file.
    """
    from keras_clip.data.readers import SkipCounter
    from keras_clip.checkpoints import load_clip

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if out is not None and not os.fspath(out).endswith(".json"):
        raise ValueError(f"out must end in .json, got {out!r}")
    if ensemble is not None and ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    alphas = [float(a) for a in alphas]
    if wise_ft_zero_shot is not None:
        if task == "similarity":
            raise ValueError("a WiSE-FT sweep needs a task with metrics, not 'similarity'")
        bad = [a for a in alphas if not 0.0 <= a <= 1.0]
        if bad or not alphas:
            raise ValueError(f"alphas must be in [0, 1] (at least one), got {alphas}")
    if isinstance(templates, (str, os.PathLike)):
        from keras_clip.data.imagefolder import read_templates

        templates = read_templates(templates)
    if isinstance(model, (str, os.PathLike)):
        model_name = model_name or os.fspath(model)
        model = load_clip(model)
    model_name = model_name or type(model).__name__
    if isinstance(wise_ft_zero_shot, (str, os.PathLike)):
        zero_shot_name = os.fspath(wise_ft_zero_shot)
        wise_ft_zero_shot = load_clip(wise_ft_zero_shot)
    else:
        zero_shot_name = type(wise_ft_zero_shot).__name__
    if wise_ft_zero_shot is not None:  # fail before any data is read
        from keras_clip.wise_ft import check_same_architecture

        check_same_architecture(wise_ft_zero_shot, model, labels=(zero_shot_name, model_name))

    counter = SkipCounter()
    kind, where = parse_data(data)
    results = {"dataset": f"shapes:{where}" if kind == "shapes" else os.fspath(data), "model": model_name, "pretrained": model_name,
               "task": task, "metrics": None, "language": "en"}
    figures, files = {}, {}
    stem = _stem(out) if out is not None else None

    if task == "similarity":
        images, captions = captioned_images(data, similarity_count, model.image_size, split,
                                            counter)
        sim = similarity_matrix(model, images, captions)
        results.update(metrics={}, num_examples=len(images), captions=captions,
                       similarity=sim.round(4), rows="images", columns="captions")
        if stem:
            figures["similarity"] = plot_similarity(sim, images, captions,
                                                    stem + ".similarity.png")
        return _finish(results, counter, figures, files, out, logdir, [], progress)

    # Data (iterated again for every alpha of a sweep).
    if task == "zeroshot_retrieval":
        dataset = retrieval_data(data, model.image_size, model.context_length, batch_size,
                                 num_examples,
                                 split, counter)
    else:
        dataset, names, default_templates, default_ensemble = classification_data(
            data, model.image_size, batch_size, num_examples, seed, classnames, counter)
        results["classnames"] = names
        if task == "zeroshot_classification":
            templates = list(templates or default_templates)
            ensemble = ensemble or default_ensemble
            results.update(templates=templates, ensemble=ensemble)
        else:
            if train_data is None:
                if parse_data(data)[0] != "shapes":
                    raise ValueError("the linear probe needs training data (train_data / "
                                     "--train-data): an ImageFolder with the same classes")
                train_data = "shapes:train"
            train_set, train_names, _, _ = classification_data(
                train_data, model.image_size, batch_size, train_examples, seed, classnames,
                counter)
            if list(train_names) != list(names):
                raise ValueError(f"the training data's classes differ from the test data's: "
                                 f"{len(train_names)} classes in {train_data!r} "
                                 f"(first {train_names[:3]}), {len(names)} in {data!r} "
                                 f"(first {names[:3]})")
            results["train_dataset"] = os.fspath(train_data)

    def run(m):
        counter.reset()
        if task == "zeroshot_classification":
            return zeroshot_classification(m, dataset, names, templates, ensemble, progress)
        if task == "zeroshot_retrieval":
            return zeroshot_retrieval(m, dataset, match_identical_captions=match_identical_captions,
                                      progress=progress)
        tf_, tl = encode_images(m, train_set, progress, "train images")
        xf, xl = encode_images(m, dataset, progress, "test images")
        metrics, details = linear_probe(tf_, tl, xf, xl, len(names), val_fraction=val_fraction,
                                        seed=seed, progress=progress)
        return {**metrics, "normalized": True}, details  # encode_images L2-normalises

    steps = []
    if wise_ft_zero_shot is not None:
        from keras_clip.wise_ft import wise_ft

        sweep, fine_tuned = [], None
        for alpha in _tqdm(alphas, desc="WiSE-FT alphas", disable=not progress):
            metrics, details = run(wise_ft(wise_ft_zero_shot, model, alpha))
            sweep.append({"alpha": alpha, "metrics": metrics})
            steps.append((int(round(100 * alpha)), metrics))
            if alpha == 1.0:
                fine_tuned = metrics, details
        results["wise_ft"] = {"zero_shot": zero_shot_name, "fine_tuned": model_name,
                              "sweep": sweep}
        metrics, details = fine_tuned if fine_tuned is not None else run(model)
        if stem:
            figures["wise_ft"] = plot_wise_ft_sweep(alphas, [s["metrics"] for s in sweep],
                                                    stem + ".wise_ft.png")
    else:
        metrics, details = run(model)
        steps.append((0, metrics))
    results["metrics"] = metrics
    if task == "zeroshot_retrieval":
        results["num_examples"] = details["num_pairs"]
        results["match_identical_captions"] = bool(match_identical_captions)
    else:
        from keras_clip.metrics import confusion_matrix, per_class_table

        results["num_examples"] = int(len(details["labels"]))
        if task == "linear_probe":
            results["c_sweep"] = details["c_sweep"]
        table = per_class_table(details["labels"], details["predictions"], names)
        results["per_class"] = table
        if progress:
            _print_table(table)
        if stem:
            matrix = confusion_matrix(details["labels"], details["predictions"], len(names))
            figures["confusion_matrix"] = plot_confusion_matrix(
                matrix, names, stem + ".confusion.png",
                title=f"{task} on {results['dataset']} ({model_name})")
            files["per_class"] = _write_text(stem + ".per_class.csv", _csv_table(table))
    return _finish(results, counter, figures, files, out, logdir, steps, progress)


def _finish(results, counter, figures, files, out, logdir, steps, progress):
    results["skipped"] = counter.result()
    if results["skipped"]["bad_image"] and progress:
        print(f"skipped {results['skipped']['bad_image']} unreadable image(s)")
    results["files"] = {k: os.path.basename(v) for k, v in {**figures, **files}.items()}
    results = _json_safe(results)
    if out is not None:
        _write_text(out, json.dumps(results, indent=2) + "\n")
    if logdir:
        _tensorboard(logdir, results, figures, steps)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_clip.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a CLIP .keras file or checkpoint file/folder "
                   "(the fine-tuned model of a WiSE-FT sweep)")
    p.add_argument("--data", required=True,
                   help="shapes[:<split>] (train, val, heldout …; default val), an ImageFolder "
                        "directory, or shards (.tfrecord, .tar, .tsv tab-separated / .csv "
                        "comma-separated, with filepath and title columns)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--out", required=True, help="results .json (figures are written beside it)")
    p.add_argument("--train-data", default=None, help="linear probe: the training data")
    p.add_argument("--classnames", default=None, help="ImageFolder: file with one class name "
                   "per line, in sorted folder order (default: folder names)")
    p.add_argument("--templates", default=None, help="file with one prompt template ('{}' for "
                   "the class) per line (default: OpenAI's 80; shapes: 'a small {}', 'a large {}')")
    p.add_argument("--ensemble", default=None, choices=ENSEMBLES,
                   help="prompt ensemble: mean (OpenAI; ImageFolder default) or max (per-template "
                        "prototypes; shapes default)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--num-examples", type=positive_int, default=1000,
                   help="shapes examples (classification: single-object images); with shards "
                        "the most pairs to read (--all-pairs: every one)")
    p.add_argument("--all-pairs", action="store_true",
                   help="retrieval / similarity on shards: read every pair")
    p.add_argument("--train-examples", type=positive_int, default=5000,
                   help="linear probe on shapes: training examples")
    p.add_argument("--split", default="val", help="fills {split} in shard paths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="linear probe: share of the training data that picks C")
    p.add_argument("--no-match-identical-captions", action="store_true",
                   help="retrieval: only a caption's own image counts as a match")
    p.add_argument("--count", type=positive_int, default=8,
                   help="similarity: number of images and captions")
    p.add_argument("--wise-ft-zero-shot", default=None,
                   help="zero-shot model A: evaluate WiSE-FT(A, --model, alpha) for each --alphas")
    p.add_argument("--alphas", type=float, nargs="+", default=None,
                   help="WiSE-FT alphas in [0, 1] (default 0 0.25 0.5 0.75 1)")
    p.add_argument("--logdir", default=None, help="also write the results to TensorBoard")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or table")
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    if not args.out.endswith(".json"):
        p.error(f"--out must end in .json, got {args.out!r}")
    if not 0.0 < args.val_fraction < 1.0:
        p.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.alphas is not None and not args.wise_ft_zero_shot:
        p.error("--alphas needs --wise-ft-zero-shot (the zero-shot model to interpolate with)")
    if args.alphas is not None and any(not 0.0 <= a <= 1.0 for a in args.alphas):
        p.error(f"--alphas must be in [0, 1], got {args.alphas}")
    num_examples = args.num_examples
    if args.all_pairs:
        if args.data == "shapes" or args.data.startswith("shapes:"):
            p.error("--all-pairs is for shards; the shapes data is drawn: use --num-examples")
        num_examples = None
    import keras_clip  # noqa: F401  (registers CLIP for loading)

    try:
        results = evaluate(
            args.model, args.data, args.task, args.out, train_data=args.train_data,
            classnames=args.classnames, templates=args.templates, ensemble=args.ensemble,
            batch_size=args.batch_size, num_examples=num_examples,
            train_examples=args.train_examples, split=args.split, seed=args.seed,
            val_fraction=args.val_fraction,
            match_identical_captions=not args.no_match_identical_captions,
            similarity_count=args.count, wise_ft_zero_shot=args.wise_ft_zero_shot,
            alphas=args.alphas or (0.0, 0.25, 0.5, 0.75, 1.0), logdir=args.logdir, progress=not args.no_progress)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")  # one line naming the file / the problem
    shown = {k: v for k, v in results["metrics"].items()}
    print(json.dumps({"dataset": results["dataset"], "task": results["task"],
                      "metrics": shown, "skipped": results["skipped"]}, indent=1))
    if results.get("wise_ft"):
        for s in results["wise_ft"]["sweep"]:
            print(f"alpha={s['alpha']:g}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in s["metrics"].items() if isinstance(v, float)))
    print(f"wrote {args.out}" + "".join(f", {f}" for f in results["files"].values()))
    return results


if __name__ == "__main__":
    main()
