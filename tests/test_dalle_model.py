"""DALL·E transformer: stream layout, pads, loss, causality, sparse = dense, training, saving,
parameter counts, MirroredStrategy equivalence, input errors."""

import inspect
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dalle.transformer.presets import DEFAULTS, dalle_param_count, get_dalle_preset
from keras_dalle.transformer.model import DALLE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "dalle_sgd_step.py")
N_TEXT, H, W, VT, VI = 8, 4, 4, 64, 16  # dalle-tiny


def _batch(seed=0, batch=2, pads_from=5):
    rng = np.random.default_rng(seed)
    text = rng.integers(1, VT, (batch, N_TEXT)).astype("int32")
    text[:, pads_from:] = 0
    image = rng.integers(0, VI, (batch, H, W)).astype("int32")
    return text, image


def _logits(model, text, image):
    out = model({"text_token_ids": text, "image_tokens": image})
    return out["text_logits"].numpy(), out["image_logits"].numpy()


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    model = DALLE.from_preset("dalle-tiny")
    # Random (not near-zero) embeddings so that every input visibly moves the outputs.
    for seed, w in enumerate((model.pad_embedding, model.text_token_embedding,
                              model.image_token_embedding)):
        w.assign(np.random.default_rng(seed).normal(size=w.shape).astype("float32"))
    return model


def test_output_shapes_and_per_modality_heads(tiny):
    text, image = _batch()
    text_logits, image_logits = _logits(tiny, text, image)
    assert text_logits.shape == (2, N_TEXT - 1, VT) and text_logits.dtype == np.float32
    assert image_logits.shape == (2, H * W, VI)
    # A flat [B, h·w] grid in raster order is the same input.
    np.testing.assert_allclose(_logits(tiny, text, image.reshape(2, -1))[1], image_logits,
                               atol=1e-6)
    assert tiny.sequence_length == N_TEXT + H * W


