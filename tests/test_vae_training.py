"""dVAE training (issue 4, items 3–6): loss terms, schedules, fit, distribution, callback, CLI.

Loss values are checked against direct numpy computations on tiny inputs; the MirroredStrategy
test runs in a subprocess because logical CPU devices must be configured before TF initialises.
"""

import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dalle.vae.presets import PRESETS, dvae_from_preset, get_preset, get_training_preset
from keras_dalle.vae import (CodebookUsage, DiscreteVAE, VAETrainingSchedule, code_perplexity,
                             map_pixels, psnr)
from keras_dalle.vae.losses import (gaussian_nll, gumbel_softmax, kl_to_uniform, logit_laplace_nll,
                                    marginal_kl)
from keras_dalle.vae.schedule import cosine_schedule
from keras_dalle.vae.callbacks import (VAEReconstructionCallback, evaluate_reconstruction,
                                       image_grid)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=16, n_hid=8, group_count=2, n_blk_per_group=1, vocab_size=16, n_init=4)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _blocks(n, size=16, seed=0):
    """Simple synthetic images: a random flat background and one random flat rectangle."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        images[i] = rng.uniform(size=3)
        y, x = rng.integers(0, size // 2, size=2)
        h, w = rng.integers(size // 4, size // 2, size=2)
        images[i, y:y + h, x:x + w] = rng.uniform(size=3)
    return images


# --------------------------------------------------------------------------- loss terms
def test_logit_laplace_nll_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, size=(2, 3, 4)).astype(np.float32)
    mu = rng.normal(size=x.shape).astype(np.float32)
    log_b = rng.normal(scale=0.5, size=x.shape).astype(np.float32)
    b = np.exp(log_b.astype(np.float64))
    x64 = x.astype(np.float64)
    # f(x|μ,b) = 1 / (2 b x (1 − x)) · exp(−|logit(x) − μ| / b)
    density = 1.0 / (2 * b * x64 * (1 - x64)) * np.exp(-np.abs(np.log(x64 / (1 - x64)) - mu) / b)
    np.testing.assert_allclose(_np(logit_laplace_nll(x, mu, log_b)), -np.log(density),
                               rtol=1e-5, atol=1e-5)
    # One hand-checkable value: x = 1/2, μ = 0, b = 1 → −ln(1 / (2 · ¼)) = −ln 2.
    assert float(_np(logit_laplace_nll(0.5, 0.0, 0.0))) == pytest.approx(-math.log(2.0), abs=1e-6)


def test_logit_laplace_density_integrates_to_one():
    xs = np.linspace(1e-6, 1 - 1e-6, 400_001)
    nll = _np(logit_laplace_nll(xs.astype(np.float32), 0.3, math.log(0.7))).astype(np.float64)
    assert np.trapezoid(np.exp(-nll), xs) == pytest.approx(1.0, abs=2e-3)


def test_kl_to_uniform_is_log_k_minus_entropy():
    logits = np.array([[0.0, 0.0, 0.0, 0.0],   # uniform → 0
                       [100.0, 0.0, 0.0, 0.0],  # one-hot → ln 4
                       [1.0, 2.0, 3.0, 4.0]], np.float32)
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    entropy = -np.sum(np.where(q > 0, q * np.log(np.maximum(q, 1e-300)), 0.0), axis=1)
    kl = _np(kl_to_uniform(logits))
    np.testing.assert_allclose(kl, np.log(4.0) - entropy, atol=1e-5)
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] == pytest.approx(math.log(4), abs=1e-5)


def test_gumbel_softmax_with_given_noise_and_sampling():
    logits = np.log(np.array([[0.1, 0.2, 0.7]], np.float32))
    noise = np.array([[0.5, -0.2, 0.1]], np.float32)
    for tau in (1.0, 0.25):
        z = np.exp((logits + noise) / tau)
        np.testing.assert_allclose(_np(gumbel_softmax(logits, tau, noise=noise)),
                                   z / z.sum(-1, keepdims=True), rtol=1e-5)
    # At low temperature the samples are nearly one-hot with argmax ~ Categorical(softmax).
    tf.random.set_seed(0)
    z = _np(gumbel_softmax(np.repeat(logits, 20_000, axis=0), 1.0 / 16))
    assert np.mean(z.max(-1)) > 0.95
    freq = np.bincount(z.argmax(-1), minlength=3) / len(z)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.02)


def test_psnr_and_perplexity():
    x = np.zeros((2, 4, 4, 3), np.float32)
    y = x.copy()
    y[0] += 0.1        # MSE 0.01 → 20 dB
    y[1, 0, 0, 0] = 1  # MSE 1/48 → 10·log10(48)
    np.testing.assert_allclose(_np(psnr(x, y)), [20.0, 10 * np.log10(48)], rtol=1e-5)
    assert float(_np(code_perplexity([5.0, 5.0, 0.0, 0.0]))) == pytest.approx(2.0, rel=1e-5)
    assert float(_np(code_perplexity([1.0, 0.0, 0.0]))) == pytest.approx(1.0, rel=1e-5)


def test_loss_terms_normalisation():
    """reconstruction = NLL summed over pixels and channels, KL summed over token positions,
    both per image; loss = reconstruction + β·KL."""
    vae = DiscreteVAE(**TINY)
    images = _blocks(2)
    terms = vae.compute_loss_terms(images, temperature=1.0, kl_weight=2.5, relaxed=False)
    maps = _np(terms["maps"])
    x = _np(map_pixels(images))
    nll = _np(logit_laplace_nll(x, maps[..., :3], maps[..., 3:6])).sum(axis=(1, 2, 3))
    kl = _np(kl_to_uniform(terms["logits"])).sum(axis=(1, 2))
    np.testing.assert_allclose(_np(terms["reconstruction_loss"]), nll, rtol=1e-5)
    np.testing.assert_allclose(_np(terms["kl"]), kl, rtol=1e-5)
    np.testing.assert_allclose(_np(terms["loss"]), nll + 2.5 * kl, rtol=1e-5)
    assert terms["logits"].shape == (2, 8, 8, 16) and maps.shape == (2, 16, 16, 6)


# --------------------------------------------------------------------------- schedules
def test_cosine_schedules_start_middle_end():
    s = VAETrainingSchedule()  # the paper's
    assert float(s.temperature(0)) == pytest.approx(1.0)
    assert float(s.temperature(75_000)) == pytest.approx((1 + 1 / 16) / 2, rel=1e-6)
    assert float(s.temperature(150_000)) == pytest.approx(1 / 16)
    assert float(s.temperature(10 ** 6)) == pytest.approx(1 / 16)
    assert float(s.kl_weight(0)) == pytest.approx(0.0)
    assert float(s.kl_weight(2_500)) == pytest.approx(3.3, rel=1e-6)
    assert float(s.kl_weight(5_000)) == pytest.approx(6.6)
    assert float(s.kl_weight(123_456)) == pytest.approx(6.6)
    # a quarter of the way: end + (start − end)·½·(1 + cos(π/4))
    assert float(cosine_schedule(25, 1.0, 0.0, 100)) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)), rel=1e-6)
    assert float(cosine_schedule(5, 2.0, 3.0, 0)) == 3.0
    assert float(s.temperature(tf.constant(75_000, tf.int64))) == pytest.approx(0.53125)


def test_schedule_config_and_validation():
    vae = DiscreteVAE(**TINY, training_schedule=dict(temperature_steps=10, kl_weight_end=1.0))
    config = vae.get_config()
    assert config["training_schedule"]["temperature_steps"] == 10
    assert config["training_schedule"]["kl_weight_end"] == 1.0
    clone = DiscreteVAE.from_config(config)
    assert clone.training_schedule == vae.training_schedule
    assert json.loads(json.dumps(config["training_schedule"])) == config["training_schedule"]
    with pytest.raises(ValueError, match="Unknown training_schedule keys"):
        DiscreteVAE(**TINY, training_schedule=dict(tau=1.0))
    with pytest.raises(ValueError, match="temperature_end"):
        VAETrainingSchedule(temperature_end=0.0)
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        VAETrainingSchedule(kl_warmup_steps=-1)


def test_compile_rejects_loss_and_needs_scale_maps():
    vae = DiscreteVAE(**TINY)
    with pytest.raises(ValueError, match="computes its own loss"):
        vae.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="tracks its own metrics"):
        vae.compile(optimizer="adam", metrics=["mae"])
    with pytest.raises(ValueError, match="output_channels >= 2"):
        DiscreteVAE(**dict(TINY, output_channels=3)).compile(optimizer="adam")


def test_codebook_usage_window():
    m = CodebookUsage(vocab_size=4, window=2)
    m.update_state([1, 0, 0, 0])
    assert float(m.result()) == 0.25
    m.update_state([0, 2, 0, 0])
    assert float(m.result()) == 0.5
    m.update_state([0, 0, 0, 3])  # the first batch leaves the window
    assert float(m.result()) == 0.5
    m.reset_state()
    assert float(m.result()) == 0.0


# --------------------------------------------------------------------------- fit
# Tracing a train step is the slow part on a CPU, so one module-scoped run (uint8 dict batches,
# as the shapes / reader pipelines produce, plus the TensorBoard callback) serves several tests.
def _fit_vae(**schedule):
    keras.utils.set_random_seed(0)
    vae = DiscreteVAE(**TINY, training_schedule=dict(dict(temperature_steps=40,
                                                          kl_warmup_steps=20), **schedule))
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    return vae


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("vae_logs"))
    images = (_blocks(64) * 255).round().astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices({"images": images, "captions": ["x"] * 64})
    vae = _fit_vae()
    cb = VAEReconstructionCallback(logdir, images=images[:6], heldout=images[:24], batch_size=8,
                                   columns=3)
    history = vae.fit(ds.batch(16), epochs=6, verbose=0, callbacks=[cb], shuffle=False).history
    evaluation = vae.evaluate(ds.batch(32), verbose=0, return_dict=True)
    return dict(vae=vae, history=history, evaluation=evaluation, logdir=logdir, callback=cb,
                images=images)


def test_fit_reduces_loss_and_logs_metrics(fitted):
    vae, history = fitted["vae"], fitted["history"]
    assert set(history) == {"loss", "reconstruction_loss", "kl", "temperature", "kl_weight",
                            "psnr", "perplexity", "codebook_usage", "heldout_psnr",
                            "heldout_codebook_usage", "heldout_perplexity"}
    assert history["loss"][-1] < history["loss"][0]
    assert history["reconstruction_loss"][-1] < history["reconstruction_loss"][0]
    assert int(vae.optimizer.iterations.numpy()) == 24
    # temperature/kl_weight report the schedule at the step being taken (the last is step 23)
    assert history["temperature"][-1] == pytest.approx(float(vae.training_schedule.temperature(23)))
    assert history["kl_weight"][0] == pytest.approx(float(vae.training_schedule.kl_weight(3)))
    assert history["kl_weight"][-1] == pytest.approx(6.6)
    assert 0 < history["codebook_usage"][-1] <= 1 and 1 <= history["perplexity"][-1] <= 16
    assert all(np.isfinite(v).all() for v in history.values())
    ev = fitted["evaluation"]  # test_step: argmax tokens, current β
    assert ev["kl_weight"] == pytest.approx(6.6)
    assert ev["loss"] == pytest.approx(ev["reconstruction_loss"] + 6.6 * ev["kl"], rel=1e-4)


def test_batch_unpacking():
    vae = DiscreteVAE(**TINY)
    images = (_blocks(2) * 255).round().astype(np.uint8)
    expected = images.astype(np.float32) / 255
    for data in (images, (images,), (images, None), {"images": images, "captions": ["a", "b"]},
                 ({"images": images},)):
        np.testing.assert_allclose(_np(vae._images_from_data(data)), expected)
    with pytest.raises(ValueError, match="'images' entry"):
        vae._images_from_data({"pixels": images})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        vae._images_from_data(expected * 2)


def test_fit_and_evaluate_reject_float_images_outside_unit_range():
    # fit/evaluate batches are graph tensors, which _check_images cannot read: float 0..255
    # images used to train to a NaN loss and NaN weights without an error.
    vae = DiscreteVAE(**TINY)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.copy() for w in vae.get_weights()]
    images = (_blocks(4) * 255).round()  # float32 in 0..255
    message = r"images must be float in \[0, 1\].*uint8.*1/255.*min.*max"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        vae.fit(images, batch_size=4, epochs=1, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        vae.fit(tf.data.Dataset.from_tensor_slices({"images": images - 300}).batch(4), epochs=1,
                verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        vae.evaluate(images, batch_size=4, verbose=0)
    for a, b in zip(before, vae.get_weights()):
        np.testing.assert_array_equal(a, b)  # no step was applied
    # the same pixels as uint8 are scaled by 1/255 and train normally
    history = vae.fit(images.astype(np.uint8), batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert all(np.isfinite(w).all() for w in vae.get_weights())


def test_schedule_resumes_from_saved_model(fitted, tmp_path):
    vae = fitted["vae"]
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path)
    assert int(loaded.optimizer.iterations.numpy()) == 24
    history = loaded.fit(fitted["images"][:8], batch_size=8, epochs=1, verbose=0).history
    assert history["temperature"][0] == pytest.approx(float(vae.training_schedule.temperature(24)))
    assert int(loaded.optimizer.iterations.numpy()) == 25


# --------------------------------------------------------------------------- distribution
_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_dalle.vae import DiscreteVAE
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        vae = DiscreteVAE(image_size=16, n_hid=8, group_count=2, n_blk_per_group=1,
                          vocab_size=16, n_init=4,
                          training_schedule=dict(temperature_steps=10, kl_warmup_steps=5))
        vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).uniform(size=(16, 16, 16, 3)).astype("float32")
    before = [w.numpy().copy() for w in vae.trainable_weights]
    h = vae.fit(images, batch_size=8, epochs=2, verbose=0).history
    changed = any(not np.array_equal(b, w.numpy()) for b, w in zip(before, vae.trainable_weights))
    ev = vae.evaluate(images, batch_size=8, verbose=0, return_dict=True)
    print("RESULT " + json.dumps(dict(
        replicas=strategy.num_replicas_in_sync, steps=int(vae.optimizer.iterations.numpy()),
        changed=changed, history={k: [float(x) for x in v] for k, v in h.items()},
        evaluate={k: float(v) for k, v in ev.items()})))
""")


