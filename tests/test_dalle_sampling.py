"""DALL·E sampling: cached == uncached, seed determinism, prefixes, filtering, CLIP reranking."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_clip.model import CLIP
from keras_dalle.sampling.generate import generate, main as generate_main, save_grid
from keras_dalle.transformer.model import DALLE
from keras_dalle.sampling.rerank import clip_scores
from keras_dalle.sampling.sampler import filter_logits, sample_image_tokens
from keras_dalle.vae import DiscreteVAE
from keras_dalle.vae.presets import get_preset


def _model(impl):
    keras.utils.set_random_seed(0)
    return DALLE.from_preset("dalle-tiny", attention_impl=impl,
                             attention_schedule=["row", "column", "full", "conv"], num_layers=4)


# Every distinct (shape, temperature, top-k/p) compiles a new XLA loop: the tests share
# num_samples=2 and the sparse model wherever they can.
@pytest.fixture(scope="module")
def model():
    return _model("sparse")


@pytest.fixture(scope="module")
def text(model):
    return np.random.default_rng(0).integers(1, model.text_vocab_size, (2, model.text_len))


@pytest.mark.parametrize("impl, temperature", [("sparse", 0.0), ("sparse", 1.0),
                                               ("masked_dense", 1.0)])
def test_cached_and_uncached_loops_give_identical_tokens(model, text, impl, temperature):
    m = model if impl == "sparse" else _model(impl)
    cached = sample_image_tokens(m, text, num_samples=2, temperature=temperature, seed=7)
    uncached = sample_image_tokens(m, text, num_samples=2, temperature=temperature, seed=7,
                                   use_cache=False)
    assert cached.shape == (2, 2, m.grid_height, m.grid_width)
    np.testing.assert_array_equal(cached, uncached)


def test_greedy_tokens_are_the_argmax_of_the_models_own_logits(model, text):
    tokens = sample_image_tokens(model, text, num_samples=2, temperature=0.0).reshape(4, -1)
    logits = model({"text_token_ids": np.repeat(text, 2, axis=0),
                    "image_tokens": tokens})["image_logits"]
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))


def test_same_seed_same_tokens_other_seed_other_tokens(model, text):
    a = sample_image_tokens(model, text, num_samples=2, seed=1)
    b = sample_image_tokens(model, text, num_samples=2, seed=1)
    c = sample_image_tokens(model, text, num_samples=2, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5
    # samples of one prompt differ from each other (each row has its own draw)
    assert (a[:, 0] != a[:, 1]).mean() > 0.5


def test_image_prefix_is_kept_and_both_paths_agree(model, text):
    prefix = np.random.default_rng(3).integers(0, model.image_vocab_size, (2, 1, model.grid_width))
    cached = sample_image_tokens(model, text, num_samples=2, seed=4, image_prefix_tokens=prefix)
    uncached = sample_image_tokens(model, text, num_samples=2, seed=4, image_prefix_tokens=prefix,
                                   use_cache=False)
    np.testing.assert_array_equal(cached[:, :, :1], np.repeat(prefix[:, None], 2, axis=1))
    np.testing.assert_array_equal(cached, uncached)


def _pattern_model(pattern, tie_embeddings=False):
    keras.utils.set_random_seed(0)
    return DALLE.from_preset("dalle-tiny", attention_schedule=[pattern] * 2, num_layers=2,
                             tie_embeddings=tie_embeddings)


@pytest.mark.parametrize("pattern, tie_embeddings", [("row", False), ("column", False),
                                                     ("conv", True), ("full", False)])
def test_call_with_cache_equals_the_models_logits(pattern, tie_embeddings):
    """Prefill (text, SOI, a prefix) then one position per call, through the public methods the
    sampler uses, against the uncached forward pass: every layer type's mask rows."""
    m = _pattern_model(pattern, tie_embeddings)
    rng = np.random.default_rng(5)
    text = rng.integers(0, m.text_vocab_size, (2, m.text_len)).astype("int32")
    text[:, -2:] = m.pad_id  # pads get their position's pad embedding
    image = rng.integers(0, m.image_vocab_size, (2, m.num_image_tokens)).astype("int32")
    _, want = m.logits(tf.constant(text), tf.constant(image))  # [2, N, V_i]
    stream = m.stream_token_ids(text, image)  # [2, T]
    assert stream.shape == (2, m.sequence_length)
    np.testing.assert_array_equal(stream[:, m.text_len + 1:], image[:, :-1])
    prefix = m.text_len + 1 + 3  # text, SOI, 3 image tokens
    logits, hidden, cache = m.call_with_cache(stream[:, :prefix], m.empty_cache(2), 0)
    got = [logits[:, m.text_len:]]
    assert hidden.shape == (2, prefix, m.width) and len(cache) == m.num_layers
    for position in range(prefix, m.sequence_length):
        logits, _, cache = m.call_with_cache(stream[:, position:position + 1], cache, position)
        got.append(logits)
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, rtol=1e-5, atol=1e-5)
    whole, _, _ = m.call_with_cache(stream, m.empty_cache(2), 0)  # one prefill of everything
    np.testing.assert_allclose(whole[:, m.text_len:], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="list of 2 per-layer caches"):
        m.call_with_cache(stream[:, :1], m.empty_cache(2)[:1], 0)
    with pytest.raises(ValueError, match="cache_update_index must be in"):
        m.call_with_cache(stream[:, :2], cache, m.sequence_length - 1)