def test_pad_embedding_replaces_token_embedding_at_pad_positions():
    keras.utils.set_random_seed(0)
    model = DALLE.from_preset("dalle-tiny")
    text, image = _batch(pads_from=5)
    base = _logits(model, text, image)
    # A random direction (a constant shift would vanish in the LayerNorms).
    delta = np.random.default_rng(2).normal(size=model.width).astype("float32")
    emb = model.text_token_embedding.numpy()
    # The pad id's token embedding is not used where the token is a pad …
    changed = emb.copy()
    changed[0] += delta
    model.text_token_embedding.assign(changed)
    for a, b in zip(base, _logits(model, text, image)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    model.text_token_embedding.assign(emb)
    pad = model.pad_embedding.numpy()
    # … the pad embedding of a non-pad position is not used either …
    changed = pad.copy()
    changed[2] += delta
    model.pad_embedding.assign(changed)
    for a, b in zip(base, _logits(model, text, image)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # … but the pad embedding of pad position 6 is (outputs from position 6 on change).
    changed = pad.copy()
    changed[6] += delta
    model.pad_embedding.assign(changed)
    text_logits, image_logits = _logits(model, text, image)
    model.pad_embedding.assign(pad)
    np.testing.assert_allclose(text_logits[:, :6], base[0][:, :6], atol=1e-6)
    assert np.abs(text_logits[:, 6] - base[0][:, 6]).max() > 1e-3
    assert np.abs(image_logits - base[1]).max() > 1e-3


def _cross_entropy(logits, targets):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean()


@pytest.mark.parametrize("weights", [(0.125, 0.875), (0.3, 0.7)])
def test_loss_matches_numpy(weights):
    keras.utils.set_random_seed(0)
    model = DALLE.from_preset("dalle-tiny", text_loss_weight=weights[0],
                              image_loss_weight=weights[1])
    text, image = _batch(batch=3)
    text_logits, image_logits = _logits(model, text, image)
    text_ce = _cross_entropy(text_logits, text[:, 1:])
    image_ce = _cross_entropy(image_logits, image.reshape(3, -1))
    loss, text_loss, image_loss = model.compute_losses(tf.constant(text),
                                                       tf.constant(image.reshape(3, -1)))
    assert float(text_loss) == pytest.approx(text_ce, rel=1e-5)
    assert float(image_loss) == pytest.approx(image_ce, rel=1e-5)
    assert float(loss) == pytest.approx(weights[0] * text_ce + weights[1] * image_ce, rel=1e-5)
    # evaluate (test_step) reports the same numbers.
    model.compile(keras.optimizers.SGD(0.1))
    logs = model.evaluate({"text_token_ids": text, "image_tokens": image}, batch_size=3,
                          verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert logs["image_loss"] == pytest.approx(image_ce, rel=1e-5)


@pytest.mark.parametrize("impl", ["sparse", "masked_dense"])
def test_causal(tiny, impl):
    model = DALLE.from_config(dict(tiny.get_config(), attention_impl=impl))
    model.set_weights(tiny.get_weights())
    text, image = _batch(pads_from=6)
    base_text, base_image = _logits(model, text, image)
    # Stream position p: text index p (p < n); image input img_j sits at position n + 1 + j.
    for t in (2, 5, 7):
        changed = text.copy()
        changed[:, t] = (changed[:, t] + 7) % VT
        text_logits, image_logits = _logits(model, changed, image)
        np.testing.assert_allclose(text_logits[:, :t], base_text[:, :t], atol=1e-5)
        assert np.abs(image_logits - base_image).max() > 1e-4, t  # image positions see all text
    for j in (0, 5, 14):
        changed = image.reshape(2, -1).copy()
        changed[:, j] = (changed[:, j] + 3) % VI
        text_logits, image_logits = _logits(model, text, changed)
        np.testing.assert_allclose(text_logits, base_text, atol=1e-5)
        np.testing.assert_allclose(image_logits[:, :j + 1], base_image[:, :j + 1], atol=1e-5)
        assert np.abs(image_logits[:, j + 1:] - base_image[:, j + 1:]).max() > 1e-4
    # The last image token is only a target.
    changed = image.reshape(2, -1).copy()
    changed[:, -1] = (changed[:, -1] + 1) % VI
    np.testing.assert_allclose(_logits(model, text, changed)[1], base_image, atol=1e-6)


def test_sparse_equals_masked_dense(tiny):
    dense = DALLE.from_config(dict(tiny.get_config(), attention_impl="masked_dense"))
    dense.set_weights(tiny.get_weights())
    assert tiny.attention_impl == "sparse"
    text, image = _batch(seed=3, batch=3)
    for a, b in zip(_logits(tiny, text, image), _logits(dense, text, image)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_schedule_and_config_round_trip():
    model = DALLE.from_preset("dalle-tiny")
    assert model.attention_schedule == ["row", "column", "conv"]  # the paper's, for 3 layers
    kernels = [b.attn.attention_kernel for b in model.blocks]
    assert [k.pattern for k in kernels] == model.attention_schedule
    config = model.get_config()
    params = set(inspect.signature(DALLE.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config)
    assert DALLE.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="attention_schedule"):
        DALLE.from_preset("dalle-tiny", attention_schedule=["row", "diagonal", "conv"])
    with pytest.raises(ValueError, match="attention_impl"):
        DALLE.from_preset("dalle-tiny", attention_impl="flash")


@pytest.mark.parametrize("xla", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["plain", "xla"])
def test_fit_decreases_loss_on_a_repeated_batch(xla):
    # (XLA compilation of the step takes ~20-60 s on the busy CPU: slow.)
    keras.utils.set_random_seed(0)
    model = DALLE.from_preset("dalle-tiny")
    model.compile(keras.optimizers.Adam(3e-3), xla=xla)
    text, image = _batch(batch=4)
    ds = tf.data.Dataset.from_tensors({"text_token_ids": text, "image_tokens": image}).repeat()
    history = model.fit(ds, steps_per_epoch=8, epochs=2, verbose=0).history
    assert set(history) >= {"loss", "text_loss", "image_loss"}
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["image_loss"][-1] < history["image_loss"][0]
    assert history["text_loss"][-1] < history["text_loss"][0]


def test_zero_text_loss_weight_trains_only_the_image_loss_and_leaves_the_text_head():
    keras.utils.set_random_seed(0)
    model = DALLE.from_preset("dalle-tiny", text_loss_weight=0.0, image_loss_weight=1.0)
    reference = DALLE.from_preset("dalle-tiny", text_loss_weight=0.0, image_loss_weight=1.0)
    reference.set_weights(model.get_weights())
    text, image = _batch(batch=4)
    loss, text_loss, image_loss = model.compute_losses(tf.constant(text), tf.constant(
        image.reshape(4, -1)))
    assert float(text_loss) == 0.0 and float(loss) == pytest.approx(float(image_loss))
    assert not any("text_head" in v.path for v in model.trainable_variables)
    head = [w.numpy().copy() for w in model.text_head.weights]
    model.compile(keras.optimizers.Adam(3e-3), xla=False)
    ds = tf.data.Dataset.from_tensors({"text_token_ids": text, "image_tokens": image}).repeat()
    history = model.fit(ds, steps_per_epoch=6, epochs=1, verbose=0).history
    assert history["text_loss"] == [0.0]
    for before, after in zip(head, model.text_head.weights):
        np.testing.assert_array_equal(before, after.numpy())
    # The image logits do not depend on the text head: the same as a model that computes both.
    a = model.logits(tf.constant(text), tf.constant(image.reshape(4, -1)), with_text=False)[1]
    b = model.logits(tf.constant(text), tf.constant(image.reshape(4, -1)))[1]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="must be >= 0"):
        DALLE.from_preset("dalle-tiny", text_loss_weight=-1.0)


def test_save_load_round_trip(tiny, tmp_path):
    path = tmp_path / "dalle.keras"
    tiny.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DALLE) and loaded.get_config() == tiny.get_config()
    text, image = _batch(seed=5)
    for a, b in zip(_logits(tiny, text, image), _logits(loaded, text, image)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True}, {"mlp_ratio": 2.0}])
