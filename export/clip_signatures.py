"""The CLIP SavedModel's signatures on raw inputs (``CLIPServingModule``: encode_text,
encode_image, zero_shot) and the input checks they share with the search and DALL·E exports.
``export.saved_model`` writes them out; see its docstring for the signatures' contract."""

import numpy as np
import tensorflow as tf

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