def test_mirrored_strategy_two_logical_cpus():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2 and result["steps"] == 4 and result["changed"]
    for values in result["history"].values():
        assert all(np.isfinite(values))
    assert 0 < result["history"]["codebook_usage"][-1] <= 1
    # last step taken is step 3 of a 5-step cosine warm-up: 6.6 · ½ · (1 − cos(3π/5))
    assert result["history"]["kl_weight"][-1] == pytest.approx(
        6.6 * 0.5 * (1 - math.cos(3 * math.pi / 5)), rel=1e-5)
    assert np.isfinite(result["evaluate"]["loss"])


# --------------------------------------------------------------------------- callback / tools
def test_image_grid_layout():
    a = np.zeros((3, 2, 2, 3), np.float32)
    b = np.ones((3, 2, 2, 3), np.float32)
    grid = image_grid(a, b, columns=2)
    assert grid.shape == (1, 8, 4, 3)
    np.testing.assert_array_equal(grid[0, 0:2], 0)      # originals row
    np.testing.assert_array_equal(grid[0, 2:4], 1)      # reconstructions row
    np.testing.assert_array_equal(grid[0, 4:6, 0:2], 0)  # third original, then padding
    np.testing.assert_array_equal(grid[0, 4:6, 2:4], 1)


def test_evaluate_reconstruction_matches_encode_decode():
    vae = DiscreteVAE(**TINY)
    images = _blocks(10)
    stats = evaluate_reconstruction(vae, (images * 255).round().astype(np.uint8), batch_size=4)
    x = np.round(images * 255) / 255
    recon = _np(vae.decode(vae.encode(x)))
    mse = np.mean((recon - x) ** 2, axis=(1, 2, 3))
    assert stats["psnr"] == pytest.approx(float(np.mean(10 * np.log10(1 / mse))), rel=1e-4)
    tokens = _np(vae.encode(x))
    assert stats["codes_used"] == len(np.unique(tokens))
    assert stats["codebook_usage"] == pytest.approx(len(np.unique(tokens)) / 16)
    assert stats["num_images"] == 10
    ds = tf.data.Dataset.from_tensor_slices({"images": x.astype(np.float32)}).batch(3)
    assert evaluate_reconstruction(vae, ds)["psnr"] == pytest.approx(stats["psnr"], rel=1e-4)


