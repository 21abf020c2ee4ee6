"""The CLIP model: an image tower, a text tower, projections and a learnable temperature."""

import math
import types

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_clip import locking
from keras_clip.loss import LOSSES, contrastive_loss, sigmoid_loss
from keras_clip.preprocessing import normalize_uint8
from keras_clip.presets import get_preset
from keras_clip.compat import (BuiltInInitModel, build_optimizer_slots, onednn_enabled,
                               weight_decay_excluded)
from keras_clip.strategy import replica_logs
from keras_clip.text.cbow import CBOWTextEncoder
from keras_clip.text.transformer import TextTransformer, pad_to_longest
from keras_clip.vision.resnet import ModifiedResNet
from keras_clip.vision.vit import VisionTransformer


MAX_LOGIT_SCALE = math.log(100.0)


def _relative_path(variable):
    """A variable's path without the model's name (``clip/visual/proj`` → ``visual/proj``)."""
    return variable.path.split("/", 1)[-1]


def _tf_variables(variables):
    """The ``tf.Variable`` behind each Keras variable (what ``tf.GradientTape.watch`` takes)."""
    return [v.value for v in variables]


def _add_gradients(a, b):
    """a + b for gradients that may be None or IndexedSlices (the token embedding's)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                                tf.concat([a.indices, b.indices], 0), a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def _dependency(gradient):
    """A tensor standing for `gradient` in `tf.control_dependencies` (IndexedSlices: values)."""
    return gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient


def l2_normalize(x, axis=-1):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-24))


@keras.saving.register_keras_serializable(package="keras_clip")
class ClipLogitScale(keras.constraints.Constraint):
    """Keeps ``logit_scale`` in [0, ln 100] (open_clip clamps after every step).

    As a variable constraint it is applied by the optimizer right after each update, inside the
    optimizer's cross-replica update, so it is safe under every tf.distribute strategy.
    """

    def __init__(self, max_value=MAX_LOGIT_SCALE):
        self.max_value = max_value

    def __call__(self, w):
        return ops.clip(w, 0.0, self.max_value)

    def get_config(self):
        return {"max_value": self.max_value}


def xla_pays(model, training):
    """Whether XLA-compiling ``model``'s tower calls is the faster choice on this machine — the
    rule behind ``CLIP.compile(xla_towers="auto")`` (``training=True``) and
    `keras_clip.embed`'s ``jit_compile="auto"`` (``training=False``). Returns a bool.

    - Under a multi-replica tf.distribute strategy, training: yes (1.98× the graph under
      MirroredStrategy over 2 CPUs, ViT-S-Demo).
    - bfloat16 compute (``mixed_bfloat16``): no — XLA's CPU dots run at about half the speed
      of TensorFlow's oneDNN bf16 matmuls (ViT-B/32: training at batch 16 6.2 vs 3.5
      samples/s in the graph's favour; inference at batch 32 33.0 vs 21.8 images/s).
    - float32 inference: yes.
    - float32 training on one device: yes only where TensorFlow's CPU kernels are not oneDNN's
      (`keras_clip.compat.onednn_enabled`); with oneDNN the graph is as fast (ViT-B/32 b16:
      3.7 vs 3.6 samples/s); without it XLA is 1.38× faster at
      ViT-B/32 and 1.17× at RN50 (AMD EPYC, AVX2 only, batch 16).

    All numbers: BENCHMARKS.md (medians of 5 repetitions)."""
    if training and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return True
    if model.dtype_policy.compute_dtype == "bfloat16":
        return False
    return not training or not onednn_enabled()


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIP(BuiltInInitModel, keras.Model):
    """OpenAI's CLIP as a Keras model.

    ``vision_patch_size=None`` selects the ModifiedResNet image tower (``vision_layers`` is then
    the four stage depths), otherwise a VisionTransformer. ``text_encoder`` is ``"transformer"``
    (OpenAI's causal text tower) or ``"cbow"`` (the bag-of-words baseline of the CLIP paper).
    ``activation`` ("quick_gelu", OpenAI's, or "gelu", open_clip's plain-named models) and
    ``layer_norm_epsilon`` (1e-5, torch's default) apply to both transformer towers.
    ``logit_bias_init`` (None: no bias) adds SigLIP's learnt logit bias (SigLIP: -10, with
    ``logit_scale_init=math.log(10)``), as open_clip's ``init_logit_bias``.
    ``text_final_layer_norm_epsilon`` (None: ``layer_norm_epsilon``) is the text tower's last
    LayerNorm's (keras-hub's CLIP uses 1e-6 there).

    ``call({"images", "token_ids"})`` returns ``logits_per_image`` (B_img, B_txt),
    ``logits_per_text`` (its transpose) and the L2-normalised ``image_embeds``/``text_embeds``;
    ``encode_image``/``encode_text`` return the unnormalised embeddings, like OpenAI's.

    Example:
        >>> model = CLIP.from_preset("ViT-B-32")
        >>> out = model({"images": images, "token_ids": keras_clip.tokenize(["a dog"])})
        >>> out["logits_per_image"].shape
        (B, 1)
    """

    def __init__(self, embed_dim, image_size, vision_layers, vision_width, vision_patch_size=None,
                 vision_heads=None, context_length=77, vocab_size=49408, text_width=512,
                 text_heads=8, text_layers=12, text_encoder="transformer",
                 activation="quick_gelu", mlp_ratio=4.0,
                 logit_scale_init=math.log(1 / 0.07), layer_norm_epsilon=1e-5,
                 logit_bias_init=None, text_final_layer_norm_epsilon=None, **kwargs):
        super().__init__(**kwargs)
        if text_encoder not in ("transformer", "cbow"):
            raise ValueError(f"text_encoder must be 'transformer' or 'cbow', got {text_encoder!r}")
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.vision_layers = list(vision_layers) if isinstance(vision_layers, (list, tuple)) else vision_layers
        self.vision_width = vision_width
        self.vision_patch_size = vision_patch_size
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.text_width = text_width
        self.text_heads = text_heads
        self.text_layers = text_layers
        self.text_encoder = text_encoder
        self.activation = activation
        self.mlp_ratio = mlp_ratio
        self.logit_scale_init = logit_scale_init
        self.layer_norm_epsilon = layer_norm_epsilon
        self.logit_bias_init = logit_bias_init
        self.text_final_layer_norm_epsilon = text_final_layer_norm_epsilon
        self.logit_bias = None
        self.image_tower_locked = self.text_tower_locked = False  # wholly locked (see lock_*)
        self.locks = {}  # the lock_* calls made, kept in the compile config
        policy = self.dtype_policy
        if vision_patch_size is None:
            if not isinstance(self.vision_layers, list) or len(self.vision_layers) != 4:
                raise ValueError("A ResNet image tower (vision_patch_size=None) needs vision_layers "
                                 f"as four stage depths, got {vision_layers!r}")
            self.vision_heads = vision_heads or vision_width * 32 // 64
            self.visual = ModifiedResNet(self.vision_layers, embed_dim, self.vision_heads,
                                         image_size, vision_width, name="visual", dtype=policy)
        else:
            self.vision_heads = vision_heads or vision_width // 64
            self.visual = VisionTransformer(image_size, vision_patch_size, vision_width,
                                            self.vision_layers, self.vision_heads, embed_dim,
                                            mlp_ratio, activation, layer_norm_epsilon,
                                            name="visual", dtype=policy)
        if text_encoder == "transformer":
            self.text = TextTransformer(vocab_size, context_length, text_width, text_layers,
                                        text_heads, embed_dim, mlp_ratio, activation,
                                        layer_norm_epsilon, text_final_layer_norm_epsilon,
                                        name="text", dtype=policy)
        else:
            self.text = CBOWTextEncoder(vocab_size, text_width, embed_dim, name="text", dtype=policy)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.logit_scale = self.add_weight(
            name="logit_scale", shape=(), initializer=keras.initializers.Constant(self.logit_scale_init),
            constraint=ClipLogitScale(), autocast=False)  # float32 logits under mixed precision
        if self.logit_bias_init is not None:
            self.logit_bias = self.add_weight(
                name="logit_bias", shape=(), autocast=False,
                initializer=keras.initializers.Constant(self.logit_bias_init))
        self.visual.build()
        self.text.build()
        self.built = True

    @classmethod
    def from_preset(cls, name, **overrides):
        """Build a randomly initialised model from a preset name (see ``keras_clip.presets``).

        Example:
            >>> CLIP.from_preset("RN50").count_params()
            102007137
        """
        config = get_preset(name)
        config.update(overrides)
        return cls(**config)

    def count_params(self):
        """Number of parameters, counted like torch's ``model.parameters()``.

        BatchNorm moving mean/variance are statistics (torch buffers), not parameters, so they
        are left out; every other weight counts, trainable or frozen.
        """
        stats = {id(v) for layer in self._flatten_layers()
                 if isinstance(layer, keras.layers.BatchNormalization)
                 for v in (layer.moving_mean, layer.moving_variance)}
        return int(sum(np.prod(w.shape) for w in self.weights if id(w) not in stats))

    # --- input checks: clear messages instead of shape errors deep inside a tower ---------------
    def _check_images(self, images):
        shape, dtype = tuple(images.shape), keras.backend.standardize_dtype(images.dtype)
        if len(shape) != 4:
            raise ValueError(f"images must be a rank-4 NHWC batch (B, H, W, 3), got shape {shape}")
        if shape[-1] != 3:
            raise ValueError(f"images must have 3 channels (RGB, NHWC), got {shape[-1]} channels "
                             f"in shape {shape}")
        if "float" not in dtype:
            raise ValueError(f"images must be float (normalised with CLIP's mean/std; see "
                             f"keras_clip.preprocessing), got dtype {dtype}")
        if self.vision_patch_size is not None and shape[1:3] != (None, None) and \
                tuple(shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}x{self.image_size} for this model, "
                             f"got {shape[1]}x{shape[2]}")

    def _check_token_ids(self, token_ids):
        shape, dtype = tuple(token_ids.shape), keras.backend.standardize_dtype(token_ids.dtype)
        if len(shape) != 2:
            raise ValueError(f"token_ids must be rank 2 (B, {self.context_length}), got shape {shape}")
        if "int" not in dtype:
            raise ValueError(f"token_ids must be integers (see keras_clip.tokenize), got dtype {dtype}")
        if self.text_encoder == "transformer" and shape[1] is not None and shape[1] > self.context_length:
            raise ValueError(f"token_ids are {shape[1]} long; this model's context_length is "
                             f"{self.context_length}")

    def encode_image(self, images, training=None):
        """Unnormalised image embeddings (B, embed_dim) of normalised float NHWC images."""
        if isinstance(images, np.ndarray):
            images = ops.convert_to_tensor(images)
        self._check_images(images)
        return self.visual(images, training=training)

    def cut_token_ids(self, token_ids):
        """int (B, T) token ids → (B, L ≤ T): cut after the batch's longest text
        (`keras_clip.text.transformer.pad_to_longest`) for the causal transformer tower, whose
        embeddings the cut does not change; a CBOW tower's ids come back as they are.
        ValueError (the check `encode_text` makes) if T exceeds ``context_length`` — checked
        first, since the cut would hide it while the texts are short."""
        if self.text_encoder != "transformer":
            return token_ids
        self._check_token_ids(token_ids)
        return pad_to_longest(token_ids)

    def encode_text(self, token_ids, training=None):
        """Unnormalised text embeddings (B, embed_dim) of int token ids (B, context_length)."""
        if isinstance(token_ids, (np.ndarray, list)):
            token_ids = ops.convert_to_tensor(np.asarray(token_ids))
        self._check_token_ids(token_ids)
        return self.text(token_ids, training=training)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or not {"images", "token_ids"} <= set(inputs):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"CLIP expects a dict with keys 'images' and 'token_ids', got {got}")
        image_embeds = l2_normalize(ops.cast(self.encode_image(inputs["images"], training), "float32"))
        text_embeds = l2_normalize(ops.cast(self.encode_text(inputs["token_ids"], training),
                                            "float32"))
        logits_per_image = ops.exp(self.logit_scale) * ops.matmul(image_embeds, ops.transpose(text_embeds))
        if self.logit_bias is not None:  # SigLIP: sigmoid(logits) is the match probability
            logits_per_image = logits_per_image + self.logit_bias
        return {
            "logits_per_image": logits_per_image,
            "logits_per_text": ops.transpose(logits_per_image),
            "image_embeds": image_embeds,
            "text_embeds": text_embeds,
        }

    # --- training: symmetric contrastive loss with global-batch negatives -------------------------
    def compile(self, optimizer="adamw", *, loss=None, accum_freq=1, xla_towers="auto",
                xla_optimizer=True, text_padding="longest", **kwargs):
        """Configure training; the loss is CLIP's own, named, not a Keras loss.

        Args:
            optimizer: a Keras optimizer or its name.
            loss: "contrastive" (default: CLIP's symmetric softmax loss) or "siglip" (SigLIP's
                pairwise sigmoid loss; needs a model built with ``logit_bias_init``). Negatives
                come from the global batch under every tf.distribute strategy.
            accum_freq: split each (per-replica) batch into this many micro-batches and
                accumulate without losing negatives (open_clip's ``--accum-freq``): every
                micro-batch's features are first computed without gradients and kept, then each
                micro-batch is recomputed with gradients and scored against all the kept
                features; the summed gradients are the whole batch's. Memory is that of one
                micro-batch's backward pass; the forward pass runs twice. BatchNorm (ResNet
                towers) sees micro-batch statistics, as in open_clip.
            xla_towers: run the per-replica tower forward/backward as one XLA-compiled function
                (True), as TensorFlow graph ops (False), or "auto" (the default): XLA under a
                multi-replica strategy; on one device the graph where TensorFlow's CPU kernels
                are oneDNN's (`keras_clip.compat.onednn_enabled`: x86 CPUs with AVX512_VNNI,
                AVX512_BF16, AVX_VNNI or AMX) or the model computes in bfloat16, XLA otherwise.
                Measured (BENCHMARKS.md): XLA 1.98× faster under MirroredStrategy over 2 CPUs
                (ViT-S-Demo); on one device with oneDNN, at ViT-B/32, batch 16, the graph is as
                fast in float32 (3.7 vs 3.6 samples/s, medians of 5) and 1.8× faster in
                mixed_bfloat16 (6.2 vs 3.5: XLA's CPU matmuls reach half of TensorFlow's bf16
                peak); without oneDNN (an AMD EPYC with AVX2 only, float32, batch 16) XLA is
                1.38× faster at ViT-B/32 and 1.17× at RN50 (paired medians of 5). Keras'
                own ``jit_compile`` would put the whole distributed step into one XLA cluster,
                which fails under MirroredStrategy and is 9× slower on one device (ViT-B/32).
            xla_optimizer: without a tf.distribute strategy, apply the optimizer's update as one
                XLA-compiled function (the same optimizer, its arithmetic fused into a few
                passes over memory; ViT-B/32's AdamW update over 151M parameters: 0.15 s
                instead of 0.53 s, benchmarks/clip_step_breakdown.py). Under a strategy the
                update runs as Keras runs it (its all-reduce is a merge_call XLA cannot hold).
            text_padding: "longest" (default): each training / evaluation step cuts its token
                ids after the batch's longest text, in multiples of 16 tokens
                (`keras_clip.text.transformer.pad_to_longest`; transformers' tokenizer term) —
                the same embeddings and gradients (the causal mask hides the cut padding from
                every pooled position), less text-tower work when captions are short. Each new
                cut length (at most 5 for 77-token ids: 16, 32, 48, 64, 77) compiles the XLA
                functions of the step once — the towers with ``xla_towers``, the LayerNorm and
                activation kernels in either case: a one-time stall per length (~3.5 s at
                ViT-Tiny in the graph; with XLA towers at ViT-B/32 up to a first step's
                compile, ~50 s measured there, compile included). "max_length": every step
                runs the token ids as given (the tokenizer's ``context_length`` columns), as
                open_clip does. CBOW text towers always see every position.

        Raises:
            ValueError: an unknown loss, "siglip" on a model without a logit bias,
                ``accum_freq`` not an int >= 1, ``xla_towers`` not True, False or "auto",
                ``xla_optimizer`` not a bool, ``text_padding`` not "longest" or "max_length",
                or (at the first step) token ids wider than ``context_length``.
        """
        loss = "contrastive" if loss is None else loss
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} (CLIP computes it itself), got {loss!r}")
        if loss == "siglip" and self.logit_bias is None:
            raise ValueError("loss='siglip' needs SigLIP's logit bias: build the model with "
                             "logit_bias_init=-10.0 (and logit_scale_init=math.log(10)), e.g. "
                             "CLIP.from_preset(name, logit_bias_init=-10.0, "
                             "logit_scale_init=math.log(10))")
        if isinstance(accum_freq, bool) or not isinstance(accum_freq, int) or accum_freq < 1:
            raise ValueError(f"accum_freq must be an int >= 1, got {accum_freq!r}")
        if not (isinstance(xla_towers, bool) or xla_towers == "auto"):
            raise ValueError(f'xla_towers must be True, False or "auto", got {xla_towers!r}')
        if not isinstance(xla_optimizer, bool):
            raise ValueError(f"xla_optimizer must be True or False, got {xla_optimizer!r}")
        if text_padding not in ("longest", "max_length"):
            raise ValueError(f'text_padding must be "longest" or "max_length", got {text_padding!r}')
        self.clip_loss = loss
        self.text_padding = text_padding
        self.accum_freq = accum_freq
        self.xla_towers = xla_towers
        self.xla_optimizer = xla_optimizer
        self._tower_fns = {}
        self._xla_apply = None
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        """Keras' compile config plus ``xla_towers`` and the variables the optimizer trains
        without weight decay (`exclude_from_weight_decay` is not part of an optimizer's config;
        they are recorded by path within the model, e.g. ``visual/ln_pre/gamma``)."""
        config = super().get_compile_config()
        if config:  # {} when the model was never compiled: it loads uncompiled
            config["xla_towers"] = getattr(self, "xla_towers", "auto")
            config["xla_optimizer"] = bool(getattr(self, "xla_optimizer", True))
            config["clip_loss"] = getattr(self, "clip_loss", "contrastive")
            config["accum_freq"] = int(getattr(self, "accum_freq", 1))
            config["text_padding"] = getattr(self, "text_padding", "longest")
            if self.locks:  # re-applied on load, before the optimizer is built for the rest
                config["locks"] = {k: list(v) for k, v in self.locks.items()}
            excluded = weight_decay_excluded(self.optimizer, self.trainable_variables)
            if excluded:
                config["no_weight_decay"] = [_relative_path(v) for v in excluded]
        return config

    def compile_from_config(self, config):
        """Re-compiles a loaded model as it was saved: `keras.saving.load_model` returns it
        compiled, its towers locked as they were, its optimizer built for the same trainable
        variables (so its state, the iteration count included, is restored), with the same
        weight-decay exclusions."""
        config = dict(config)
        loss, accum_freq = config.pop("clip_loss", None), config.pop("accum_freq", 1)
        locks = config.pop("locks", None) or {}
        if "image" in locks:
            self.lock_image_tower(*locks["image"])
        if "text" in locks:
            self.lock_text_tower(*locks["text"])
        config.pop("loss", None)
        config = dict(keras.saving.deserialize_keras_object(config))
        no_decay = set(config.pop("no_weight_decay", None) or ())
        self.compile(loss=loss, accum_freq=accum_freq,
                     **{k: v for k, v in config.items() if v is not None})
        if no_decay:
            self.optimizer.exclude_from_weight_decay(
                var_list=[v for v in self.trainable_variables if _relative_path(v) in no_decay])
        build_optimizer_slots(self)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _normalise_batch(self, images):
        """uint8 NHWC → CLIP-normalised float (images already sized for the model), by the
        preprocessing module's ``normalize_uint8``; float images are taken as normalised."""
        if images.dtype == tf.uint8:
            images = normalize_uint8(images)
        return tf.cast(images, self.compute_dtype)

    def embed_pair(self, images, token_ids, training=False):
        """L2-normalised float32 image and text embeddings of a batch of pairs."""
        return self.embed_images(images, training), self.embed_texts(token_ids, training)

    def embed_images(self, images, training=False):
        """L2-normalised float32 image embeddings (B, embed_dim)."""
        return l2_normalize(ops.cast(self.encode_image(images, training=training), "float32"))

    def embed_texts(self, token_ids, training=False):
        """L2-normalised float32 text embeddings (B, embed_dim)."""
        return l2_normalize(ops.cast(self.encode_text(token_ids, training=training), "float32"))

    def _tower_fn(self, name):
        fn = getattr(self, name)
        xla = getattr(self, "xla_towers", False)
        if xla == "auto":  # see compile
            xla = xla_pays(self, training=True)
        if not xla:
            return fn
        if getattr(self, "_tower_fns", None) is None:
            self._tower_fns = {}
        if name not in self._tower_fns:
            self._tower_fns[name] = tf.function(fn, jit_compile=True, reduce_retracing=True)
        return self._tower_fns[name]

    def _towers(self, images, token_ids, training, tape=None):
        """Both towers' normalised embeddings. A wholly locked tower runs on its own, unrecorded
        by ``tape`` (no backward pass through it); otherwise both run as one XLA function.
        Token ids are first cut after the batch's longest text (``text_padding``, see compile)."""
        if getattr(self, "text_padding", "longest") == "longest":
            token_ids = self.cut_token_ids(token_ids)
        if not (self.image_tower_locked or self.text_tower_locked) or tape is None:
            return self._tower_fn("embed_pair")(images, token_ids, training)
        if self.image_tower_locked:
            with tape.stop_recording():
                img = tf.stop_gradient(self._tower_fn("embed_images")(images, training))
        else:
            img = self._tower_fn("embed_images")(images, training)
        if self.text_tower_locked:
            with tape.stop_recording():
                txt = tf.stop_gradient(self._tower_fn("embed_texts")(token_ids))
        else:
            txt = self._tower_fn("embed_texts")(token_ids, training)
        return img, txt

    def _loss(self, img, txt):
        if getattr(self, "clip_loss", "contrastive") == "siglip":
            return sigmoid_loss(img, txt, self.logit_scale, self.logit_bias)
        return contrastive_loss(img, txt, self.logit_scale)

    # --- tower locking (LiT), open_clip's names -------------------------------------------------
    def lock_image_tower(self, unlocked_groups=0, freeze_bn_stats=False):
        """Freezes the image tower but its last ``unlocked_groups`` groups (open_clip's
        ``lock_image_tower``; LiT with 0). ``freeze_bn_stats`` also stops the frozen groups'
        BatchNorm statistics (ResNet towers). Call before ``compile``. Groups: see
        `keras_clip.locking`. ValueError if ``unlocked_groups`` exceeds the groups."""
        groups = locking.image_tower_groups(self)
        locking.lock_groups(groups, unlocked_groups, "image tower", freeze_batch_norm=freeze_bn_stats)
        self.image_tower_locked = unlocked_groups == 0
        self.locks["image"] = [int(unlocked_groups), bool(freeze_bn_stats)]
        return self

    def lock_text_tower(self, unlocked_layers=0, freeze_layer_norm=True):
        """Freezes the text tower but its last ``unlocked_layers`` groups (open_clip's
        ``lock_text_tower``). ``freeze_layer_norm=False`` leaves the frozen groups' LayerNorm
        gains and biases trainable. Call before ``compile``. ValueError if ``unlocked_layers``
        exceeds the groups (``text_layers + 2``)."""
        groups = locking.text_tower_groups(self)
        locking.lock_groups(groups, unlocked_layers, "text tower",
                            keep_layer_norm=not freeze_layer_norm)
        self.text_tower_locked = unlocked_layers == 0 and freeze_layer_norm
        self.locks["text"] = [int(unlocked_layers), bool(freeze_layer_norm)]
        return self

    def _unpack(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        if not isinstance(x, dict) or not {"images", "token_ids"} <= set(x):
            raise ValueError("CLIP training data must yield dicts with 'images' and 'token_ids', got "
                             f"{sorted(x) if isinstance(x, dict) else type(x).__name__}")
        return self._normalise_batch(x["images"]), x["token_ids"]

    def train_step(self, data):
        images, token_ids = self._unpack(data)
        variables = self.trainable_weights
        # Gradients are summed over replicas by the optimizer: average them instead.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        k = getattr(self, "accum_freq", 1)
        if k == 1:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(_tf_variables(variables))  # only these: frozen ones cost no backward
                img, txt = self._towers(images, token_ids, True, tape)
                loss = self._loss(img, txt)
                scaled = self.optimizer.scale_loss(loss / replicas)
            grads = tape.gradient(scaled, _tf_variables(variables))
        else:
            loss, grads = self._accumulated_gradients(images, token_ids, variables, k, replicas)
        self._apply_gradients(grads, variables)
        self.loss_tracker.update_state(loss)
        return self._logs(loss=self.loss_tracker.result(), temperature=tf.exp(self.logit_scale),
                          learning_rate=self.optimizer.learning_rate)

    def _apply_gradients(self, grads, variables):
        """``optimizer.apply_gradients``; as one XLA function with ``xla_optimizer`` and no
        tf.distribute strategy (see ``compile``)."""
        if not getattr(self, "xla_optimizer", False) or tf.distribute.has_strategy():
            self.optimizer.apply_gradients(zip(grads, variables))
            return
        key = tuple(id(v) for v in variables)
        cache = getattr(self, "_xla_apply", None)
        if cache is None or cache.key != key:
            # A SimpleNamespace: not tracked, so exporting the model does not try to save this
            # function (a dict of it keyed by a tuple made SavedModel export fail).
            self._xla_apply = cache = types.SimpleNamespace(key=key, fn=tf.function(
                lambda grads: self.optimizer.apply_gradients(zip(grads, variables)),
                jit_compile=True))
        cache.fn(list(grads))

    def _accumulated_gradients(self, images, token_ids, variables, k, replicas):
        """open_clip's ``--accum-freq``: the whole batch's loss and gradients from ``k``
        micro-batches, each backward pass holding one micro-batch's activations."""
        batch = images.shape[0]
        if batch is not None and batch % k:
            raise ValueError(f"accum_freq {k} does not divide the per-replica batch {batch}")
        if batch is None:  # e.g. a last partial batch: a named error, not tf.split's
            check = tf.debugging.assert_equal(
                tf.shape(images)[0] % k, 0, message=(
                    f"accum_freq {k} does not divide the per-replica batch of this step (a partial "
                    "last batch? batch the data with drop_remainder=True)"))
            with tf.control_dependencies([check]):  # both splits below wait for the check
                images, token_ids = tf.identity(images), tf.identity(token_ids)
        image_parts = tf.split(images, k)  # k × (B / k, H, W, 3)
        id_parts = tf.split(token_ids, k)
        # 1. every micro-batch's features, without gradients
        cached = [self._towers(i, t, True) for i, t in zip(image_parts, id_parts)]
        cached = [(tf.stop_gradient(a), tf.stop_gradient(b)) for a, b in cached]
        loss, total = None, [None] * len(variables)
        done = []  # the previous micro-batch's gradients
        for j in range(k):
            # 2. micro-batch j again, with gradients, against the others' cached features.
            # The graph has no data edge from pass j-1 to pass j, so TensorFlow's executor may
            # run all k forward passes first and hold every micro-batch's activations at once
            # (measured at ViT-B/32, accum 4 × 32: ~20 GB peak RSS, batch 32: 8.4 GB): pass j
            # starts only when pass j-1's gradients exist.
            with tf.control_dependencies(done), \
                    tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(_tf_variables(variables))
                img_j, txt_j = self._towers(image_parts[j], id_parts[j], True, tape)
                img = tf.concat([c[0] for c in cached[:j]] + [img_j] + [c[0] for c in cached[j + 1:]], 0)
                txt = tf.concat([c[1] for c in cached[:j]] + [txt_j] + [c[1] for c in cached[j + 1:]], 0)
                loss_j = self._loss(img, txt)  # the whole batch's loss (same value every j)
                scaled = self.optimizer.scale_loss(loss_j / replicas)
            grads = tape.gradient(scaled, _tf_variables(variables))
            total = [_add_gradients(t, g) for t, g in zip(total, grads)]
            done = [_dependency(g) for g in total if g is not None]
            loss = loss_j if loss is None else loss
        # The towers' gradients sum over j to the whole batch's; the logit scale / bias get the
        # whole batch's gradient in every one of the k passes: keep one.
        shared = {id(v) for v in (self.logit_scale, self.logit_bias) if v is not None}
        total = [g / k if id(v) in shared and g is not None else g
                 for v, g in zip(variables, total)]
        return loss, total

    def test_step(self, data):
        images, token_ids = self._unpack(data)
        img, txt = self._towers(images, token_ids, False)
        self.loss_tracker.update_state(self._loss(img, txt))
        return self._logs(loss=self.loss_tracker.result())

    def _logs(self, **values):
        return replica_logs(self.distribute_strategy, values)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim, image_size=self.image_size, vision_layers=self.vision_layers,
            vision_width=self.vision_width, vision_patch_size=self.vision_patch_size,
            vision_heads=self.vision_heads, context_length=self.context_length,
            vocab_size=self.vocab_size, text_width=self.text_width, text_heads=self.text_heads,
            text_layers=self.text_layers, text_encoder=self.text_encoder,
            activation=self.activation, mlp_ratio=self.mlp_ratio,
            logit_scale_init=self.logit_scale_init, layer_norm_epsilon=self.layer_norm_epsilon,
            logit_bias_init=self.logit_bias_init,
            text_final_layer_norm_epsilon=self.text_final_layer_norm_epsilon)
        return config
