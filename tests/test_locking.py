"""Tower locking (LiT) with open_clip's names: locked variables are bit-identical after fit
(BatchNorm statistics too when frozen), the unlocked groups train, bad requests are named, and
the training CLI's --init-from / --lock-image run a LiT fine-tune."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.locking import image_tower_groups, text_tower_groups
from keras_clip.model import CLIP
from keras_clip.optimizer import clip_optimizer


def _data(model, n=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, model.context_length), np.int32)
    ids[:, 0], ids[:, 2] = 49406, 49407
    ids[:, 1] = rng.integers(1, 40000, n)
    images = rng.standard_normal((n, model.image_size, model.image_size, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices({"images": images, "token_ids": ids}).batch(4)


def _fit(model, steps=2):
    # AdamW with weight decay: a locked variable handed to the optimizer would still decay.
    model.compile(optimizer=clip_optimizer(model, total_steps=steps, learning_rate=1e-2,
                                           warmup_steps=0), xla_towers=False, jit_compile=False)
    snapshot = {v.path: v.numpy().copy() for v in model.weights}
    model.fit(_data(model).repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    return {path: np.array_equal(before, _value(model, path)) for path, before in snapshot.items()}


def _value(model, path):
    return next(v.numpy() for v in model.weights if v.path == path)


def _paths(model, prefix):
    return [v.path for v in model.weights if v.path.split("/", 1)[-1].startswith(prefix)]


def test_locked_image_tower_is_bit_identical_and_the_text_tower_trains():
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny").lock_image_tower()
    assert model.image_tower_locked
    same = _fit(model)
    assert all(same[p] for p in _paths(model, "visual/"))
    text = _paths(model, "text/")
    assert sum(not same[p] for p in text) >= 0.9 * len(text)
    assert not same[_paths(model, "logit_scale")[0]]


def test_unlocked_groups_are_counted_from_the_output_end():
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny")  # 2 blocks: stem, block 0, [block 1 + ln_post], proj
    assert len(image_tower_groups(model)) == model.vision_layers + 2
    model.lock_image_tower(unlocked_groups=2)
    assert not model.image_tower_locked
    same = _fit(model)
    unlocked = [p for p in _paths(model, "visual/")
                if "resblocks_1/" in p or "ln_post" in p or p.endswith("visual/proj")]
    assert len(unlocked) == 19  # block 1's 16 tensors, ln_post's 2, proj
    for path in _paths(model, "visual/"):
        assert same[path] == (path not in unlocked), path  # the rest is bit-identical


def test_text_lock_keeps_layer_norms_trainable_only_when_asked():
    model = CLIP.from_preset("ViT-Tiny")
    assert len(text_tower_groups(model)) == model.text_layers + 2
    model.lock_text_tower(unlocked_layers=1)
    trainable = {v.path.split("/", 1)[-1] for v in model.trainable_weights}
    assert "text/text_projection" in trainable
    assert not any(p.startswith("text/") and p != "text/text_projection" for p in trainable)
    model = CLIP.from_preset("ViT-Tiny").lock_text_tower(freeze_layer_norm=False)
    text_trainable = [v.path for v in model.trainable_weights if v.path.split("/", 1)[-1].startswith("text/")]
    assert text_trainable and all("ln" in p for p in text_trainable), text_trainable
    assert not model.text_tower_locked  # its LayerNorms still train: not a frozen tower


@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_resnet_batch_norm_statistics_freeze_only_when_asked(freeze_bn_stats):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("RN-Tiny").lock_image_tower(freeze_bn_stats=freeze_bn_stats)
    same = _fit(model)
    stats = [p for p in _paths(model, "visual/") if "moving_" in p]
    params = [p for p in _paths(model, "visual/") if "moving_" not in p]
    assert stats and params
    assert all(same[p] for p in params)
    assert all(same[p] for p in stats) == freeze_bn_stats
    if not freeze_bn_stats:
        assert not any(same[p] for p in stats)


def test_locking_more_groups_than_exist_is_an_error():
    model = CLIP.from_preset("ViT-Tiny")
    with pytest.raises(ValueError, match=r"cannot leave 5 groups of the image tower unlocked: it "
                                         r"has 4 \(0 locks it whole\)"):
        model.lock_image_tower(unlocked_groups=5)
    with pytest.raises(ValueError, match=r"cannot leave 9 groups of the text tower unlocked"):
        model.lock_text_tower(unlocked_layers=9)
    with pytest.raises(ValueError, match=r"must be an int >= 0, got -1"):
        model.lock_image_tower(unlocked_groups=-1)


def test_lit_fine_tune_from_a_keras_model_with_the_training_api(tmp_path):
    from keras_clip.train import train_clip
    keras.utils.set_random_seed(0)
    start = CLIP.from_preset("ViT-Tiny")
    path = str(tmp_path / "start.keras")
    start.save(path)
    model, history = train_clip(init_from=path, data="shapes", epochs=1, steps_per_epoch=2,
                                batch_size=8, logdir=str(tmp_path / "logs"), eval_examples=0,
                                lock_image=True, accum_freq=2, xla=False, verbose=0)
    assert history["steps_run"] == 2
    for a, b in zip(start.weights, model.weights):
        assert a.path.split("/", 1)[-1] == b.path.split("/", 1)[-1]
        if a.path.split("/", 1)[-1].startswith("visual/"):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(start.text.text_projection.numpy(), model.text.text_projection.numpy())


def test_init_from_with_siglip_adds_the_bias_and_resets_the_scale(tmp_path):
    from keras_clip.train import train_clip
    start = CLIP.from_preset("ViT-Tiny")
    path = str(tmp_path / "start.keras")
    start.save(path)
    model, _ = train_clip(init_from=path, data="shapes", epochs=1, steps_per_epoch=1, batch_size=4,
                          logdir=str(tmp_path / "logs"), eval_examples=0, loss="siglip",
                          learning_rate=1e-9, xla=False, verbose=0)
    assert model.logit_bias is not None and abs(float(model.logit_bias.numpy()) + 10) < 1e-3
    assert abs(float(model.logit_scale.numpy()) - np.log(10)) < 1e-3
    np.testing.assert_allclose(model.visual.proj.numpy(), start.visual.proj.numpy(), atol=1e-6)


def test_accum_freq_that_does_not_divide_the_global_batch_is_named(tmp_path):
    from keras_clip.train import train_clip
    with pytest.raises(ValueError, match=r"accum_freq 3 x 1 replica\(s\) does not divide the batch "
                                         r"size 8"):
        train_clip(preset="ViT-Tiny", epochs=1, steps_per_epoch=1, batch_size=8, accum_freq=3,
                   logdir=str(tmp_path), eval_examples=0, verbose=0)


def test_a_saved_locked_model_reloads_locked_with_its_optimizer_state(tmp_path):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny").lock_image_tower(unlocked_groups=2)
    model.lock_text_tower(unlocked_layers=1)
    _fit(model)
    path = str(tmp_path / "locked.keras")
    model.save(path)
    back = keras.saving.load_model(path)
    assert back.locks == {"image": [2, False], "text": [1, True]}
    assert [v.path for v in back.trainable_weights] == [v.path for v in model.trainable_weights]
    assert int(back.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 2
    for a, b in zip(model.optimizer.variables, back.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_loss_defaults_to_the_starting_models(tmp_path):
    from keras_clip.train import train_clip
    import math
    start = CLIP.from_preset("ViT-Tiny", logit_bias_init=-10.0, logit_scale_init=math.log(10))
    path = str(tmp_path / "siglip.keras")
    start.save(path)
    model, _ = train_clip(init_from=path, data="shapes", epochs=1, steps_per_epoch=1,
                          batch_size=4, logdir=str(tmp_path / "logs"), eval_examples=0,
                          xla=False, verbose=0)
    assert model.clip_loss == "siglip"


def test_unlocking_every_group_warns_that_nothing_was_locked(capsys):
    # Was (new-user trial): --lock-image --lock-image-unlocked-groups N with N = all groups ran
    # with nothing locked and said only "0 of ... weight tensors locked".
    from keras_clip.train import lock_towers

    model = CLIP.from_preset("ViT-Tiny")
    n_image, n_text = len(image_tower_groups(model)), len(text_tower_groups(model))
    summary = lock_towers(model, lock_image=True, lock_image_unlocked_groups=n_image,
                          lock_text=True, lock_text_unlocked_layers=n_text)
    out = capsys.readouterr().out
    assert summary.startswith("0 of ")
    assert (f"warning: --lock-image-unlocked-groups {n_image} leaves all {n_image} groups of the "
            f"image tower unlocked: nothing of the image tower is locked" in out)
    assert (f"warning: --lock-text-unlocked-layers {n_text} leaves all {n_text} groups of the "
            f"text tower unlocked: nothing of the text tower is locked" in out)
    # One group fewer locks something: no warning.
    model = CLIP.from_preset("ViT-Tiny")
    summary = lock_towers(model, lock_image=True, lock_image_unlocked_groups=n_image - 1,
                          lock_text=True, lock_text_unlocked_layers=n_text - 1)
    assert "warning" not in capsys.readouterr().out and not summary.startswith("0 of ")
