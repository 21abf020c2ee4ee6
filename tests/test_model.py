import math

import keras
import numpy as np
import pytest
from conftest import xla_compiled_calls

from keras_clip.model import CLIP


def _tokens(batch, length=77, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int32)
    for i in range(batch):
        n = int(rng.integers(1, 20))
        ids[i, : n + 2] = [49406, *rng.integers(1, 49000, n), 49407]
    return ids


def _images(model, batch, seed=0):
    s = model.image_size
    return np.random.default_rng(seed).standard_normal((batch, s, s, 3)).astype(np.float32)


@pytest.fixture(scope="module", params=["ViT-Tiny", "RN-Tiny"])
def model(request):
    return CLIP.from_preset(request.param)


def test_call_returns_scaled_cosine_logits_and_normalised_embeddings(model):
    images, ids = _images(model, 3), _tokens(4)
    out = model({"images": images, "token_ids": ids})
    assert out["logits_per_image"].shape == (3, 4)
    np.testing.assert_allclose(out["logits_per_text"], np.asarray(out["logits_per_image"]).T)
    img = np.array(model.encode_image(images))
    txt = np.array(model.encode_text(ids))
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    np.testing.assert_allclose(out["image_embeds"], img, atol=1e-6)
    np.testing.assert_allclose(out["logits_per_image"], (1 / 0.07) * img @ txt.T, rtol=1e-5, atol=1e-5)


def test_logit_scale_starts_at_log_one_over_0_07(model):
    assert float(model.logit_scale.numpy()) == pytest.approx(math.log(1 / 0.07), rel=1e-6)


def test_text_features_ignore_tokens_after_eot(model):
    ids = _tokens(2)
    changed = ids.copy()
    eot = ids.argmax(-1)
    changed[0, eot[0] + 1:] = 7  # garbage after EOT is invisible to a causal tower
    np.testing.assert_allclose(model.encode_text(ids), model.encode_text(changed), atol=1e-5)