def test_param_count_matches_built_tiny(overrides):
    config = dict(get_dalle_preset("dalle-tiny"), **overrides)
    assert dalle_param_count(config) == DALLE(**config).count_params()


def test_param_count_shapes_preset_and_defaults():
    config = get_dalle_preset("dalle-shapes")
    # README: 16 text + 8×8 image tokens, width 256, 4 layers, no text loss.
    assert (config["text_len"], config["grid_height"], config["grid_width"]) == (16, 8, 8)
    assert (config["width"], config["num_layers"], config["text_loss_weight"]) == (256, 4, 0.0)
    assert dalle_param_count(config) == DALLE(**config).count_params()
    signature = inspect.signature(DALLE.__init__).parameters
    assert all(signature[k].default == v for k, v in DEFAULTS.items())
    # README ("Transformer"): 256 text + 32×32 image tokens, loss 1/8 text + 7/8 image,
    # conv 11×11.
    assert (DEFAULTS["text_len"], DEFAULTS["grid_height"], DEFAULTS["grid_width"]) == (256, 32, 32)
    assert (signature["text_loss_weight"].default, signature["image_loss_weight"].default) == \
        (1 / 8, 7 / 8)
    assert signature["kernel_size"].default == 11


def test_param_count_of_the_paper_model_is_12_billion():
    config = get_dalle_preset("dalle-12b")
    assert (config["width"], config["num_heads"], config["num_layers"]) == (3968, 62, 64)
    assert config["text_len"] + config["grid_height"] * config["grid_width"] == 1280
    assert (config["text_vocab_size"], config["image_vocab_size"]) == (16384, 8192)
    # README: 12.195e9 tied (+1.6% over 12B), 12.29e9 untied.
    count = dalle_param_count(config)
    assert count == 12_195_294_848 and config["tie_embeddings"]
    assert round(100 * (count / 12.0e9 - 1), 1) == 1.6
    assert dalle_param_count(dict(config, tie_embeddings=False)) == 12_292_836_992


def test_training_cli_defaults_are_the_readme_demo():
    from keras_dalle.transformer.train import _parser

    # README ("Transformer"): dalle-shapes, 5 × 100 steps × batch 32 on 20,000 examples
    # (make demo-dalle-train adds --max-objects 1).
    args = _parser().parse_args(["--vae", "dvae.keras"])
    assert (args.preset, args.epochs, args.steps_per_epoch, args.batch_size, args.num_examples,
            args.max_objects) == ("dalle-shapes", 5, 100, 32, 20_000, None)