def _summaries(logdir):
    tags = {}
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(value)
    return tags


def test_callback_writes_image_grid_and_heldout_usage(fitted):
    history, cb = fitted["history"], fitted["callback"]
    assert len(history["heldout_psnr"]) == 6 and len(history["heldout_codebook_usage"]) == 6
    tags = _summaries(fitted["logdir"])
    assert len(tags["reconstructions"]) == 6
    tensor = tags["reconstructions"][0].tensor
    width, height = int(tensor.string_val[0]), int(tensor.string_val[1])
    assert (height, width) == (2 * 2 * 16, 3 * 16)  # 2 bands × (original + recon) rows, 3 cols
    assert {"heldout/psnr", "heldout/codebook_usage", "heldout/perplexity"} <= set(tags)
    assert cb.last_stats["num_images"] == 24
    assert history["heldout_psnr"][-1] == pytest.approx(cb.last_stats["psnr"])


# --------------------------------------------------------------------------- presets & CLI
def test_presets():
    assert set(PRESETS) >= {"openai", "dvae-shapes"}
    openai = dvae_from_preset("openai")
    openai.build()
    assert openai.encoder.count_params() == 53_786_240
    assert openai.decoder.count_params() == 43_829_766
    assert openai.training_schedule == VAETrainingSchedule()
    shapes = dvae_from_preset("dvae-shapes")
    # README: 64×64 → 16×16 tokens, K = 512, 92,958 parameters.
    assert shapes.image_size == 64 and shapes.token_grid_size == 16
    assert shapes.vocab_size == 512
    shapes.build()
    assert shapes.count_params() == 92_958
    tiny = dvae_from_preset("dvae-tiny", training_schedule=dict(kl_weight_end=1.0))
    assert tiny.training_schedule.kl_weight_end == 1.0
    assert tiny.training_schedule.temperature_steps == get_preset("dvae-tiny")[
        "training_schedule"]["temperature_steps"]
    eight = dvae_from_preset("dvae-shapes-8x8")  # README: the DALL·E demo's, 8×8 tokens
    assert (eight.image_size, eight.token_grid_size, eight.vocab_size) == (64, 8, 512)
    eight.build()
    assert eight.count_params() == 243_678
    assert get_training_preset("dvae-shapes-8x8") == get_training_preset("dvae-shapes")
    demo = get_training_preset("dvae-shapes")  # README: 5 epochs × 220 steps × batch 8
    assert (demo["epochs"], demo["steps_per_epoch"], demo["batch_size"]) == (5, 220, 8)
    get_preset("openai")["n_hid"] = 1  # copies
    assert PRESETS["openai"]["n_hid"] == 256
    with pytest.raises(ValueError, match="Available presets"):
        get_preset("nope")


