"""Evaluation metrics on numpy arrays: top-k accuracy, mean per-class recall, the confusion
matrix, a per-class table and image↔text retrieval recall@k.

The definitions follow LAION's CLIP_benchmark (``clip_benchmark/metrics/
zeroshot_classification.py`` and ``zeroshot_retrieval.py``), whose result JSON
``keras_clip.evaluate`` writes:

* ``acc1`` / ``acc5``: share of examples whose label is among the k highest scores; ``acc5`` is
  undefined (None here, NaN in CLIP_benchmark) with fewer than 5 classes.
* ``mean_per_class_recall``: the mean over the classes that occur in the labels of
  (correct predictions of that class / examples of that class) — scikit-learn's
  ``balanced_accuracy_score``.
* ``image_retrieval_recall@k``: per caption, 1 if a matching image is among the k images most
  similar to it, averaged over captions (text → image). ``text_retrieval_recall@k``: per image,
  1 if a matching caption is among its k most similar captions, averaged over images (image →
  text). This is the "at least one hit in the top k" recall of CLIP-like papers, not
  true-positives / positives.

Ties in scores are broken by index (a stable sort of the negated scores), so results do not
depend on the sort algorithm.

Example:
    >>> topk_accuracy(logits, labels)                       # {1: 0.9, 5: 1.0}
    >>> retrieval_recall(image_emb, text_emb, text_image_index)
    {'image_retrieval_recall@1': 0.5, 'text_retrieval_recall@1': 0.75, ...}
"""

import numpy as np

__all__ = ["classification_metrics", "confusion_matrix", "mean_per_class_recall",
           "per_class_table", "retrieval_recall", "topk_accuracy"]


def _labels(labels, num_classes=None):
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype "
                         f"{labels.dtype}")
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values from {labels.min()} to "
                         f"{labels.max()}")
    return labels.astype(np.int64)


def _ranking(scores):
    """Column indices of each row of ``scores`` (N, M), best first; ties by index."""
    return np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")


def topk_accuracy(scores, labels, ks=(1, 5)):
    """Share of rows of ``scores`` (N, C) whose label is among their k highest scores.

    Returns ``{k: float in [0, 1] or None}``; None when k exceeds the number of classes (as
    CLIP_benchmark reports NaN for acc5 with fewer than 5 classes). Raises ValueError for
    mismatched shapes, an empty set or labels outside ``[0, C)``.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, num_classes), got shape {scores.shape}")
    labels = _labels(labels, scores.shape[1])
    if len(labels) != len(scores):
        raise ValueError(f"{len(scores)} score rows but {len(labels)} labels")
    if not len(labels):
        raise ValueError("no examples to score")
    rank = _ranking(scores)
    # Position of the true label in each ranking.
    position = np.argmax(rank == labels[:, None], axis=1)
    return {k: (float(np.mean(position < k)) if k <= scores.shape[1] else None) for k in ks}


def confusion_matrix(labels, predictions, num_classes):
    """int64 (num_classes, num_classes): entry [i, j] counts examples of class i predicted j."""
    labels = _labels(labels, num_classes)
    predictions = _labels(predictions, num_classes)
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def mean_per_class_recall(labels, predictions, num_classes=None):
    """Mean over the classes present in ``labels`` of the share of their examples predicted
    right (scikit-learn's ``balanced_accuracy_score``; CLIP_benchmark's
    ``mean_per_class_recall``)."""
    labels = _labels(labels)
    predictions = _labels(predictions)
    n = int(max(labels.max(initial=-1), predictions.max(initial=-1)) + 1) if num_classes is None \
        else num_classes
    matrix = confusion_matrix(labels, predictions, n)
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        raise ValueError("no examples to score")
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def classification_metrics(scores, labels):
    """CLIP_benchmark's classification metrics of scores (N, C) and int labels (N,):
    ``{"acc1", "acc5", "mean_per_class_recall"}`` (``acc5`` None below 5 classes)."""
    scores = np.asarray(scores)
    accuracy = topk_accuracy(scores, labels, (1, 5))
    predictions = _ranking(scores)[:, 0]
    return {"acc1": accuracy[1], "acc5": accuracy[5],
            "mean_per_class_recall": mean_per_class_recall(labels, predictions, scores.shape[1])}


def per_class_table(labels, predictions, classnames):
    """One row per class: ``{"class", "support", "correct", "recall", "precision",
    "most_confused_with"}``; recall / precision are None when undefined (no examples / no
    predictions of the class), ``most_confused_with`` is the class most often predicted for
    it other than itself (None when it never is)."""
    classnames = list(classnames)
    matrix = confusion_matrix(labels, predictions, len(classnames))
    rows = []
    for i, name in enumerate(classnames):
        support, predicted, correct = int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i])
        off = matrix[i].copy()
        off[i] = 0
        rows.append({"class": name, "support": support, "correct": correct,
                     "recall": correct / support if support else None,
                     "precision": correct / predicted if predicted else None,
                     "most_confused_with": classnames[int(off.argmax())] if off.any() else None})
    return rows


def retrieval_recall(image_features, text_features, text_image_index, ks=(1, 5, 10),
                     positives=None):
    """Image↔text retrieval recall@k with CLIP_benchmark's keys.

    Args:
        image_features: (N_images, D), L2-normalised (scores are dot products = cosines).
        text_features: (N_texts, D), L2-normalised.
        text_image_index: int (N_texts,): the image each caption belongs to (several captions
            may share an image).
        ks: the k of recall@k.
        positives: optional bool (N_texts, N_images) of every matching (caption, image) pair;
            defaults to caption t matching only image ``text_image_index[t]``. (E.g. identical
            captions of different images can be counted as matches.)

    Returns:
        ``{"image_retrieval_recall@k": ..., "text_retrieval_recall@k": ...}`` floats in [0, 1]
        (image retrieval: text → image, averaged over captions; text retrieval: image → text,
        averaged over images).
    """
    image_features = np.asarray(image_features, np.float64)
    text_features = np.asarray(text_features, np.float64)
    index = _labels(text_image_index, len(image_features))
    if len(index) != len(text_features):
        raise ValueError(f"{len(text_features)} captions but {len(index)} text_image_index entries")
    if positives is None:
        positives = np.zeros((len(text_features), len(image_features)), bool)
        positives[np.arange(len(index)), index] = True
    positives = np.asarray(positives, bool)
    if positives.shape != (len(text_features), len(image_features)):
        raise ValueError(f"positives must be (N_texts, N_images) = "
                         f"{(len(text_features), len(image_features))}, got {positives.shape}")
    scores = text_features @ image_features.T  # (T, I)
    metrics = {}
    hits_t2i = np.take_along_axis(positives, _ranking(scores), axis=1)  # (T, I) best first
    hits_i2t = np.take_along_axis(positives.T, _ranking(scores.T), axis=1)  # (I, T)
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(hits_t2i[:, :k].any(axis=1).mean())
        metrics[f"text_retrieval_recall@{k}"] = float(hits_i2t[:, :k].any(axis=1).mean())
    return metrics