@pytest.mark.parametrize("pattern", ["row", "column", "conv", "full"])
def test_cached_and_uncached_greedy_tokens_for_each_layer_type(text, pattern):
    m = _pattern_model(pattern)
    cached = sample_image_tokens(m, text, num_samples=2, temperature=0.0)
    np.testing.assert_array_equal(cached, sample_image_tokens(m, text, num_samples=2,
                                                              temperature=0.0, use_cache=False))


def test_cached_and_uncached_loops_agree_without_xla(model, text):
    prefix = np.random.default_rng(6).integers(0, model.image_vocab_size, (2, 3))
    kwargs = dict(num_samples=2, seed=9, image_prefix_tokens=prefix)
    cached = sample_image_tokens(model, text, xla=False, **kwargs)
    np.testing.assert_array_equal(cached[:, :, 0, :3], np.repeat(prefix[:, None], 2, axis=1))
    np.testing.assert_array_equal(cached, sample_image_tokens(model, text, xla=False,
                                                              use_cache=False, **kwargs))
    np.testing.assert_array_equal(cached, sample_image_tokens(model, text, **kwargs))


def test_top_k_and_top_p_keep_only_the_best_tokens():
    logits = tf.constant([[0.0, 1.0, 2.0, 3.0, 4.0]])
    kept = np.isfinite(filter_logits(logits, top_k=2).numpy())
    np.testing.assert_array_equal(kept, [[False, False, False, True, True]])
    probs = tf.nn.softmax(logits).numpy()[0]  # ≈ .01 .03 .09 .23 .64
    kept = np.isfinite(filter_logits(logits, top_p=0.8).numpy())
    np.testing.assert_array_equal(kept, [[False, False, False, True, True]])
    assert probs[3:].sum() >= 0.8 > probs[4]
    greedy = filter_logits(logits, temperature=0.0).numpy()
    np.testing.assert_array_equal(np.isfinite(greedy), [[False] * 4 + [True]])


