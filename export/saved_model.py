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

import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag
from keras_clip.saving import ModelClassError
from export.clip_signatures import DEFAULT_TEMPLATE, SIGNATURES, CLIPServingModule  # noqa: F401
from export.search_signature import CLIPSearchModule, search_warmup_requests

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
    except (FileExistsError, FileNotFoundError, ValueError, ModelClassError) as e:
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