def test_every_shapes_caption_fits_the_dalle_shapes_text_stream():
    """README: every shapes caption is at most 14 tokens with SOT/EOT (all captions the
    grammar can produce), so dalle-shapes' 16 text positions hold every one."""
    from keras_clip.data.shapes import COLOURS, RELATIONS, SHAPES, SIZES
    from keras_clip.text.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    objects = [f"a {size} {colour} {shape}"
               for size in SIZES for colour in COLOURS for shape in SHAPES]
    captions = objects + [f"{a} {r} {b}" for a in objects for r in RELATIONS for b in objects]
    longest = max(len(tok.encode(c)) + 2 for c in captions)
    assert len(captions) == 60 + 60 * 4 * 60
    assert longest == 14
    assert longest <= get_dalle_preset("dalle-shapes")["text_len"]


def test_mixed_precision_logits_and_loss_are_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = DALLE.from_preset("dalle-tiny")
        text, image = _batch()
        text_logits, image_logits = _logits(model, text, image)
        loss = model.compute_losses(tf.constant(text), tf.constant(image.reshape(2, -1)))[0]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.blocks[0].compute_dtype == "bfloat16"
    assert text_logits.dtype == image_logits.dtype == np.float32
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))


@pytest.mark.parametrize("field, value, match", [
    ("text_token_ids", np.zeros((2, 9), "int32"), r"text_token_ids must have shape \(B, 8\)"),
    ("text_token_ids", np.zeros((2, 8), "float32"), "text_token_ids must be integer"),
    ("text_token_ids", np.full((2, 8), 64, "int32"), r"text_token_ids must be in \[0, 64\)"),
    ("image_tokens", np.zeros((2, 4, 5), "int32"), r"image_tokens must have shape \(B, 4, 4\) "
                                                   r"or \(B, 16\)"),
    ("image_tokens", np.full((2, 16), -1, "int32"), r"image_tokens must be in \[0, 16\)"),
])
def test_bad_inputs_raise_named_errors(tiny, field, value, match):
    text, image = _batch()
    inputs = {"text_token_ids": text, "image_tokens": image, field: value}
    with pytest.raises(ValueError, match=match):
        tiny(inputs)


def test_bad_inputs_in_fit(tiny):
    with pytest.raises(ValueError, match="'text_token_ids' and 'image_tokens'"):
        tiny({"token_ids": np.zeros((2, 8), "int32")})
    model = DALLE.from_preset("dalle-tiny")
    model.compile(keras.optimizers.SGD(0.1), xla=False)
    text, image = _batch()
    image[0, 0, 0] = VI  # out of range: only visible at run time in a graph
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_tokens must be < 16"):
        model.fit({"text_token_ids": text, "image_tokens": image}, batch_size=2, verbose=0)


def test_token_dataset_from_shapes_with_a_dvae():
    from keras_dalle.transformer.data import dalle_dataset, encode_token_arrays, unigram_entropy
    from keras_dalle.vae.presets import dvae_from_preset

    keras.utils.set_random_seed(0)
    vae = dvae_from_preset("dvae-tiny")
    ds = dalle_dataset("shapes", 8, vae, text_len=16, split="val", num_examples=16)
    arrays = encode_token_arrays(ds)
    assert arrays["text_token_ids"].shape == (16, 16) and arrays["image_tokens"].shape == (16, 8, 8)
    assert arrays["text_token_ids"].dtype == arrays["image_tokens"].dtype == np.int32
    from keras_clip.data.shapes import generate_shapes
    from keras_clip.text.tokenizer import tokenize
    data = generate_shapes(16, split="val", image_size=16)
    np.testing.assert_array_equal(arrays["text_token_ids"], tokenize(data["captions"], 16))
    expected = vae.encode(data["images"].astype("float32") / 255.0).numpy()
    assert (arrays["image_tokens"] == expected).mean() > 0.99  # XLA vs eager argmax ties
    assert 0.0 <= unigram_entropy(arrays["image_tokens"], 16) <= np.log(16)


def _run(out, *args):
    return subprocess.Popen([sys.executable, SCRIPT, str(out), *args], cwd=ROOT,
                            env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _result(proc, path):
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-3000:]
    data = np.load(path)
    return (float(data["loss"]), int(data["replicas"]),
            [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))])


