"""CLIP training options: mixed_bfloat16 with the loss in float32, gradient accumulation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.loss import contrastive_loss
from keras_clip.model import CLIP


def _batches(n, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.zeros((batch, 77), np.int32)
        ids[:, 0], ids[:, 2] = 49406, 49407
        ids[:, 1] = rng.integers(1, 40000, batch)
        out.append({"images": rng.standard_normal((batch, 32, 32, 3)).astype("float32"),
                    "token_ids": ids})
    return out


def _dataset(batches):
    return tf.data.Dataset.from_tensor_slices(
        {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}).batch(len(batches[0]["images"]))


@pytest.fixture
def bf16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_loss(bf16_policy):
    keras.utils.set_random_seed(1)
    model = CLIP.from_preset("ViT-Tiny")
    batch = _batches(1)[0]
    assert all(v.dtype == "float32" for v in model.trainable_weights)
    out = model(batch)
    # The towers run in bfloat16; the logits (and so the loss) are float32.
    assert model.visual.compute_dtype == "bfloat16"
    assert out["logits_per_image"].dtype == tf.float32

    keras.mixed_precision.set_global_policy("float32")
    reference = CLIP.from_preset("ViT-Tiny")
    reference.set_weights(model.get_weights())
    ref_out = reference(batch)
    loss = float(contrastive_loss(out["image_embeds"], out["text_embeds"], model.logit_scale))
    ref_loss = float(contrastive_loss(ref_out["image_embeds"], ref_out["text_embeds"],
                                      reference.logit_scale))
    # bfloat16 has 8 bits of mantissa: close to, but not equal to, the float32 loss.
    assert loss != ref_loss
    assert abs(loss - ref_loss) < 0.05 * abs(ref_loss)

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    history = model.fit(_dataset(_batches(3)), epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