def test_keras_file_round_trip_gives_identical_outputs(model, tmp_path):
    images, ids = _images(model, 2), _tokens(2)
    path = str(tmp_path / "clip.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CLIP) and loaded.get_config() == model.get_config()
    a = model({"images": images, "token_ids": ids})
    b = loaded({"images": images, "token_ids": ids})
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_cbow_text_encoder_is_order_invariant_and_round_trips(tmp_path):
    model = CLIP.from_preset("ViT-Tiny", text_encoder="cbow")
    ids = _tokens(2)
    shuffled = ids.copy()
    n = int(ids[0].argmax()) + 1
    shuffled[0, :n] = ids[0, :n][::-1]
    feats = np.asarray(model.encode_text(ids))
    np.testing.assert_allclose(feats, model.encode_text(shuffled), atol=1e-6)
    model.save(str(tmp_path / "cbow.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "cbow.keras"))
    np.testing.assert_array_equal(feats, loaded.encode_text(ids))


@pytest.mark.parametrize("images, message", [
    (np.zeros((32, 32, 3), np.float32), "rank-4"),
    (np.zeros((1, 32, 32, 4), np.float32), "3 channels"),
    (np.zeros((1, 32, 32, 3), np.uint8), "must be float"),
    (np.zeros((1, 48, 48, 3), np.float32), "must be 32x32"),
])
def test_bad_images_get_a_clear_error(images, message):
    model = CLIP.from_preset("ViT-Tiny")
    with pytest.raises(ValueError, match=message):
        model.encode_image(images)


@pytest.mark.parametrize("ids, message", [
    (np.zeros((77,), np.int32), "rank 2"),
    (np.zeros((1, 77), np.float32), "must be integers"),
    (np.zeros((1, 80), np.int32), "80 long"),
])
def test_bad_token_ids_get_a_clear_error(ids, message):
    model = CLIP.from_preset("ViT-Tiny")
    with pytest.raises(ValueError, match=message):
        model.encode_text(ids)


def test_call_without_both_inputs_names_the_keys():
    model = CLIP.from_preset("ViT-Tiny")
    with pytest.raises(ValueError, match="'images' and 'token_ids'"):
        model({"images": np.zeros((1, 32, 32, 3), np.float32)})


def test_xla_optimizer_update_equals_keras_own_adamw_update(tmp_path):
    """compile(xla_optimizer=True) runs the same AdamW (clip_optimizer's recipe: weight-decay
    exclusions, warmup-cosine schedule) as one XLA function: after 3 steps every weight matches
    the Keras-run update, and the XLA function was the one used."""
    import tensorflow as tf

    from keras_clip.optimizer import clip_optimizer

    images, ids = _images(CLIP.from_preset("ViT-Tiny"), 4), _tokens(4)
    data = tf.data.Dataset.from_tensors({"images": images, "token_ids": ids}).repeat()
    models = []
    for xla_optimizer in (False, True):
        keras.utils.set_random_seed(0)
        m = CLIP.from_preset("ViT-Tiny")
        m.compile(optimizer=clip_optimizer(m, total_steps=6, learning_rate=1e-2, warmup_steps=2),
                  xla_towers=False, xla_optimizer=xla_optimizer)
        before = [v.numpy().copy() for v in m.weights]
        m.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
        assert (m._xla_apply is not None) is xla_optimizer
        assert not np.array_equal(before[0], m.weights[0].numpy())
        models.append(m)
    for a, b in zip(*(m.weights for m in models)):
        if a.path.endswith("key/bias"):
            # Softmax ignores the key bias: its true gradient is 0 and its computed one rounding
            # noise (~1e-10), which Adam's g / sqrt(v) scales up to lr-sized steps either way.
            continue
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert models[1].get_compile_config()["xla_optimizer"] is True
    # The compiled update is not part of what is saved: a trained model still exports (a dict
    # of it keyed by a tuple once made SavedModel export fail; found by the search-page test).
    from export.saved_model import export_clip
    export_clip(models[1], str(tmp_path / "clip"), warmup=False)


@pytest.mark.parametrize("image_size,patch_size", [(32, 8), (30, 8), (64, 32)])
def test_patch_embedding_as_matmul_equals_the_strided_convolution(image_size, patch_size):
    """VisionTransformer.embed_patches (the patches flattened, one matmul with conv1's kernel)
    gives conv1's output and the same gradients, also when the image size is not a multiple of
    the patch size (VALID padding drops the remainder); and under mixed_bfloat16."""
    import tensorflow as tf

    from keras_clip.vision.vit import VisionTransformer

    vit = VisionTransformer(image_size=image_size, patch_size=patch_size, width=16,
                            num_layers=1, num_heads=2, output_dim=8)
    vit.build()
    x = tf.constant(np.random.default_rng(0).standard_normal(
        (3, image_size, image_size, 3)).astype(np.float32))
    grid = image_size // patch_size
    w = np.random.default_rng(1).standard_normal((grid * grid, 16)).astype(np.float32)

    def run(f):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = f(x)
            loss = tf.reduce_sum(y * w)
        return (y.numpy(), tape.gradient(loss, x).numpy(),
                tape.gradient(loss, vit.conv1.kernel.value).numpy())

    ours = run(vit.embed_patches)
    conv = run(lambda t: tf.reshape(vit.conv1(t), (3, grid * grid, 16)))
    for a, b in zip(ours, conv):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        bf16 = VisionTransformer(image_size=image_size, patch_size=patch_size, width=16,
                                 num_layers=1, num_heads=2, output_dim=8)
        bf16.build()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    bf16.set_weights(vit.get_weights())
    out = bf16.embed_patches(x)
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(out.numpy().astype(np.float32), ours[0], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("onednn,policy", [(True, "float32"), (False, "float32"),
                                           (False, "mixed_bfloat16")])
def test_xla_towers_auto_compiles_the_towers_on_one_device_only_without_onednn(
        monkeypatch, onednn, policy):
    """compile(xla_towers="auto") on one device: TensorFlow's graph when its CPU kernels are
    oneDNN's, one XLA function per tower call in float32 otherwise (Eigen's graph matmuls are
    the slower ones then); mixed_bfloat16 stays in the graph; the embeddings agree."""
    import tensorflow as tf

    import keras_clip.model

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = CLIP.from_preset("ViT-Tiny")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(keras.optimizers.SGD(0.1))
    monkeypatch.setattr(keras_clip.model, "onednn_enabled", lambda: onednn)
    fn = model._tower_fn("embed_pair")
    images, ids = _images(model, 2), _tokens(2)
    if onednn or policy == "mixed_bfloat16":
        assert fn == model.embed_pair
    else:
        assert isinstance(fn, tf.types.experimental.PolymorphicFunction)
        graph = tf.function(lambda: fn(images, ids, False)).get_concrete_function().graph
        assert xla_compiled_calls(graph)
    for got, want in zip(fn(images, ids, False), model.embed_pair(images, ids, False)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    model.fit({"images": images, "token_ids": ids}, epochs=1, verbose=0)  # a step either way


def test_onednn_enabled_matches_tensorflows_own_report():
    """`compat.onednn_enabled` is TensorFlow's own flag: a bool, True when TF_ENABLE_ONEDNN_OPTS
    forces oneDNN on in a fresh process and False when it forces it off."""
    import os
    import subprocess
    import sys

    code = "from keras_clip.compat import onednn_enabled; print(onednn_enabled())"
    for value, expected in (("1", "True"), ("0", "False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=value), check=True)
        assert out.stdout.strip().splitlines()[-1] == expected, (value, out.stdout, out.stderr)