@pytest.mark.slow
def test_two_mirrored_replicas_match_one_device_xla_step(tmp_path):
    # ~1–2.5 min on a busy 2-core CPU (two subprocesses, each compiling the XLA step).
    one, mirrored = tmp_path / "one.npz", tmp_path / "mirrored.npz"
    procs = [_run(one, "--xla"), _run(mirrored, "--strategy", "mirrored", "--xla")]
    (loss_1, r1, w1), (loss_2, r2, w2) = _result(procs[0], one), _result(procs[1], mirrored)
    assert (r1, r2) == (1, 2)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
    print(f"\nloss difference {abs(loss_1 - loss_2):.2g}, max weight difference {worst:.2g}")
    # README ("Transformer") states the gate. Measured 2026-11-30 (TF 2.21 CPU): loss 0,
    # weights 1.2e-7 (1.8e-7 in an earlier run).
    assert abs(loss_1 - loss_2) <= 1e-6
    assert worst <= 6e-7, worst
    keras.utils.set_random_seed(1)
    initial = DALLE.from_preset("dalle-tiny").get_weights()
    moved = sum(not np.allclose(a, b) for a, b in zip(initial, w1))
    assert moved >= 0.9 * len(initial)  # the comparison is meaningful: the step moved weights


@pytest.mark.slow
def test_training_cli_on_shapes_with_a_tiny_dvae(tmp_path, capsys):
    # ~40 s of CPU (2–3 min wall on the busy shared machine): data, fit, evaluation, saving.
    from keras_dalle.vae.presets import dvae_from_preset
    from keras_dalle.transformer.train import main

    keras.utils.set_random_seed(0)
    vae_path = tmp_path / "dvae.keras"
    dvae_from_preset("dvae-tiny").save(vae_path)
    out = tmp_path / "dalle.keras"
    assert main(["--vae", str(vae_path), "--preset", "dalle-tiny", "--epochs", "2",
                 "--steps-per-epoch", "3", "--batch-size", "4", "--num-examples", "64",
                 "--heldout-examples", "16", "--no-xla", "--logdir", str(tmp_path / "logs"),
                 "--output", str(out), "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    assert "held-out image-token cross-entropy (16 examples)" in printed
    assert "unigram baseline" in printed
    assert "per-position unigram" in printed and "captions shuffled" in printed
    model = keras.saving.load_model(out)
    # The stream follows the dVAE (8×8 grid, K = 16) and the CLIP BPE vocabulary.
    assert (model.grid_height, model.image_vocab_size, model.text_vocab_size) == (8, 16, 49408)
    events = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "logs") for f in fs
              if "tfevents" in f]
    tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path)
            for v in e.summary.value}
    assert {"epoch_loss", "epoch_text_loss", "epoch_image_loss",
            "epoch_tokens_per_second"} <= tags


def test_tokens_per_second_callback_counts_timed_steps(monkeypatch):
    from keras_dalle.transformer import callbacks

    clock = iter([10.0, 10.5, 11.0, 12.0])  # two steps: 0.5 s and 1.0 s
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    cb = callbacks.TokensPerSecond(tokens_per_step=300)
    logs = {"loss": 1.0}
    cb.on_epoch_begin(0)
    for step in range(2):
        cb.on_train_batch_begin(step)
        cb.on_train_batch_end(step)
    cb.on_epoch_end(0, logs)
    assert logs["tokens_per_second"] == pytest.approx(600 / 1.5)


def test_max_objects_keeps_the_single_object_scenes_in_order():
    from keras_clip.data.shapes import generate_shapes
    from keras_dalle.transformer.train import _at_most

    scenes = generate_shapes(60, split="train", image_size=16)["attributes"]
    single = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1]
    assert 0 < len(single) < 60  # both kinds occur, so the filter is tested
    arrays = {"image_tokens": np.arange(60)[:, None], "text_token_ids": np.arange(60)[:, None]}
    kept = _at_most(arrays, 1, 60, 0, 16)
    assert kept["image_tokens"][:, 0].tolist() == single
    assert kept["text_token_ids"][:, 0].tolist() == single
    assert len(_at_most(arrays, 2, 60, 0, 16)["image_tokens"]) == 60


@pytest.mark.parametrize("data, max_objects", [("shards/*.tfrecord", 1), ("shapes", 3)])
def test_max_objects_is_refused_outside_the_shapes_data_or_range(data, max_objects):
    from keras_dalle.transformer.train import train_dalle

    with pytest.raises(ValueError, match="max_objects is for the shapes data"):
        train_dalle("missing.keras", data=data, max_objects=max_objects, verbose=0)