def test_sampled_tokens_respect_top_k(model, text):
    tokens = sample_image_tokens(model, text, num_samples=2, top_k=1, seed=3)
    np.testing.assert_array_equal(tokens, sample_image_tokens(model, text, num_samples=2,
                                                              temperature=0.0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"),
    (dict(num_samples=0), "num_samples"),
    (dict(image_prefix_tokens=np.full((2, 3), 99)), "image_prefix_tokens"),
    # the leading dimension must be the number of prompts (2): it used to be reshaped away
    (dict(image_prefix_tokens=np.ones((1, 4), int)),
     r"image_prefix_tokens must have shape \[B, P\] or \[B, rows, 4\] with B = 2 .*got shape "
     r"\(1, 4\)"),
    (dict(image_prefix_tokens=np.ones((3, 2), int)), r"B = 2 .*got shape \(3, 2\)"),
    (dict(image_prefix_tokens=np.ones(4, int)), r"B = 2 .*got shape \(4,\)"),
    (dict(image_prefix_tokens=np.ones((2, 1, 3), int)), r"\[B, rows, 4\].*got shape \(2, 1, 3\)"),
    (dict(image_prefix_tokens=np.ones((2, 1, 1, 4), int)), r"got shape \(2, 1, 1, 4\)"),
    (dict(image_prefix_tokens=np.ones((2, 3)) * 0.5), r"image_prefix_tokens must be integer"),
])
def test_bad_sampling_arguments_are_named(model, text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_image_tokens(model, text, **kwargs)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A tiny DALLE over a dvae-tiny grid (8×8, K=16) with the CLIP tokenizer, a dVAE, a CLIP."""
    keras.utils.set_random_seed(1)
    vae = DiscreteVAE(**get_preset("dvae-tiny"))
    vae.decode(np.zeros((1, 8, 8), np.int32))
    dalle = DALLE.from_preset("dalle-tiny", text_vocab_size=49408, grid_height=8, grid_width=8,
                              image_vocab_size=vae.vocab_size)
    clip = CLIP.from_preset("ViT-Tiny")
    return dalle, vae, clip


def test_rerank_returns_the_best_samples_sorted_with_their_clip_scores(trio):
    dalle, vae, clip = trio
    prompts = ["a red circle", "a blue square"]
    everything = generate(dalle, prompts, vae=vae, num_samples=5, seed=0)
    best = generate(dalle, prompts, vae=vae, num_samples=5, seed=0, rerank=clip, keep=2)
    assert best["images"].shape == (2, 2, 16, 16, 3) and best["scores"].shape == (2, 2)
    all_scores = clip_scores(clip, everything["images"].reshape(10, 16, 16, 3),
                             [p for p in prompts for _ in range(5)]).reshape(2, 5)
    np.testing.assert_allclose(best["scores"], -np.sort(-all_scores, axis=1)[:, :2], rtol=1e-4,
                               atol=1e-4)
    for i in range(2):
        np.testing.assert_array_equal(best["image_tokens"][i],
                                      everything["image_tokens"][i, best["order"][i]])
    with pytest.raises(ValueError, match="rerank"):
        generate(dalle, prompts, vae=vae, num_samples=2, keep=1)


def test_generate_argument_errors_are_named(trio):
    dalle, vae, clip = trio
    rerank = dict(num_samples=2, vae=vae, rerank=clip)
    for kwargs, error, message in [
        (dict(rerank, keep=0), ValueError, r"keep must be in \[1, 2\] \(num_samples\), got 0"),
        (dict(rerank, keep=-1), ValueError, r"keep must be in \[1, 2\].*got -1"),
        (dict(rerank, keep=5), ValueError, r"keep must be in \[1, 2\].*got 5"),
        (dict(rerank, keep=1.0), ValueError, r"keep must be an integer >= 1, got 1.0"),
        (dict(num_samples=2.0), ValueError, r"num_samples must be an integer >= 1, got 2.0"),
        (dict(num_samples=True), ValueError, r"num_samples must be an integer >= 1, got True"),
        (dict(seed=None), ValueError, r"seed must be an integer .*got None"),
        (dict(seed=1.5), ValueError, r"seed must be an integer .*got 1.5"),
        (dict(seed=2**40), ValueError, r"seed must be an integer in \[-2\*\*31, 2\*\*31\)"),
        (dict(vae=clip), TypeError, r"vae must be a keras_dalle.DiscreteVAE, got CLIP"),
        (dict(vae="dvae.keras"), TypeError,
         r"vae must be a keras_dalle.DiscreteVAE, got str \('dvae.keras'\).*load_model"),
        (dict(num_samples=2, vae=vae, rerank=vae), TypeError,
         r"rerank must be a keras_clip.CLIP, got DiscreteVAE"),
    ]:
        with pytest.raises(error, match=message):
            generate(dalle, ["a red circle"], **kwargs)
    for model in (vae, clip, "dalle.keras"):
        with pytest.raises(TypeError, match=r"model must be a keras_dalle.DALLE, got "
                                            + type(model).__name__):
            generate(model, ["a red circle"])


def test_string_prompts_need_a_model_with_clips_text_vocabulary(model):
    # dalle-tiny has text_vocab_size 64; string prompts become CLIP BPE ids up to 49,407.
    with pytest.raises(ValueError, match=r"tokenized with CLIP's BPE \(49,408 ids.*"
                                         r"text_vocab_size is 64"):
        generate(model, ["a red circle"])
    with pytest.raises(ValueError, match=r"text_vocab_size is 64"):
        model.generate("a red circle")


def test_generate_cli_writes_a_png_grid(trio, tmp_path, capsys):
    dalle, vae, clip = trio
    paths = {}
    for name, m in (("dalle", dalle), ("vae", vae), ("clip", clip)):
        paths[name] = str(tmp_path / f"{name}.keras")
        m.save(paths[name])
    out = tmp_path / "grid.png"
    generate_main(["a red circle", "a green star", "--model", paths["dalle"], "--vae",
                   paths["vae"], "--clip", paths["clip"], "--num-samples", "3", "--keep", "2",
                   "--out", str(out)])
    grid = Image.open(out)
    assert grid.format == "PNG" and grid.width > 2 * 32 and grid.height > 2 * 32
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask
    printed = capsys.readouterr().out
    assert "CLIP scores" in printed and "a green star" in printed
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".grid-")]


@pytest.mark.parametrize("name, fmt", [("grid.png", "PNG"), ("grid.jpg", "JPEG"),
                                       ("grid.JPEG", "JPEG")])
def test_save_grid_writes_the_format_of_the_extension_with_the_usual_permissions(tmp_path, name,
                                                                               fmt):
    # --out x.jpg used to get PNG bytes, and the file mode 0600 (mkstemp's) where .keras files
    # get 0666 & ~umask.
    images = np.random.default_rng(0).uniform(size=(2, 3, 8, 8, 3))
    old = os.umask(0o027)
    try:
        save_grid(str(tmp_path / name), images, ["a", "b"])
    finally:
        os.umask(old)
    with Image.open(tmp_path / name) as grid:
        assert grid.format == fmt and grid.mode == "RGB"
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == [name]


def test_save_grid_and_the_cli_refuse_other_extensions(tmp_path, capsys):
    images = np.zeros((1, 1, 8, 8, 3))
    for name in ("grid.gif", "grid.webp", "grid"):
        with pytest.raises(ValueError, match=r"must end in \.png, \.jpg or \.jpeg.*got "
                                             + repr(str(tmp_path / name)).replace(".", r"\.")):
            save_grid(str(tmp_path / name), images)
    assert os.listdir(tmp_path) == []
    # the CLI says so before loading any model or sampling
    with pytest.raises(SystemExit):
        generate_main(["a red circle", "--model", "missing.keras", "--vae", "missing.keras",
                       "--out", str(tmp_path / "grid.gif")])
    assert "--out must end in .png, .jpg or .jpeg" in capsys.readouterr().err


def test_prompt_fidelity_counts_every_sample_before_and_the_best_of_each_group_after(trio):
    from keras_dalle.sampling.fidelity import SPLITS, prompt_fidelity

    dalle, vae, clip = trio  # random weights: the rates are ~0, the bookkeeping is what counts
    # 2 prompts × 5 samples per call: the loop the rerank test above compiled (grouping is
    # tested on known samples in tests/test_fidelity.py)
    r = prompt_fidelity(dalle, vae, clip, num_prompts=4, num_samples=5, group=5, chunk=2)
    assert list(r["splits"]) == list(SPLITS) and r["num_samples"] == 5 and r["group"] == 5
    for split, s in r["splits"].items():
        assert len(s["prompts"]) == 4 and len(s["per_prompt"]) == 4
        for when, n in (("before", 4 * 5), ("after", 4 * 5 // 5)):
            c = s[when]
            assert c["n"] == n and 0 <= c["k"] <= n and c["rate"] == c["k"] / n
            assert 0 <= c["interval"][0] <= c["rate"] <= c["interval"][1] <= 1
            assert sum(p[when][0] for p in s["per_prompt"]) == c["k"]
            assert all(p[when][1] == n // 4 for p in s["per_prompt"])
        # every failed sample has a kind of failure
        assert sum(s["errors"].values()) == s["before"]["n"] - s["before"]["k"]
    assert all(" above " not in p and " of " not in p for p in r["splits"]["seen"]["prompts"])
    without = prompt_fidelity(dalle, vae, None, splits=["heldout"], num_prompts=2, num_samples=5)
    assert without["splits"]["heldout"]["after"] is None
    assert without["splits"]["heldout"]["before"]["n"] == 10


def test_model_generate_and_the_tensorboard_sample_grid(trio, tmp_path):
    from keras_dalle.transformer.callbacks import SampleGrid

    dalle, vae, clip = trio
    prompts = ["a red circle", "a blue square"]
    out = dalle.generate(prompts, num_samples=5, vae=vae, seed=0)
    np.testing.assert_array_equal(out["image_tokens"],
                                  generate(dalle, prompts, vae=vae, num_samples=5, seed=0)["image_tokens"])
    callback = SampleGrid(prompts, vae, str(tmp_path), num_samples=5)
    callback.set_model(dalle)
    callback.on_epoch_end(0)
    images = {}
    for event_file in (tmp_path / "samples").iterdir():
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                images[value.tag] = tf.make_ndarray(value.tensor)
    assert set(images) == {f"samples/{p}" for p in prompts}
    # width, height, then the PNG: one 16 x (5 x 16) row of samples per prompt
    assert [int(x) for x in images["samples/a red circle"][:2]] == [80, 16]
