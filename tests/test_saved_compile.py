"""A saved, trained CLIP / dVAE / DALL·E loads compiled: `keras.saving.load_model` → `fit` with
no compile() call, the optimizer's state (iteration count, moments) restored, no "compile() was
not called" warning; CLIP keeps `xla_towers` and its weight-decay exclusions."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip
from keras_clip.compat import weight_decay_excluded
from keras_clip.optimizer import clip_optimizer, no_decay_variables
from keras_dalle import DALLE, dvae_from_preset


def _clip():
    model = keras_clip.CLIP.from_preset("ViT-Tiny")
    rng = np.random.default_rng(0)
    batch = {"images": rng.integers(0, 256, (4, 32, 32, 3)).astype("uint8"),
             "token_ids": keras_clip.tokenize(["a red circle", "a blue square", "a green star",
                                                "a yellow diamond"],
                                               context_length=model.context_length)}
    model.compile(clip_optimizer(model, total_steps=100, learning_rate=1e-3, warmup_steps=5),
                  xla_towers=False)
    return model, batch


def _dvae():
    model = dvae_from_preset("dvae-tiny")
    batch = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    model.compile(keras.optimizers.Adam(1e-3))
    return model, batch


def _dalle():
    model = DALLE.from_preset("dalle-tiny")
    rng = np.random.default_rng(0)
    batch = {"text_token_ids": rng.integers(0, model.text_vocab_size, (4, model.text_len)).astype("int32"),
             "image_tokens": rng.integers(0, model.image_vocab_size,
                                          (4, model.grid_height, model.grid_width)).astype("int32")}
    model.compile(keras.optimizers.Adam(1e-3), xla=False)
    return model, batch


def _load(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "compile" in m or "Skipping variable loading" in m], messages
    return loaded


def _fit_save_load(build, tmp_path):
    keras.utils.set_random_seed(0)
    model, batch = build()
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)

    loaded = _load(path)
    assert loaded.compiled and type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations.numpy()) == 3
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    loaded.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # no compile() call
    assert int(loaded.optimizer.iterations.numpy()) == 5
    return model, loaded, data


@pytest.mark.parametrize("build", [_dvae, _dalle], ids=["dvae", "dalle"])
def test_saved_model_loads_compiled_and_fit_resumes(build, tmp_path):
    _fit_save_load(build, tmp_path)


def test_saved_clip_loads_compiled_and_trains_exactly_as_the_saved_one(tmp_path):
    model, loaded, data = _fit_save_load(_clip, tmp_path)
    assert loaded.xla_towers is False
    # open_clip's exclusions (gains, biases, embeddings, logit_scale) survive the round trip.
    expected = {v.path for v in no_decay_variables(loaded)}
    assert expected and {v.path for v in weight_decay_excluded(loaded.optimizer,
                                                               loaded.trainable_variables)} == expected
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_clip_xla_towers_default_is_restored(tmp_path):
    model = keras_clip.CLIP.from_preset("ViT-Tiny")
    model.compile(keras.optimizers.SGD(0.1))
    model.save(tmp_path / "clip.keras")
    loaded = _load(tmp_path / "clip.keras")
    assert loaded.xla_towers == "auto" and "no_weight_decay" not in loaded.get_compile_config()


@pytest.mark.parametrize("build", [
    lambda: keras_clip.CLIP.from_preset("ViT-Tiny"),
    lambda: dvae_from_preset("dvae-tiny"),
    lambda: DALLE.from_preset("dalle-tiny"),
], ids=["clip", "dvae", "dalle"])
def test_an_uncompiled_model_loads_uncompiled(build, tmp_path):
    model = build()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert not loaded.compiled and getattr(loaded, "optimizer", None) is None
