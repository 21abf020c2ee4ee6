"""The DALL·E transformer: a decoder-only, sparse-attention model of text then image tokens.

Stream layout (T = text_len + grid_height·grid_width = n + N positions):

    position   0 … n-1           n      n+1 … n+N-1
    input      text_0 … text_n-1  SOI    img_0 … img_N-2
    predicts   text_1 … text_n-1, –      img_0 … img_N-1

* Text position i (< n-1) predicts text_{i+1}; the last text position has no target (the image
  stream starts with its own start-of-image token, SOI, whose output predicts img_0).
* Image stream position j (stream index n + j) predicts img_j (raster order) and carries the
  row / column embeddings of raster j: row_emb[j // w] + col_emb[j % w]. So the position
  embedding names the cell being predicted and the token embedding the previous cell's code.
* Text input embedding: token embedding + text position embedding, except that where the token
  is the pad id (0 for the CLIP tokenizer, after EOT) the token embedding is replaced by a
  learned pad embedding of that position (the paper's padding: pads are not masked in attention
  and the model still predicts them).
* Logits are restricted per modality by two output heads: text positions only get text-vocabulary
  logits, image positions only image-vocabulary logits (`tie_embeddings=True`: the heads are the
  transposed token-embedding matrices, as in GPT-2/3).

Layer i attends with `PatternAttention(attention_schedule[i], …)` from `keras_dalle.transformer.patterns`
("row", "column", "conv" or "full"; default the paper's schedule), in the shared pre-LN
`ResidualAttentionBlock` (GELU MLP).

Training: `compile(optimizer)` then `fit` on batches of
`{"text_token_ids": int [B, n], "image_tokens": int [B, h, w] or [B, h·w]}` (see
`keras_dalle.transformer.data.dalle_dataset`). Loss (float32 even under mixed precision): cross-entropy
averaged over the text targets and over the image targets separately, then
`text_loss_weight · text + image_loss_weight · image` (the paper's 1/8 and 7/8).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_clip.layers.transformer import ResidualAttentionBlock, layer_norm
from keras_clip.compat import BuiltInInitModel
from keras_clip.strategy import replica_logs
from keras_clip.validation import check_positive_int, is_concrete
from keras_dalle.sampling.pipeline import generate
from keras_dalle.transformer.presets import get_dalle_preset
from keras_dalle.transformer.patterns import PatternAttention, default_schedule

PATTERNS = ("full", "row", "column", "conv")
ATTENTION_IMPLS = ("sparse", "masked_dense")


def sparse_cross_entropy(logits, targets):
    """Mean cross-entropy (float32) of float logits [..., V] against int targets [...]."""
    logits = ops.cast(logits, "float32")
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ops.cast(targets, "int32"),
                                                            logits=logits)
    return ops.mean(losses)


@keras.saving.register_keras_serializable(package="keras_dalle")
class DALLE(BuiltInInitModel, keras.Model):
    """DALL·E's text-to-image transformer (Ramesh et al. 2021).

    Args:
        text_len: text positions n (256 in the paper); captions are tokenized to this length.
        grid_height, grid_width: the dVAE token grid (32 × 32 in the paper).
        text_vocab_size: 49408 for the CLIP BPE tokenizer (the paper's BPE: 16384).
        image_vocab_size: the dVAE codebook size K (8192).
        width, num_layers, num_heads, mlp_ratio, activation, layer_norm_epsilon: the blocks.
        attention_schedule: one pattern per layer ("row", "column", "conv", "full");
            None → `default_schedule(num_layers)`.
        attention_impl: "sparse" (efficient kernels) or "masked_dense" (a dense masked softmax;
            same outputs).
        kernel_size: the conv pattern's window (11 in the paper for 32 × 32).
        pad_id: text id that gets the per-position pad embedding (0: CLIP pads with 0).
        text_loss_weight, image_loss_weight: 1/8 and 7/8. ``text_loss_weight=0`` (the shapes
            demo's choice: its captions are a fixed grammar, and the 49408-way text head was
            ~40% of its training FLOPs) skips the text logits in training and evaluation —
            ``text_loss`` is then reported as 0 — and leaves the text head untrained
            (non-trainable); ``call`` still returns its logits.
        tie_embeddings: output logits from the token-embedding matrices instead of two heads.

    `call({"text_token_ids", "image_tokens"})` returns `text_logits` [B, n-1, text_vocab_size]
    (entry i predicts text_{i+1}) and `image_logits` [B, N, image_vocab_size] (entry j predicts
    raster token j), float32.

    Cached decoding (keras-hub style): `empty_cache(B)` gives one key/value cache per layer,
    `call_with_cache(stream_ids, cache, index)` runs a run of stream positions (a prefill, or
    one token) against them and returns image logits and the updated caches;
    `stream_token_ids(text, image)` lays the ids out as the stream's inputs.

    Example:
        >>> model = DALLE.from_preset("dalle-tiny")
        >>> out = model({"text_token_ids": np.zeros((2, 8), "int32"),
        ...              "image_tokens": np.zeros((2, 4, 4), "int32")})
        >>> out["image_logits"].shape
        TensorShape([2, 16, 16])
        >>> model.compile(keras.optimizers.AdamW(3e-4)); model.fit(token_dataset, epochs=1)
    """

    def __init__(self, text_len=256, grid_height=32, grid_width=32, text_vocab_size=49408,
                 image_vocab_size=8192, width=512, num_layers=12, num_heads=8, mlp_ratio=4.0,
                 activation="gelu", layer_norm_epsilon=1e-5, attention_schedule=None,
                 attention_impl="sparse", kernel_size=11, pad_id=0, text_loss_weight=0.125,
                 image_loss_weight=0.875, tie_embeddings=False, **kwargs):
        super().__init__(**kwargs)
        self.text_len = check_positive_int("text_len", text_len)
        if self.text_len < 2:
            raise ValueError(f"text_len must be >= 2 (text targets are text[1:]), got {text_len}")
        self.grid_height = check_positive_int("grid_height", grid_height)
        self.grid_width = check_positive_int("grid_width", grid_width)
        self.text_vocab_size = check_positive_int("text_vocab_size", text_vocab_size)
        self.image_vocab_size = check_positive_int("image_vocab_size", image_vocab_size)
        self.width = check_positive_int("width", width)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if self.width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.mlp_ratio = float(mlp_ratio)
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        schedule = list(attention_schedule) if attention_schedule is not None \
            else list(default_schedule(self.num_layers))
        if len(schedule) != self.num_layers or any(p not in PATTERNS for p in schedule):
            raise ValueError(f"attention_schedule must list {self.num_layers} patterns from "
                             f"{PATTERNS}, got {attention_schedule!r}")
        self.attention_schedule = schedule
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got "
                             f"{attention_impl!r}")
        self.attention_impl = attention_impl
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.pad_id = int(pad_id)
        if not 0 <= self.pad_id < self.text_vocab_size:
            raise ValueError(f"pad_id must be in [0, {self.text_vocab_size}), got {pad_id}")
        self.text_loss_weight = float(text_loss_weight)
        self.image_loss_weight = float(image_loss_weight)
        if self.text_loss_weight < 0 or self.image_loss_weight < 0:
            raise ValueError("text_loss_weight and image_loss_weight must be >= 0, got "
                             f"{text_loss_weight} and {image_loss_weight}")
        self.tie_embeddings = bool(tie_embeddings)

        policy = self.dtype_policy
        self.blocks = [
            ResidualAttentionBlock(
                self.width, self.num_heads, self.mlp_ratio, activation, self.layer_norm_epsilon,
                attention_kernel=PatternAttention(pattern, self.text_len, self.grid_height,
                                                  self.grid_width, kernel_size=self.kernel_size,
                                                  impl=attention_impl),
                name=f"blocks_{i}", dtype=policy)
            for i, pattern in enumerate(schedule)]
        self.ln_final = layer_norm("ln_final", self.layer_norm_epsilon, policy)
        if not self.tie_embeddings:
            self.text_head = keras.layers.Dense(self.text_vocab_size, name="text_head",
                                                dtype=policy)
            self.image_head = keras.layers.Dense(self.image_vocab_size, name="image_head",
                                                 dtype=policy)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.text_loss_tracker = keras.metrics.Mean(name="text_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="image_loss")
        self.xla = False
        self._step_fn = None
        self.build()

    @property
    def num_image_tokens(self):
        return self.grid_height * self.grid_width

    @property
    def sequence_length(self):
        """T = text_len + grid_height · grid_width."""
        return self.text_len + self.num_image_tokens

    def build(self, input_shape=None):
        if self.built:
            return
        d = self.width
        emb = keras.initializers.RandomNormal(stddev=0.02)

        def weight(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=emb)

        self.text_token_embedding = weight("text_token_embedding", (self.text_vocab_size, d))
        self.text_position_embedding = weight("text_position_embedding", (self.text_len, d))
        self.pad_embedding = weight("pad_embedding", (self.text_len, d))
        self.image_token_embedding = weight("image_token_embedding", (self.image_vocab_size, d))
        self.start_of_image_embedding = weight("start_of_image_embedding", (d,))
        self.image_row_embedding = weight("image_row_embedding", (self.grid_height, d))
        self.image_column_embedding = weight("image_column_embedding", (self.grid_width, d))
        shape = (None, None, d)
        for block in self.blocks:
            block.build(shape)
        self.ln_final.build(shape)
        if not self.tie_embeddings:
            self.text_head.build(shape)
            self.image_head.build(shape)
            # No text loss: its head gets no gradient, so the optimizer must not see it.
            self.text_head.trainable = self.text_loss_weight > 0
        self.built = True

    @classmethod
    def from_preset(cls, name, **overrides):
        """A randomly initialised model from a `keras_dalle.transformer.presets` name.

        Example:
            >>> DALLE.from_preset("dalle-shapes", attention_impl="masked_dense")
        """
        config = get_dalle_preset(name)
        config.update(overrides)
        return cls(**config)

    def count_params(self):
        return int(sum(np.prod(w.shape) for w in self.weights))

    # --- inputs -----------------------------------------------------------------------------
    def _check_ids(self, name, x, expected_shapes, vocab):
        """int32 tensor of `x`; ValueError naming `name` on a wrong rank/shape/dtype/range."""
        shape = tuple(getattr(x, "shape", np.shape(x)))
        if not any(len(shape) == len(e) and
                   all(s is None or s == t for s, t in zip(shape[1:], e[1:]))
                   for e in expected_shapes):
            wanted = " or ".join("(" + ", ".join("B" if t is None else str(t) for t in e) + ")"
                                 for e in expected_shapes)
            raise ValueError(f"{name} must have shape {wanted}, got {shape}")
        if not hasattr(x, "dtype"):
            x = np.asarray(x)
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "int" not in dtype:
            raise ValueError(f"{name} must be integer token ids, got dtype {dtype}")
        if is_concrete(x):
            values = np.asarray(x if isinstance(x, (np.ndarray, list, tuple)) else x.numpy())
            if values.size and (values.min() < 0 or values.max() >= vocab):
                raise ValueError(f"{name} must be in [0, {vocab}), got min {values.min()} max "
                                 f"{values.max()}")
        return ops.cast(ops.convert_to_tensor(x), "int32")

    def check_inputs(self, inputs):
        if not isinstance(inputs, dict) or not {"text_token_ids", "image_tokens"} <= set(inputs):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError("DALLE expects a dict with keys 'text_token_ids' and "
                             f"'image_tokens', got {got}")
        h, w, n = self.grid_height, self.grid_width, self.text_len
        text = self._check_ids("text_token_ids", inputs["text_token_ids"], [(None, n)],
                               self.text_vocab_size)
        image = self._check_ids("image_tokens", inputs["image_tokens"],
                                [(None, h, w), (None, h * w)], self.image_vocab_size)
        image = ops.reshape(image, (-1, h * w))  # [B, h, w] → [B, N] raster order
        return text, image

    def _range_asserts(self, text, image):
        # Graph inputs (fit) cannot be checked in Python: fail the step with a named message
        # instead of a silent out-of-range gather (which is zeros on some devices).
        return [
            tf.debugging.assert_non_negative(text, message="text_token_ids must be >= 0"),
            tf.debugging.assert_less(text, self.text_vocab_size,
                                     message=f"text_token_ids must be < {self.text_vocab_size}"),
            tf.debugging.assert_non_negative(image, message="image_tokens must be >= 0"),
            tf.debugging.assert_less(image, self.image_vocab_size,
                                     message=f"image_tokens must be < {self.image_vocab_size}"),
        ]

    # --- forward ----------------------------------------------------------------------------
    def embed(self, text, image):
        """Input embeddings [B, T, width] of text ids [B, n] and image tokens [B, N]."""
        dtype = self.compute_dtype
        h, w = self.grid_height, self.grid_width
        tokens = ops.take(self.text_token_embedding, text, axis=0)  # [B, n, d]
        is_pad = ops.expand_dims(ops.equal(text, self.pad_id), -1)  # [B, n, 1]
        pad = ops.expand_dims(self.pad_embedding, 0)  # [1, n, d]
        text_x = ops.where(is_pad, pad, tokens) + self.text_position_embedding
        # SOI then img_0 … img_{N-2}; stream position j carries raster j's row/column.
        soi = ops.broadcast_to(self.start_of_image_embedding, (ops.shape(image)[0], 1, self.width))
        previous = ops.take(self.image_token_embedding, image[:, :-1], axis=0)  # [B, N-1, d]
        grid = (ops.expand_dims(self.image_row_embedding, 1)
                + ops.expand_dims(self.image_column_embedding, 0))  # [h, w, d]
        image_x = ops.concatenate([soi, previous], axis=1) + ops.reshape(grid, (h * w, self.width))
        return ops.cast(ops.concatenate([text_x, image_x], axis=1), dtype)

    def logits(self, text, image, with_text=True):
        """float32 (text_logits [B, n-1, V_t], image_logits [B, N, V_i]) of checked int32 ids;
        text_logits is None with ``with_text=False``."""
        x = self.embed(text, image)
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        text_x, image_x = x[:, :self.text_len - 1], x[:, self.text_len:]
        text_logits = None
        if self.tie_embeddings:
            if with_text:
                text_logits = ops.matmul(text_x, ops.cast(
                    ops.transpose(self.text_token_embedding), x.dtype))
            image_logits = ops.matmul(image_x, ops.cast(
                ops.transpose(self.image_token_embedding), x.dtype))
        else:
            text_logits = self.text_head(text_x) if with_text else None
            image_logits = self.image_head(image_x)
        if text_logits is not None:
            text_logits = ops.cast(text_logits, "float32")
        return text_logits, ops.cast(image_logits, "float32")

    def call(self, inputs):
        text, image = self.check_inputs(inputs)
        text_logits, image_logits = self.logits(text, image)
        return {"text_logits": text_logits, "image_logits": image_logits}

    def compute_losses(self, text, image):
        """float32 scalars (loss, text_loss, image_loss) of int32 ids [B, n] and [B, N]."""
        with_text = self.text_loss_weight > 0
        text_logits, image_logits = self.logits(text, image, with_text=with_text)
        text_loss = (sparse_cross_entropy(text_logits, text[:, 1:]) if with_text
                     else tf.zeros((), tf.float32))
        image_loss = sparse_cross_entropy(image_logits, image)
        loss = self.text_loss_weight * text_loss + self.image_loss_weight * image_loss
        return loss, text_loss, image_loss

    # --- cached decoding ----------------------------------------------------------------------
    def empty_cache(self, batch_size):
        """Zeroed key/value caches for `call_with_cache`: a list of ``num_layers`` pairs
        ``(keys, values)``, each (batch_size, num_heads, T, width // num_heads) in the compute
        dtype (the layout of `keras_clip.layers.attention.MultiHeadAttention`).
        ``batch_size`` may be an int or an int32 scalar tensor."""
        return [block.empty_cache(batch_size, self.sequence_length) for block in self.blocks]

    def stream_token_ids(self, text_token_ids, image_tokens):
        """The stream's input ids [B, min(n + 1 + P, T)] for `call_with_cache`: the text ids
        [B, n], a 0 at the start-of-image position n (it has its own embedding, so the id there
        is ignored), then the image tokens [B, P] in raster order (position n + 1 + j holds
        image token j; the last image token is no input, so at most N − 1 are used)."""
        text = ops.cast(text_token_ids, "int32")
        image = ops.cast(image_tokens, "int32")
        soi = ops.zeros((ops.shape(text)[0], 1), "int32")
        stream = ops.concatenate([text, soi, image], axis=1)  # [B, n + 1 + P]
        return stream[:, :self.sequence_length]

    def _embed_positions(self, token_ids, positions):
        """Input embeddings [B, L, width] of stream ids [B, L] at stream positions (L,): the same
        sums as `embed` (text: token or pad + position; image: SOI or the previous token, plus
        row + column), for any run of positions."""
        n, w = self.text_len, self.grid_width
        is_text = ops.reshape(positions < n, (1, -1, 1))  # (1, L, 1)
        # Positions outside the stream are clipped here; the blocks reject such an index.
        text_position = ops.clip(positions, 0, n - 1)  # (L,)
        text_tokens = ops.take(self.text_token_embedding,
                               ops.clip(token_ids, 0, self.text_vocab_size - 1), axis=0)  # [B, L, d]
        is_pad = ops.expand_dims(ops.equal(token_ids, self.pad_id), -1)  # [B, L, 1]
        pad = ops.take(self.pad_embedding, text_position, axis=0)  # (L, d)
        text_x = (ops.where(is_pad, pad, text_tokens)
                  + ops.take(self.text_position_embedding, text_position, axis=0))
        raster = ops.clip(positions - n, 0, self.num_image_tokens - 1)  # (L,) predicted cell
        image_tokens = ops.take(self.image_token_embedding,
                                ops.clip(token_ids, 0, self.image_vocab_size - 1), axis=0)
        is_soi = ops.reshape(positions == n, (1, -1, 1))  # (1, L, 1)
        grid = (ops.take(self.image_row_embedding, raster // w, axis=0)
                + ops.take(self.image_column_embedding, raster % w, axis=0))  # (L, d)
        image_x = ops.where(is_soi, self.start_of_image_embedding, image_tokens) + grid
        return ops.cast(ops.where(is_text, text_x, image_x), self.compute_dtype)

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Forward pass over the stream positions [index, index + L) against per-layer caches
        (keras-hub's ``GPT2CausalLM.call_with_cache``, over `MultiHeadAttention`'s cache that
        follows keras-hub's ``CachedMultiHeadAttention``): embeds the ids at their positions,
        runs every block with its cache (each layer's pattern supplies its mask rows) and
        returns the image-head logits. Prefill (L > 1) and decoding (L = 1) are the same call.

        Args:
            token_ids: int [B, L] stream input ids at those positions (see
                `stream_token_ids`): text ids at positions < n, anything at the start-of-image
                position n, image token j − 1 at position n + j.
            cache: list of ``num_layers`` caches, each a pair ``(keys, values)`` of float
                (B, num_heads, T, head_dim) tensors (from `empty_cache`, or a previous call).
            cache_update_index: int or int32 scalar tensor, the first position (0 ≤ index ≤ T − L).

        Returns:
            ``(image_logits, hidden_states, cache)``: float32 [B, L, image_vocab_size] (entry
            i, at stream position p = index + i ≥ n, predicts image token p − n; at text
            positions the image head has no target), [B, L, width] after ``ln_final``, and the
            list of updated caches.

        Raises:
            ValueError: a cache list that is not ``num_layers`` long, a bad cache shape or
                index (see `keras_clip.layers.attention.MultiHeadAttention`).

        Example:
            >>> cache = model.empty_cache(2)
            >>> stream = model.stream_token_ids(text, image_prefix)      # [2, n + 1 + P]
            >>> logits, _, cache = model.call_with_cache(stream, cache, 0)  # prefill
            >>> logits, _, cache = model.call_with_cache(next_ids, cache, n + 1 + P)  # one step
        """
        if len(cache) != len(self.blocks):
            raise ValueError(f"cache must be a list of {len(self.blocks)} per-layer caches "
                             f"(empty_cache), got {len(cache)}")
        token_ids = ops.cast(token_ids, "int32")
        length = token_ids.shape[1] if token_ids.shape[1] is not None else ops.shape(token_ids)[1]
        positions = ops.cast(cache_update_index, "int32") + ops.arange(length, dtype="int32")
        x = self._embed_positions(token_ids, positions)  # [B, L, d]
        updated = []
        for block, block_cache in zip(self.blocks, cache):
            x, block_cache = block(x, cache=block_cache, cache_update_index=cache_update_index)
            updated.append(block_cache)
        x = self.ln_final(x)
        if self.tie_embeddings:
            logits = ops.matmul(x, ops.cast(ops.transpose(self.image_token_embedding), x.dtype))
        else:
            logits = self.image_head(x)
        return ops.cast(logits, "float32"), x, updated

    # --- sampling -----------------------------------------------------------------------------
    def generate(self, prompts, num_samples=1, temperature=1.0, top_k=None, top_p=None, seed=0,
                 image_prefix_tokens=None, use_cache=True, vae=None, rerank=None, keep=None):
        """Sample images for prompts (strings or text ids [B, text_len]).

        The autoregressive loop is one XLA-compiled `tf.while_loop` with a static key/value
        cache for every layer (`keras_dalle.sampling`); `use_cache=False` recomputes the whole
        stream each step (the reference path). With `vae` the tokens are decoded; with `rerank`
        (a `keras_clip.CLIP`) each prompt's samples are sorted by CLIP score and the best
        `keep` returned. Returns a dict: "image_tokens" [B, S, h, w], and "images",
        "scores", "order" as available (see `keras_dalle.sampling.pipeline.generate`).

        Example:
            >>> out = model.generate(["a red circle"], num_samples=8, vae=vae, rerank=clip,
            ...                      keep=2, seed=0)
        """
        return generate(self, prompts, vae=vae, num_samples=num_samples, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed,
                        image_prefix_tokens=image_prefix_tokens, use_cache=use_cache,
                        rerank=rerank, keep=keep)

    # --- training -----------------------------------------------------------------------------
    def compile(self, optimizer="adamw", *, xla=True, **kwargs):
        """Configure training; the loss is built in (no `loss`/`metrics` arguments).

        Args:
            xla: run each replica's forward and backward pass as one XLA-compiled function
                (`tf.function(jit_compile=True)` inside `train_step`). Keras' own
                `jit_compile=True` puts the whole distributed step into one XLA cluster, which
                fails under MirroredStrategy; keep it False (the default here).
        """
        for name in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(f"DALLE computes its own loss and metrics; call compile() "
                                 f"without `{name}`")
        kwargs.setdefault("jit_compile", False)
        self.xla = bool(xla)
        self._step_fn = None
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:  # {} / None: never compiled, and a loaded model stays uncompiled
            config["xla"] = self.xla
        return config

    def compile_from_config(self, config):
        # A loaded .keras model comes back compiled, with its optimizer state restorable.
        config = keras.saving.deserialize_keras_object(config)
        config = {k: v for k, v in config.items() if v is not None}
        self.compile(**config)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)


    @property
    def metrics(self):
        return [self.loss_tracker, self.text_loss_tracker, self.image_loss_tracker]

    def _unpack(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        return self.check_inputs(x)

    def _loss_and_grads(self, text, image):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, text_loss, image_loss = self.compute_losses(text, image)
            # The optimizer sums the replicas' gradients: average them instead.
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.trainable_variables)
        return loss, text_loss, image_loss, grads

    def train_step(self, data):
        text, image = self._unpack(data)
        with tf.control_dependencies(self._range_asserts(text, image)):
            text, image = tf.identity(text), tf.identity(image)
        if self.xla:
            if self._step_fn is None:
                self._step_fn = tf.function(self._loss_and_grads, jit_compile=True,
                                            reduce_retracing=True)
            loss, text_loss, image_loss, grads = self._step_fn(text, image)
        else:
            loss, text_loss, image_loss, grads = self._loss_and_grads(text, image)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._update_metrics(loss, text_loss, image_loss)

    def test_step(self, data):
        text, image = self._unpack(data)
        with tf.control_dependencies(self._range_asserts(text, image)):
            text, image = tf.identity(text), tf.identity(image)
        return self._update_metrics(*self.compute_losses(text, image))

    def _update_metrics(self, loss, text_loss, image_loss):
        self.loss_tracker.update_state(loss)
        self.text_loss_tracker.update_state(text_loss)
        self.image_loss_tracker.update_state(image_loss)
        return replica_logs(self.distribute_strategy, {m.name: m.result() for m in self.metrics})

    def get_config(self):
        config = super().get_config()
        config.update(
            text_len=self.text_len, grid_height=self.grid_height, grid_width=self.grid_width,
            text_vocab_size=self.text_vocab_size, image_vocab_size=self.image_vocab_size,
            width=self.width, num_layers=self.num_layers, num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio, activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            attention_schedule=list(self.attention_schedule),
            attention_impl=self.attention_impl, kernel_size=self.kernel_size, pad_id=self.pad_id,
            text_loss_weight=self.text_loss_weight, image_loss_weight=self.image_loss_weight,
            tie_embeddings=self.tie_embeddings)
        return config
