"""dVAE decoder → SavedModel for TF Serving: token grids in, PNG bytes out.

Signature ``serving_default`` = ``decode``: ``tokens`` int32 [B, h, w] (codebook ids in
[0, vocab_size)) → ``images`` tf.string [B] (PNG bytes of the decoded h·f × w·f images).
Out-of-range ids fail with an InvalidArgumentError naming the range. Written in the same atomic
TF Serving layout as the CLIP export (``export.saved_model.write_version_atomic``).

The DALL·E ``generate`` export (``export.dalle_saved_model``) encodes its PNGs with the same
``images_to_png``.

Example:
    >>> export_dvae(dvae_from_preset("dvae-tiny"), "models/dvae")
    'models/dvae/1'
    $ python -m export.dvae_saved_model runs/demo/dvae.keras --base-path models/dvae
"""

import argparse
import os
import sys

import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag
from export.saved_model import next_version, run_export_cli, write_version_atomic


def images_to_png(images):
    """float [B, H, W, C] in [0, 1] → PNG bytes [B] (in-graph; used by the DALL·E export too)."""
    pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
    return tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.TensorSpec([], tf.string))


class DVAEServingModule(tf.Module):
    """The exported object: ``decode(tokens) → PNG bytes``.

    Example:
        >>> DVAEServingModule(vae).decode(tf.zeros([1, 8, 8], tf.int32))["images"].shape
        TensorShape([1])
    """

    def __init__(self, vae):
        super().__init__(name="dvae_serving")
        self.vae = vae
        self.model_variables = [v.value if hasattr(v, "value") else v for v in vae.variables]
        spec = tf.TensorSpec([None, None, None], tf.int32, name="tokens")
        self.decode = tf.function(self._decode, input_signature=[spec])  # no XLA: stock server

    def _decode(self, tokens):
        vocab = self.vae.vocab_size
        checks = [
            tf.debugging.assert_positive(tf.size(tokens), message="tokens: empty batch or grid"),
            tf.debugging.assert_non_negative(tokens, message="tokens: ids must be >= 0"),
            tf.debugging.assert_less(tokens, vocab,
                                     message=f"tokens: ids must be < vocab_size ({vocab})"),
        ]
        with tf.control_dependencies(checks):
            tokens = tf.identity(tokens)
        return {"images": images_to_png(tf.cast(self.vae.decode(tokens), tf.float32))}


def export_dvae(vae, base_path, version=None, overwrite=False):
    """Export ``vae`` (a ``keras_dalle.vae.DiscreteVAE``) to ``base_path/<version>``."""
    from export.serving_config import predict_request, write_warmup_requests

    base_path = os.fspath(base_path)
    version = next_version(base_path, version, overwrite)
    module = DVAEServingModule(vae)
    fn = module.decode.get_concrete_function()
    grid = vae.token_grid_size
    name = os.path.basename(os.path.normpath(base_path))

    def write(tmp):
        tf.saved_model.save(module, tmp, signatures={"serving_default": fn, "decode": fn})
        write_warmup_requests(tmp, [predict_request(name, "decode", {
            "tokens": tf.zeros([1, grid, grid], tf.int32).numpy()})])

    return write_version_atomic(base_path, version, write, overwrite=overwrite)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.dvae_saved_model",
                                     description="Export a dVAE .keras decoder for TF Serving.")
    parser.add_argument("model", help="DiscreteVAE .keras file")
    parser.add_argument("--base-path", required=True)
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)

    def export(version):
        from keras_clip.saving import load_model
        from keras_dalle import DiscreteVAE
        vae = load_model(args.model, DiscreteVAE)
        return export_dvae(vae, args.base_path, version, args.overwrite)

    return run_export_cli(args.model, args.base_path, args.version, args.overwrite, export)


if __name__ == "__main__":
    sys.exit(main())
