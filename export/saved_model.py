"""CLIP → SavedModel for TF Serving, on raw inputs (strings and encoded image bytes).

Signatures (every input and output has a leading batch dimension, so TF Serving's batching can
merge requests):

* ``serving_default`` = ``encode_text``: ``texts`` tf.string [B] → ``embeddings`` float32 [B, D]
* ``encode_image``: ``images`` tf.string [B] (encoded JPEG/PNG/GIF/BMP/WebP) → ``embeddings``
* ``zero_shot``: ``images`` tf.string [B] + ``labels`` tf.string [B, C] (the candidate labels of
  each image; "" marks padding and gets probability 0) → ``probabilities`` float32 [B, C]
  (softmax over ``exp(logit_scale) · cosine``, the model's learned scale), ``label_index``
  int64 [B] and ``label`` tf.string [B]. Each label is put into the export's prompt template
  (default ``"a photo of a {}."``; ``--template "{}"`` uses the labels verbatim).
* with ``--index DIR``: ``search`` (``texts`` + ``k``) and ``search_image`` (``images`` + ``k``)
  → ``ids`` tf.string [B, k] and ``scores`` float32 [B, k], exact top-k over the collection's
  embeddings stored in the SavedModel (see ``export.search_signature``).

Embeddings are L2-normalised. Texts are tokenised in the graph by ``CLIPTokenizer`` (TF core +
TF Text ops; longer texts are truncated), images are decoded and preprocessed in the graph by
``CLIPImagePreprocessor`` (OpenAI's preprocessing). Loading the SavedModel in Python needs
``import tensorflow_text`` first (it registers the TF Text ops); stock tensorflow_model_server
links TF Text's ops.

The TF Serving layout ``BASE/<version>/{saved_model.pb, variables/, assets/, assets.extra/}`` is
written atomically: everything goes into ``BASE/.tmp-<version>-<random>`` (a non-numeric name,
which TF Serving ignores) and is renamed into place when complete.

Example:
    >>> path = export_clip(CLIP.from_preset("ViT-Tiny"), "models/clip")   # models/clip/1
    $ python -m export.saved_model runs/demo/clip.keras --base-path models/clip
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag

SIGNATURES = ("serving_default", "encode_text", "encode_image", "zero_shot")
DEFAULT_TEMPLATE = "a photo of a {}."
# Magic numbers of the formats tf.io.decode_image reads: checked up front so bad bytes fail with
# a message naming the inputs instead of a decoder's error from inside a map_fn.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def checked(x, *checks):
    """``x`` behind ``checks`` (assert ops): the checks fail first, with their own message."""
    with tf.control_dependencies(checks):
        return tf.identity(x)


def check_batch(x, name):
    return checked(x, tf.debugging.assert_positive(
        tf.size(x), message=f"{name}: empty batch (need at least one element along dimension 0)"))


def _check_images(images):
    """In-graph: every element must start like a JPEG/PNG/GIF/BMP/WebP file; returns
    ``images`` behind the check (decoding is stateless, so it needs an explicit dependency)."""
    # The first 12 bytes, zero-padded: substr fails for a start position past the end of a
    # shorter (or empty) string, and no signature ends in a zero byte.
    head = tf.strings.substr(tf.strings.join([images, b"\0" * 12]), 0, 12)
    ok = tf.zeros_like(images, tf.bool)
    for magic in _IMAGE_MAGIC:
        ok |= tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
    # WebP: "RIFF" <4 size bytes> "WEBP"
    ok |= tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & \
        tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")
    check = tf.debugging.Assert(tf.reduce_all(ok), [
        "images: not an encoded image (expected JPEG, PNG, GIF, BMP or WebP bytes) at batch "
        "indices", tf.reshape(tf.where(~ok), [-1])], summarize=16)
    return checked(images, check)


class CLIPServingModule(tf.Module):
    """The exported object: a CLIP model plus in-graph tokenizer and image preprocessing.

    Example:
        >>> module = CLIPServingModule(model)
        >>> module.encode_text(tf.constant(["a red circle"]))["embeddings"].shape
        TensorShape([1, 32])
    """

    def __init__(self, model, template=DEFAULT_TEMPLATE):
        super().__init__(name="clip_serving")
        from keras_clip.preprocessing import CLIPImagePreprocessor
        from keras_clip.text.tokenizer import CLIPTokenizer, vocab_path

        if template.count("{}") != 1:
            raise ValueError(f"template must contain exactly one '{{}}' for the label, got "
                             f"{template!r}")
        self.model = model
        self.template = template
        context = model.context_length if model.text_encoder == "transformer" else 77
        self.tokenizer = CLIPTokenizer(context_length=context, truncate=True)
        self.preprocessor = CLIPImagePreprocessor(image_size=model.image_size)
        # The tokenizer bakes its tables into the graph as constants; the BPE merges file is
        # shipped as an asset anyway so the export carries the vocabulary it was built from.
        self.vocab = tf.saved_model.Asset(vocab_path())
        # Explicit tracking: Keras 3 variables are saved through the tf.Variables they wrap.
        self.model_variables = [v.value if hasattr(v, "value") else v for v in model.variables]
        self.template_parts = template.split("{}")

        text_spec = tf.TensorSpec([None], tf.string, name="texts")
        image_spec = tf.TensorSpec([None], tf.string, name="images")
        label_spec = tf.TensorSpec([None, None], tf.string, name="labels")
        # No jit_compile: XLA ops are not in stock tensorflow_model_server.
        self.encode_text = tf.function(self._encode_text, input_signature=[text_spec])
        self.encode_image = tf.function(self._encode_image, input_signature=[image_spec])
        self.zero_shot = tf.function(self._zero_shot, input_signature=[image_spec, label_spec])

    def _text_embeddings(self, texts):
        emb = tf.cast(self.model.encode_text(self.tokenizer(texts)), tf.float32)
        return tf.math.l2_normalize(emb, axis=-1, epsilon=1e-12)

    def _image_embeddings(self, images):
        images = _check_images(images)
        emb = tf.cast(self.model.encode_image(self.preprocessor(images)), tf.float32)
        return tf.math.l2_normalize(emb, axis=-1, epsilon=1e-12)

    def _encode_text(self, texts):
        texts = check_batch(texts, "texts")
        return {"embeddings": self._text_embeddings(texts)}

    def _encode_image(self, images):
        images = check_batch(images, "images")
        return {"embeddings": self._image_embeddings(images)}

    def _zero_shot(self, images, labels):
        images = check_batch(images, "images")
        real = tf.not_equal(labels, "")
        labels = checked(
            labels,
            tf.debugging.assert_equal(
                tf.shape(labels)[0], tf.shape(images)[0],
                message="labels must be [B, C]: one row of candidate labels per image"),
            tf.debugging.assert_positive(tf.shape(labels)[1],
                                         message="labels: no candidate labels (C = 0)"),
            tf.debugging.Assert(tf.reduce_all(tf.reduce_any(real, axis=1)),
                                ["labels: every image needs at least one non-empty label"]))
        image_emb = self._image_embeddings(images)  # [B, D]
        # Encode each distinct label once: rows usually repeat the same candidates.
        unique, where = tf.unique(tf.reshape(labels, [-1]))
        prompts = tf.strings.join([self.template_parts[0], unique, self.template_parts[1]])
        text_emb = self._text_embeddings(prompts)  # [U, D]
        cosine = tf.matmul(image_emb, text_emb, transpose_b=True)  # [B, U]
        # Row b picks the columns of its own labels: [B, C].
        cosine = tf.gather(cosine, tf.reshape(where, tf.shape(labels)), batch_dims=1)
        scale = tf.exp(tf.cast(self.model.logit_scale, tf.float32))
        logits = tf.where(real, scale * cosine, tf.constant(-np.inf, tf.float32))
        probs = tf.nn.softmax(logits, axis=-1)
        index = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "label_index": index,
                "label": tf.gather(labels, index, batch_dims=1)}

    def signatures(self):
        text = self.encode_text.get_concrete_function()
        return {"serving_default": text, "encode_text": text,
                "encode_image": self.encode_image.get_concrete_function(),
                "zero_shot": self.zero_shot.get_concrete_function()}


def existing_versions(base_path):
    """Numeric version directories under ``base_path`` (sorted ints)."""
    if not os.path.isdir(base_path):
        return []
    return sorted(int(d) for d in os.listdir(base_path)
                  if d.isdigit() and os.path.isdir(os.path.join(base_path, d)))


def next_version(base_path, version, overwrite):
    if version is None:
        return (existing_versions(base_path) or [0])[-1] + 1
    if int(version) != version or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    target = os.path.join(base_path, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"version {version} already exists at {target}; pick another "
                              "--version or pass --overwrite")
    return int(version)


def write_version_atomic(base_path, version, write, overwrite=False):
    """Run ``write(tmp_dir)`` then rename ``tmp_dir`` to ``base_path/<version>``.

    The temporary directory is ``base_path/.tmp-<version>-<random>`` (same filesystem, so the
    rename is atomic; not numeric, so TF Serving ignores it). On failure it is removed and no
    version directory appears.
    """
    os.makedirs(base_path, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_path)
    target = os.path.join(base_path, str(version))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; TF Serving may run as another user
        if os.path.exists(target):
            if not overwrite:
                raise FileExistsError(f"version {version} appeared at {target} during the "
                                      "export; not overwriting it")
            # Overwrite: move the old version aside first so the new one lands atomically.
            old = tempfile.mkdtemp(prefix=f".old-{version}-", dir=base_path)
            os.rename(target, os.path.join(old, "v"))
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_clip(model, base_path, version=None, overwrite=False, template=DEFAULT_TEMPLATE,
                warmup=True, model_name="clip", index=None):
    """Export ``model`` (a ``keras_clip.CLIP``) to ``base_path/<version>``; returns that path.

    ``index`` (an index directory, see ``export.search_signature``) adds the ``search`` and
    ``search_image`` signatures with that collection's embeddings stored in the SavedModel.

    ``version`` defaults to the largest existing version + 1 (1 for a new base path). An
    existing version raises FileExistsError unless ``overwrite=True``. ``warmup=True`` writes
    ``assets.extra/tf_serving_warmup_requests`` (one request per signature).

    Example:
        >>> export_clip(CLIP.from_preset("ViT-Tiny"), "models/clip")
        'models/clip/1'
    """
    from export.serving_config import clip_warmup_requests, write_warmup_requests

    base_path = os.fspath(base_path)
    version = next_version(base_path, version, overwrite)
    requests = clip_warmup_requests(model_name, model.image_size)
    if index is None:
        module = CLIPServingModule(model, template=template)
    else:
        from export.search_signature import CLIPSearchModule, search_warmup_requests
        module = CLIPSearchModule.from_index(model, index, template=template)
        requests += search_warmup_requests(model_name, model.image_size)
    signatures = module.signatures()

    def write(tmp):
        tf.saved_model.save(module, tmp, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        if warmup:
            write_warmup_requests(tmp, requests)

    return write_version_atomic(base_path, version, write, overwrite=overwrite)


def load_clip_model(path):
    """Load a ``.keras`` CLIP (keras_clip classes registered)."""
    from keras_clip import CLIP
    from keras_clip.saving import load_model
    return load_model(path, CLIP)


def run_export_cli(model_path, base_path, version, overwrite, export):
    """The export CLIs' common tail: ``export(version)`` → path, printed; errors → exit code 2.

    The version is resolved (and an existing one refused) before ``export`` loads anything.
    """
    try:
        path = export(next_version(base_path, version, overwrite))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {model_path} → {path}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m export.saved_model",
        description="Export a CLIP .keras model as a TF Serving SavedModel version.")
    parser.add_argument("model", help="CLIP .keras file")
    parser.add_argument("--base-path", required=True, help="model base path, e.g. models/clip")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: the largest existing + 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help="zero-shot prompt template with one {} (default %(default)r)")
    parser.add_argument("--no-warmup", action="store_true", help="skip assets.extra warmup file")
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="an image index directory (keras_clip.index layout): adds the "
                             "'search' and 'search_image' signatures with its embeddings inside")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    return run_export_cli(args.model, args.base_path, args.version, args.overwrite, lambda version:
                          export_clip(load_clip_model(args.model), args.base_path, version,
                                      args.overwrite, args.template, warmup=not args.no_warmup,
                                      model_name=os.path.basename(
                                          os.path.normpath(args.base_path)),
                                      index=args.index))


if __name__ == "__main__":
    sys.exit(main())
