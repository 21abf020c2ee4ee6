"""DALL·E → SavedModel for TF Serving: prompts in, reranked PNGs and CLIP scores out.

Signature ``serving_default`` = ``generate``: ``prompts`` tf.string [B], ``num_samples`` int32
scalar, ``keep`` int32 scalar, ``seed`` int32 scalar → ``images`` tf.string [B, keep] (PNG bytes,
best first) and ``scores`` float32 [B, keep] (CLIP score 100·cos of each image with its prompt;
NaN when exported without a CLIP). Everything is in the graph: the CLIP BPE tokenizer, the cached
sampling loop of `keras_dalle.sampling` (as a plain `tf.while_loop`: no XLA ops, which stock
`tensorflow_model_server` lacks), the dVAE decoder, CLIP reranking and PNG encoding. The scalar
inputs mean TF Serving's request batching does not apply to this model (each request is already
a batch of prompts × samples).

Example:
    >>> export_dalle(dalle, vae, "models/dalle", clip=clip)
    'models/dalle/1'
    $ python -m export.dalle_saved_model runs/demo/dalle.keras --vae runs/demo/dvae.keras \\
        --clip runs/demo/clip.keras --base-path models/dalle
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag
from export.dvae_saved_model import images_to_png
from export.clip_signatures import check_batch, checked
from export.saved_model import next_version, run_export_cli, write_version_atomic


def _tracked(model):
    # Keras 3 variables are saved through the tf.Variables they wrap.
    return [v.value if hasattr(v, "value") else v for v in model.variables]


class DALLEServingModule(tf.Module):
    """The exported object: ``generate(prompts, num_samples, keep, seed)``.

    Example:
        >>> out = DALLEServingModule(dalle, vae, clip).generate(
        ...     tf.constant(["a red circle"]), tf.constant(4), tf.constant(2), tf.constant(0))
        >>> out["images"].shape, out["scores"].shape      # ([1, 2], [1, 2])
    """

    def __init__(self, dalle, vae, clip=None, temperature=1.0, top_k=None, top_p=None):
        super().__init__(name="dalle_serving")
        from keras_clip.text.tokenizer import CLIPTokenizer
        from keras_dalle.sampling.sampler import get_sampler

        if vae.token_grid_size != dalle.grid_height or dalle.grid_height != dalle.grid_width:
            raise ValueError(f"the dVAE's {vae.token_grid_size}x{vae.token_grid_size} token grid "
                             f"does not match the DALLE's {dalle.grid_height}x{dalle.grid_width}")
        if vae.vocab_size != dalle.image_vocab_size:
            raise ValueError(f"the dVAE's codebook ({vae.vocab_size}) differs from the DALLE's "
                             f"image vocabulary ({dalle.image_vocab_size})")
        self.dalle, self.vae, self.clip = dalle, vae, clip
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.sampler = get_sampler(dalle)
        self.tokenizer = CLIPTokenizer(context_length=dalle.text_len, truncate=True)
        self.model_variables = _tracked(dalle) + _tracked(vae)
        if clip is not None:
            self.clip_tokenizer = CLIPTokenizer(context_length=clip.context_length, truncate=True)
            self.model_variables += _tracked(clip)
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            tf.TensorSpec([], tf.int32, name="num_samples"),
            tf.TensorSpec([], tf.int32, name="keep"),
            tf.TensorSpec([], tf.int32, name="seed")])  # no jit_compile: stock server

    def _clip_scores(self, images, prompts, num_samples):
        """100·cos of each image [B·S, H, W, 3] in [0, 1] with its prompt → [B, S]."""
        from keras_dalle.sampling.rerank import clip_image_embeddings, clip_text_embeddings

        img = clip_image_embeddings(self.clip, images)
        txt = clip_text_embeddings(self.clip, self.clip_tokenizer(prompts))
        txt = tf.repeat(txt, num_samples, axis=0)
        return tf.reshape(100.0 * tf.reduce_sum(img * txt, axis=-1), [-1, num_samples])

    def _generate(self, prompts, num_samples, keep, seed):
        prompts = check_batch(prompts, "prompts")
        num_samples = checked(num_samples, tf.debugging.assert_positive(
            num_samples, message="num_samples must be >= 1"))
        keep = checked(keep, tf.debugging.assert_positive(keep, message="keep must be >= 1"),
                        tf.debugging.assert_less_equal(
                            keep, num_samples, message="keep must be <= num_samples"))
        m = self.dalle
        text = tf.repeat(tf.cast(self.tokenizer(prompts), tf.int32), num_samples, axis=0)
        prefix = tf.zeros([tf.shape(text)[0], 0], tf.int32)
        tokens = self.sampler.run_cached(text, prefix, seed, self.temperature, self.top_k,
                                         self.top_p)  # [B·S, N]
        images = tf.cast(self.vae.decode(tf.reshape(tokens, [-1, m.grid_height, m.grid_width])),
                         tf.float32)  # [B·S, H, W, 3]
        batch = tf.shape(prompts)[0]
        if self.clip is not None:
            scores = self._clip_scores(images, prompts, num_samples)  # [B, S]
            best = tf.math.top_k(scores, k=keep)
            order, kept_scores = best.indices, best.values
        else:
            order = tf.tile(tf.range(keep)[None], [batch, 1])
            kept_scores = tf.fill([batch, keep], tf.constant(np.nan, tf.float32))
        shape = tf.shape(images)
        images = tf.reshape(images, tf.concat([[batch, num_samples], shape[1:]], axis=0))
        kept = tf.gather(images, order, batch_dims=1)  # [B, keep, H, W, 3]
        png = images_to_png(tf.reshape(kept, tf.concat([[-1], shape[1:]], axis=0)))
        return {"images": tf.reshape(png, [batch, keep]), "scores": kept_scores}


def export_dalle(dalle, vae, base_path, clip=None, version=None, overwrite=False):
    """Export ``dalle`` with its ``vae`` (and ``clip`` for reranking) to ``base_path/<version>``."""
    from export.serving_config import predict_request, write_warmup_requests

    base_path = os.fspath(base_path)
    version = next_version(base_path, version, overwrite)
    module = DALLEServingModule(dalle, vae, clip)
    fn = module.generate.get_concrete_function()
    name = os.path.basename(os.path.normpath(base_path))

    def write(tmp):
        tf.saved_model.save(module, tmp, signatures={"serving_default": fn, "generate": fn})
        write_warmup_requests(tmp, [predict_request(name, "generate", {
            "prompts": np.array([b"a red circle"], dtype=object),
            "num_samples": np.array(1, np.int32), "keep": np.array(1, np.int32),
            "seed": np.array(0, np.int32)})])

    return write_version_atomic(base_path, version, write, overwrite=overwrite)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.dalle_saved_model",
                                     description="Export a DALL·E (+ dVAE, CLIP) for TF Serving.")
    parser.add_argument("model", help="DALLE .keras file")
    parser.add_argument("--vae", required=True, help="its DiscreteVAE .keras file")
    parser.add_argument("--clip", default=None, help="a CLIP .keras file to rerank with")
    parser.add_argument("--base-path", required=True)
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)

    def export(version):
        from keras_clip import CLIP
        from keras_clip.saving import load_model
        from keras_dalle import DALLE, DiscreteVAE
        clip = load_model(args.clip, CLIP) if args.clip else None
        return export_dalle(load_model(args.model, DALLE), load_model(args.vae, DiscreteVAE),
                            args.base_path, clip, version, args.overwrite)

    return run_export_cli(args.model, args.base_path, args.version, args.overwrite, export)


if __name__ == "__main__":
    sys.exit(main())