def test_train_vae_cli_on_shapes(tmp_path, capsys):
    from keras_dalle.vae import train as train_vae

    out = tmp_path / "models" / "vae.keras"
    logdir = tmp_path / "logs"
    assert train_vae.main(["--data", "shapes", "--preset", "dvae-tiny", "--epochs", "1",
                           "--batch-size", "4", "--steps-per-epoch", "2",
                           "--num-train-examples", "32", "--heldout-examples", "8",
                           "--logdir", str(logdir), "--out", str(out), "--verbose", "0"]) == 0
    text = capsys.readouterr().out
    assert "trained 2 steps" in text
    assert "held-out (8 images): PSNR" in text and "codebook usage" in text
    assert out.exists() and os.listdir(out.parent) == ["vae.keras"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask
    loaded = keras.saving.load_model(str(out))
    assert loaded.image_size == 16 and int(loaded.optimizer.iterations.numpy()) == 2
    tags = _summaries(str(logdir))
    assert "reconstructions" in tags and "epoch_loss" in tags and "heldout/psnr" in tags


def test_save_model_atomic_cleans_up_on_failure(tmp_path):
    from keras_clip.saving import save_model_atomic

    class Broken:
        def save(self, path, overwrite=True):
            with open(path, "w") as f:
                f.write("partial")
            raise RuntimeError("disk full")

    target = tmp_path / "vae.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        save_model_atomic(Broken(), str(target))
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["vae.keras"]
    with pytest.raises(ValueError, match=".keras"):
        save_model_atomic(Broken(), str(tmp_path / "vae.h5"))


def test_marginal_kl_is_the_usage_part_of_the_kl():
    """Σ_t KL(q_t ‖ u) = h·w·KL(q̄ ‖ u) + Σ_t KL(q_t ‖ q̄) (over a batch of one image)."""
    logits = np.random.default_rng(0).normal(scale=2.0, size=(1, 2, 3, 5)).astype(np.float32)
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q_bar = q.reshape(-1, 5).mean(0)
    mutual_information = np.sum(q * np.log(q / q_bar))
    total = _np(kl_to_uniform(logits)).sum()
    assert float(_np(marginal_kl(logits))) == pytest.approx(total - mutual_information, rel=1e-4)
    assert float(_np(marginal_kl(np.zeros((2, 2, 2, 4), np.float32)))) == pytest.approx(0, abs=1e-6)
    # one-hot on the same code everywhere: h·w·ln K
    peaked = np.zeros((2, 2, 2, 4), np.float32)
    peaked[..., 1] = 50.0
    assert float(_np(marginal_kl(peaked))) == pytest.approx(4 * math.log(4), rel=1e-4)


def test_gaussian_reconstruction_option():
    x = np.array([0.2, 0.5], np.float32)
    mean = np.array([0.25, 0.5], np.float32)
    sigma = 0.1
    expected = (x - mean) ** 2 / (2 * sigma ** 2) + np.log(sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(_np(gaussian_nll(x, mean, sigma)), expected, rtol=1e-5)
    vae = DiscreteVAE(**TINY, reconstruction_loss="gaussian", reconstruction_sigma=sigma)
    images = _blocks(2)
    terms = vae.compute_loss_terms(images, 1.0, 0.0, relaxed=False)
    mu = _np(terms["maps"])[..., :3]
    nll = _np(gaussian_nll(_np(map_pixels(images)), 1 / (1 + np.exp(-mu)), sigma))
    np.testing.assert_allclose(_np(terms["reconstruction_loss"]), nll.sum(axis=(1, 2, 3)),
                               rtol=1e-5)
    config = vae.get_config()
    assert config["reconstruction_loss"] == "gaussian" and config["reconstruction_sigma"] == 0.1
    with pytest.raises(ValueError, match="reconstruction_loss"):
        DiscreteVAE(**TINY, reconstruction_loss="l2")
    with pytest.raises(ValueError, match="reconstruction_sigma"):
        DiscreteVAE(**TINY, reconstruction_sigma=0)


def test_loss_includes_weighted_marginal_kl():
    vae = DiscreteVAE(**TINY, training_schedule=dict(marginal_kl_weight=3.0))
    images = _blocks(2)
    terms = vae.compute_loss_terms(images, 1.0, 0.5, relaxed=False)
    expected = (_np(terms["reconstruction_loss"]) + 0.5 * _np(terms["kl"])
                + 3.0 * float(_np(marginal_kl(terms["logits"]))))
    np.testing.assert_allclose(_np(terms["loss"]), expected, rtol=1e-5)


def test_file_data_is_decoded_resized_and_split(tmp_path):
    """A TSV of image files (readers): held-out = the first images, training = the rest."""
    from PIL import Image

    from keras_dalle.vae.train import heldout_images, vae_dataset

    rows = ["filepath\ttitle"]
    for i in range(5):
        pixels = np.full((24, 40, 3), 40 * i, np.uint8)  # non-square: resized + centre-cropped
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png\timage {i}")
    (tmp_path / "data.tsv").write_text("\n".join(rows) + "\n")
    source = str(tmp_path / "data.tsv")
    held = heldout_images(source, image_size=16, num_examples=2)
    assert held.shape == (2, 16, 16, 3) and held.dtype == np.float32
    np.testing.assert_allclose(held[:, 8, 8, 0], [0.0, 40 / 255], atol=1e-6)
    ds = vae_dataset(source, batch_size=3, image_size=16, skip=2, repeat=False, shuffle=False)
    batches = [b.numpy() for b in ds]
    assert len(batches) == 1 and batches[0].shape == (3, 16, 16, 3)
    np.testing.assert_allclose(batches[0][:, 0, 0, 0], np.array([80, 120, 160]) / 255, atol=1e-6)
