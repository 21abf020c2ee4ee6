"""DALL·E transformer presets: name → `keras_dalle.transformer.model.DALLE` constructor arguments (plain
dicts), and `dalle_param_count(config)`, the parameter count of a config without building it.

* "dalle-12b": the paper's transformer (Ramesh et al. 2021, appendix B.1): 64 layers, 62 heads of
  64 (width 3968), 256 BPE text tokens (vocabulary 16384) then 32×32 image tokens (vocabulary
  8192), the row / column / conv attention schedule. The paper does not say whether the output
  layer shares the input embeddings; it is a GPT-3-style decoder, and GPT-2/3 tie them, so the
  preset ties them (`tie_embeddings=True`): 12,195,294,848 parameters (the paper's "12 billion"
  + 1.6%). With two separate output heads it would be 12,292,836,992 (+2.4%). The 12·d²·L of
  the 64 blocks alone is 12.09e9, so the paper's figure is a rounded one either way.
* "dalle-shapes": the demo on the built-in shapes data with the "dvae-shapes-8x8" dVAE (64×64
  images → 8×8 tokens, vocabulary 512) and the CLIP BPE tokenizer (vocabulary 49408). Sized for
  `make demo` on a 2-core CPU: the shapes captions are at most 14 tokens with SOT/EOT
  (measured over the 20k "train" and the "heldout" captions), so 16 text positions hold every
  caption; width 256, 4 layers (row, column, row, conv), 4 heads of 64, a 5×5 conv window,
  and no text loss (``text_loss_weight=0``: the captions are a fixed grammar, and the
  49408-way text head would cost more than the four blocks); 28,781,056 parameters, 25.3M of
  them the text embedding and the (untrained) text head. `make demo-dalle-train` trains it for
  500 steps of 32 on the single-object scenes (results, the settings tried and timings:
  README, "Prompt fidelity").
* "dalle-tiny": for tests (8 text tokens, 4×4 grid, width 32, 3 layers, small vocabularies).

Example:
    >>> from keras_dalle.transformer.presets import dalle_param_count, get_dalle_preset
    >>> dalle_param_count(get_dalle_preset("dalle-12b"))
    12195294848
"""

from keras_clip.validation import lookup_preset

__all__ = ["DALLE_PRESETS", "get_dalle_preset", "dalle_param_count"]

DALLE_PRESETS = {
    "dalle-12b": dict(text_len=256, grid_height=32, grid_width=32, text_vocab_size=16384,
                      image_vocab_size=8192, width=3968, num_layers=64, num_heads=62,
                      mlp_ratio=4.0, tie_embeddings=True),
    "dalle-shapes": dict(text_len=16, grid_height=8, grid_width=8, text_vocab_size=49408,
                         image_vocab_size=512, width=256, num_layers=4, num_heads=4,
                         mlp_ratio=4.0, kernel_size=5, text_loss_weight=0.0),
    "dalle-tiny": dict(text_len=8, grid_height=4, grid_width=4, text_vocab_size=64,
                       image_vocab_size=16, width=32, num_layers=3, num_heads=4, mlp_ratio=4.0,
                       kernel_size=3),
}


def get_dalle_preset(name):
    """A (deep) copy of preset `name`'s `DALLE` config; ValueError naming the presets."""
    return lookup_preset(DALLE_PRESETS, name, "DALL·E")


def dalle_param_count(config):
    """Parameters of `DALLE(**config)` computed from the config alone (nothing is built).

    Embeddings: text tokens (V_t·d), text positions and per-position pad embeddings (2·n·d),
    image tokens (V_i·d), the start-of-image token (d), image rows and columns ((h + w)·d).
    Each pre-LN block: two LayerNorms (4d), q/k/v/out projections with biases (4d² + 4d), the
    MLP (d·m + m + m·d + d, m = int(d·mlp_ratio)). Final LayerNorm (2d). Output: two Dense heads
    with biases (d·V_t + V_t + d·V_i + V_i), or none when `tie_embeddings` (the logits are the
    hidden state times the token embeddings).
    """
    c = dict(DEFAULTS, **config)
    d, n = c["width"], c["text_len"]
    vt, vi = c["text_vocab_size"], c["image_vocab_size"]
    m = int(d * c["mlp_ratio"])
    embeddings = vt * d + 2 * n * d + vi * d + d + (c["grid_height"] + c["grid_width"]) * d
    block = 4 * d + 4 * (d * d + d) + d * m + m + m * d + d
    heads = 0 if c["tie_embeddings"] else d * vt + vt + d * vi + vi
    return int(embeddings + c["num_layers"] * block + 2 * d + heads)


# Constructor defaults the count depends on (kept in step with DALLE.__init__ by a test).
DEFAULTS = dict(text_len=256, grid_height=32, grid_width=32, text_vocab_size=49408,
                image_vocab_size=8192, width=512, num_layers=12, mlp_ratio=4.0,
                tie_embeddings=False)
