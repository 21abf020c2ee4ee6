"""Zero-shot classification with CLIP: prompt-ensembled text classifiers (OpenAI's recipe).

Example:
    >>> classifier = zero_shot_classifier(model, IMAGENET_CLASSNAMES)   # (embed_dim, 1000)
    >>> probs = predict_zero_shot(model, preprocess_images(photos), classifier)   # (B, 1000)
    >>> IMAGENET_CLASSNAMES[probs[0].argmax()]
    'tabby cat'
"""

import os

import numpy as np

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zero_shot_assets")


def _read_lines(name):
    # A path next to the module works for source trees, editable and wheel installs
    # (setup.py ships zero_shot_assets/* as package data).
    with open(os.path.join(_ASSETS, name), encoding="utf-8") as f:
        return tuple(line.rstrip("\r\n") for line in f if line.strip())


# Generated from open_clip's zero_shot_metadata.py by tests/fixtures/make_zero_shot_assets.py.
IMAGENET_CLASSNAMES = _read_lines("imagenet_classnames.txt")  # 1000 names, ImageNet order
OPENAI_IMAGENET_TEMPLATES = _read_lines("openai_imagenet_templates.txt")  # 80 format strings

# OpenAI's 7-template subset (chosen on ImageNet "train" by OpenAI; same as open_clip's).
SIMPLE_IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def _to_numpy(x):
    if hasattr(x, "numpy"):
        return x.numpy()
    return np.asarray(x)


def _l2_normalize(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _fill(template, classname):
    return template(classname) if callable(template) else template.format(classname)


def _check_template(template):
    """ValueError unless ``template`` is a callable or a format string that puts the class name
    in the prompt (``{}``): without it every class would get the same prompt (TypeError for
    anything else)."""
    if callable(template):
        return
    if not isinstance(template, str):
        raise TypeError(f"templates must be format strings with '{{}}' or callables, got "
                         f"{type(template).__name__}: {template!r}")
    try:
        filled = {template.format(name) for name in ("\0a", "\0b")}
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"template {template!r} is not a format string with one '{{}}' for the "
                         f"class name: {type(e).__name__}: {e}") from None
    if len(filled) == 1:
        raise ValueError(f"template {template!r} has no '{{}}' for the class name: every class "
                         f"would get the same prompt")


def zero_shot_classifier(model, classnames, templates=None, batch_size=256, *, tokenizer=None):
    """Text classifier weights: per class, the renormalised mean of L2-normalised prompt embeddings.

    Args:
        model: has ``encode_text(int32 (B, 77)) -> (B, D)``; a keras_clip CLIP with a
            transformer text tower gets each chunk cut after its longest prompt
            (`CLIP.cut_token_ids`: the same embeddings).
        classnames: list of class names.
        templates: format strings with ``{}`` or callables ``name -> prompt``; defaults to the
            80 OPENAI_IMAGENET_TEMPLATES.
        batch_size: prompts per ``encode_text`` call (prompts of different classes share
            batches).
        tokenizer: ``texts -> int32 (B, L)``; defaults to ``keras_clip.tokenize`` with the
            model's ``context_length``.

    Returns:
        float32 numpy (D, num_classes) with unit-norm columns.

    Example:
        >>> w = zero_shot_classifier(model, ["cat", "dog"], ["a photo of a {}."])   # (512, 2)
    """
    if tokenizer is None:
        from keras_clip.text.tokenizer import tokenize

        context_length = getattr(model, "context_length", 77)

        def tokenizer(texts):
            return tokenize(texts, context_length=context_length)
    templates = OPENAI_IMAGENET_TEMPLATES if templates is None else templates
    if isinstance(templates, str) or callable(templates):
        templates = [templates]
    templates = list(templates)
    classnames = list(classnames)
    if not classnames or not templates:
        raise ValueError(f"need at least one class and one template, got {len(classnames)} "
                         f"classes and {len(templates)} templates")
    for template in templates:
        _check_template(template)
    prompts = [(c, _fill(t, name)) for c, name in enumerate(classnames) for t in templates]

    # A keras_clip CLIP cuts each chunk after its longest prompt (CLIP.cut_token_ids: columns
    # after every prompt's EOT change nothing in its causal text tower).
    cut = getattr(model, "cut_token_ids", None)
    sums = None  # (C, D) running sums of normalised prompt embeddings
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        tokens = np.asarray(tokenizer([p for _, p in chunk]), np.int32)  # (b, 77)
        if cut is not None:
            tokens = np.asarray(cut(tokens))  # (b, L ≤ 77)
        emb = _l2_normalize(_to_numpy(model.encode_text(tokens)).astype(np.float64))  # (b, D)
        if sums is None:
            sums = np.zeros((len(classnames), emb.shape[-1]), np.float64)
        np.add.at(sums, np.array([c for c, _ in chunk]), emb)
    # The mean's 1/T factor cancels in the renormalisation.
    return _l2_normalize(sums).T.astype(np.float32)  # (D, C)


def predict_zero_shot(model, images, classifier, logit_scale=None, batch_size=None):
    """Class probabilities ``softmax(scale · normalise(encode_image(images)) @ classifier)``.

    Args:
        model: has ``encode_image(float32 NHWC, CLIP-normalised) -> (B, D)`` and, for
            ``logit_scale="model"``, a ``logit_scale`` variable holding ln(scale).
        images: float32 (B, H, W, 3) from ``CLIPImagePreprocessor`` / ``preprocess_images``.
        classifier: (D, C) from ``zero_shot_classifier``.
        logit_scale: None → 100 (OpenAI's evaluation); "model" → exp(model.logit_scale);
            a number → used as the multiplier itself.
        batch_size: images per ``encode_image`` call; None = all at once.

    Returns:
        float32 numpy (B, C); rows sum to 1.

    Example:
        >>> probs = predict_zero_shot(model, images, classifier)   # (B, C)
    """
    if logit_scale is None:
        scale = 100.0
    elif isinstance(logit_scale, str):
        if logit_scale != "model":
            raise ValueError(f'logit_scale must be None, "model" or a number, got {logit_scale!r}')
        scale = float(np.exp(_to_numpy(model.logit_scale)))
    else:
        scale = float(logit_scale)
    classifier = np.asarray(classifier, np.float64)  # (D, C)
    n = len(images)
    step = n if not batch_size else batch_size
    probs = []
    for start in range(0, n, max(step, 1)):
        feats = _to_numpy(model.encode_image(images[start:start + step])).astype(np.float64)
        if feats.shape[-1] != classifier.shape[0]:
            raise ValueError(f"image embeddings have dim {feats.shape[-1]} but the classifier "
                             f"expects {classifier.shape[0]} (shape (D, C) = {classifier.shape})")
        logits = scale * _l2_normalize(feats) @ classifier  # (b, C)
        logits -= logits.max(axis=-1, keepdims=True)  # stable softmax
        p = np.exp(logits)
        probs.append(p / p.sum(axis=-1, keepdims=True))
    return np.concatenate(probs).astype(np.float32)
