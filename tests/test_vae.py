"""DiscreteVAE (OpenAI dVAE port): architecture, parity with `dall_e`, weight import, errors.

The tiny parity fixtures come from tests/fixtures/make_dvae_fixtures.py (run in .venv-ref); the
tests that need torch + dall_e are marked `torch` and skip with a reason when those are missing.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dalle.vae import (DiscreteVAE, DVAEDecoder, DVAEEncoder, dvae_from_preset, map_pixels,
                             unmap_pixels)
from keras_clip.checkpoints.reader import read_state_dict
from keras_dalle.vae.openai_import import (dall_e_state_dicts, dvae_from_state_dicts,
                                           infer_dvae_config, load_openai_dvae)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "dvae_tiny")
ENC_NPZ = os.path.join(FIXTURES, "encoder.npz")
DEC_NPZ = os.path.join(FIXTURES, "decoder.npz")

# Gates of the committed tiny fixture (|logits| ≤ 1.6, decoder maps ≤ 0.38): every token equal;
# measured 2026-11-30 (TF 2.21 CPU): logits 8.3e-7, decoded images 2.4e-7, decoder maps 0.
LOGITS_ATOL = 3e-6
DECODED_ATOL = 1e-6
# The full-size test (`make test-ref`, slow): README's "Discrete VAE" parity numbers, measured
# there as every token equal, logits 1.7e-6 and decoded images 2.7e-7; gated at ~4× those.
FULL_SIZE_LOGITS_ATOL = 7e-6
FULL_SIZE_DECODED_ATOL = 1e-6
# The pickled-modules test (torch, not measurable without it; no README number): loose gates.
PICKLE_TOKEN_AGREEMENT_MIN = 0.999
PICKLE_ATOL = 1e-4


def _tiny_config():
    with open(os.path.join(FIXTURES, "config.json")) as f:
        meta = json.load(f)
    keys = ("image_size", "num_channels", "n_hid", "group_count", "n_blk_per_group",
            "vocab_size", "n_init", "output_channels")
    return {k: meta[k] for k in keys}


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(FIXTURES, "reference.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def tiny_vae():
    return load_openai_dvae(ENC_NPZ, DEC_NPZ, image_size=_tiny_config()["image_size"])


def _compare(vae, images, ref_logits, ref_tokens, ref_decoded):
    logits = keras.ops.convert_to_numpy(vae.encoder_logits(images))
    tokens = keras.ops.convert_to_numpy(vae.encode(images))
    decoded = keras.ops.convert_to_numpy(vae.decode(ref_tokens))
    return dict(token_agreement=float(np.mean(tokens == ref_tokens)),
                logits_max_abs_diff=float(np.max(np.abs(logits - ref_logits))),
                decoded_max_abs_diff=float(np.max(np.abs(decoded - ref_decoded))),
                tokens=tokens, decoded=decoded)


# --------------------------------------------------------------------------- architecture
def test_parameter_counts_match_openai():
    # image_size 256, n_hid 256, 4 groups × 2 blocks, vocab 8192. The constructor builds the
    # model (as CLIP's and DALLE's do): no build() call before counting.
    vae = dvae_from_preset("openai")
    assert vae.built
    assert vae.encoder.count_params() == 53_786_240
    assert vae.decoder.count_params() == 43_829_766
    assert vae.count_params() == 53_786_240 + 43_829_766
    assert vae.token_grid_size == 32 and vae.downsample_factor == 8
    block = vae.encoder.groups[0][0]
    assert block.post_gain == pytest.approx(1 / 64)
    assert block.id_conv is None and vae.encoder.groups[1][0].id_conv is not None
    assert [c.kernel_size[0] for c in block.res_convs] == [3, 3, 3, 1]
    assert [c.kernel_size[0] for c in vae.decoder.groups[0][0].res_convs] == [1, 3, 3, 3]
    assert vae.decoder.input_conv.kernel.shape == (1, 1, 8192, 128)


def test_shapes_and_dtypes_tiny():
    vae = DiscreteVAE(image_size=32, n_hid=8, group_count=3, n_blk_per_group=1, vocab_size=16,
                      n_init=4)
    images = np.random.default_rng(0).uniform(size=(2, 32, 48, 3)).astype("float32")
    tokens = vae.encode(images)
    assert tokens.shape == (2, 8, 12) and tokens.dtype == tf.int32
    assert vae.encoder_logits(images).shape == (2, 8, 12, 16)
    out = vae.decode(tokens)
    assert out.shape == (2, 32, 48, 3) and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    assert vae(images).shape == (2, 32, 48, 6)
    assert vae.encoder.groups[0][0].post_gain == pytest.approx(1 / 9)


def test_get_config_round_trip():
    kwargs = dict(image_size=32, num_channels=1, n_hid=8, group_count=2, n_blk_per_group=3,
                  vocab_size=16, n_init=4, output_channels=2)
    vae = DiscreteVAE(**kwargs)
    config = vae.get_config()
    assert {k: config[k] for k in kwargs} == kwargs
    clone = DiscreteVAE.from_config(config)
    assert {k: clone.get_config()[k] for k in kwargs} == kwargs
    for sub, cls in ((vae.encoder, DVAEEncoder), (vae.decoder, DVAEDecoder)):
        assert cls.from_config(sub.get_config()).get_config() == sub.get_config()


# --------------------------------------------------------------------------- parity (no torch)
def test_tiny_parity_with_dall_e(tiny_vae, reference):
    stats = _compare(tiny_vae, reference["images"], reference["encoder_logits"],
                     reference["tokens"], reference["decoded"])
    print(f"\ntiny dVAE parity: tokens {100 * stats['token_agreement']:.3f}% | logits max abs "
          f"diff {stats['logits_max_abs_diff']:.3g} | decoded max abs diff "
          f"{stats['decoded_max_abs_diff']:.3g}")
    np.testing.assert_array_equal(stats["tokens"], reference["tokens"])
    assert stats["logits_max_abs_diff"] <= LOGITS_ATOL
    assert stats["decoded_max_abs_diff"] <= DECODED_ATOL
    maps = keras.ops.convert_to_numpy(tiny_vae.decoder_outputs(reference["tokens"]))
    np.testing.assert_allclose(maps, reference["decoder_maps"], atol=DECODED_ATOL, rtol=0)
    decoded = keras.ops.convert_to_numpy(tiny_vae.decode(reference["random_tokens"]))
    np.testing.assert_allclose(decoded, reference["random_decoded"], atol=DECODED_ATOL, rtol=0)


def test_tiny_config_inferred_from_shapes(tiny_vae):
    expected = _tiny_config()
    config = tiny_vae.get_config()
    assert {k: config[k] for k in expected} == expected
    inferred = infer_dvae_config(read_state_dict(ENC_NPZ), read_state_dict(DEC_NPZ))
    assert inferred == {k: v for k, v in expected.items() if k != "image_size"}


def test_safetensors_import_matches_npz(tiny_vae, reference, tmp_path):
    from safetensors.numpy import save_file

    paths = []
    for src in (ENC_NPZ, DEC_NPZ):
        dst = tmp_path / (os.path.basename(src)[:-4] + ".safetensors")
        save_file(read_state_dict(src), str(dst))
        paths.append(dst)
    vae = load_openai_dvae(*paths, image_size=64)
    tokens = reference["tokens"]
    np.testing.assert_array_equal(vae.decode(tokens), tiny_vae.decode(tokens))
    np.testing.assert_array_equal(vae.encode(reference["images"]), reference["tokens"])


def test_dall_e_state_dicts_inverts_import(tiny_vae):
    enc, dec = dall_e_state_dicts(tiny_vae)
    for exported, path in ((enc, ENC_NPZ), (dec, DEC_NPZ)):
        original = read_state_dict(path)
        assert sorted(exported) == sorted(original)
        for key in original:
            np.testing.assert_array_equal(exported[key], original[key], err_msg=key)


def test_dall_e_state_dicts_safetensors_round_trip(tiny_vae, reference, tmp_path):
    # The kernels are transposed HWIO → OIHW; safetensors writes an array's memory as it is, so
    # a non-contiguous view came back as a different model (logits off by ~1.5).
    from safetensors.numpy import save_file

    enc, dec = dall_e_state_dicts(tiny_vae)
    not_contiguous = [k for k, v in {**enc, **dec}.items() if not v.flags["C_CONTIGUOUS"]]
    assert not_contiguous == []
    save_file(enc, str(tmp_path / "enc.safetensors"))
    save_file(dec, str(tmp_path / "dec.safetensors"))
    vae = load_openai_dvae(tmp_path / "enc.safetensors", tmp_path / "dec.safetensors",
                           image_size=tiny_vae.image_size)
    images, tokens = reference["images"], reference["random_tokens"]
    np.testing.assert_array_equal(vae.encoder_logits(images), tiny_vae.encoder_logits(images))
    np.testing.assert_array_equal(vae.decode(tokens), tiny_vae.decode(tokens))


def test_encode_decode_inside_tf_function(tiny_vae, reference):
    images = tf.constant(reference["images"])
    fn = tf.function(lambda x: tiny_vae.decode(tiny_vae.encode(x)))
    eager = tiny_vae.decode(tiny_vae.encode(images))
    np.testing.assert_allclose(fn(images), eager, atol=1e-6)


def test_keras_save_load_round_trip(tiny_vae, reference, tmp_path):
    path = str(tmp_path / "dvae.keras")
    tiny_vae.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DiscreteVAE)
    assert loaded.get_config() == tiny_vae.get_config()
    images, tokens = reference["images"], reference["random_tokens"]
    np.testing.assert_array_equal(loaded.encoder_logits(images), tiny_vae.encoder_logits(images))
    np.testing.assert_array_equal(loaded.encode(images), tiny_vae.encode(images))
    np.testing.assert_array_equal(loaded.decode(tokens), tiny_vae.decode(tokens))
    np.testing.assert_array_equal(loaded(images), tiny_vae(images))


@pytest.mark.parametrize("make", [
    lambda: dvae_from_preset("dvae-tiny"),
    lambda: DiscreteVAE(image_size=16, n_hid=8, group_count=2, n_blk_per_group=1, vocab_size=8,
                        n_init=4)])
def test_new_model_is_built_and_saves_its_weights(make, tmp_path):
    # Saved before any call: the file must hold the weights (an unbuilt model saved none, and
    # loading gave another random model).
    vae = make()
    assert vae.built and len(vae.weights) > 0
    assert vae.count_params() == vae.encoder.count_params() + vae.decoder.count_params() > 0
    path = str(tmp_path / "fresh.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DiscreteVAE) and loaded.get_config() == vae.get_config()
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
    tokens = np.arange(2 * 8 * 8).reshape(2, 8, 8) % vae.vocab_size
    np.testing.assert_array_equal(loaded.encoder_logits(images), vae.encoder_logits(images))
    np.testing.assert_array_equal(loaded.encode(images), vae.encode(images))
    np.testing.assert_array_equal(loaded.decode(tokens), vae.decode(tokens))
    clone = DiscreteVAE.from_config(vae.get_config())
    assert clone.built and clone.count_params() == vae.count_params()


# --------------------------------------------------------------------------- pixels & errors
def test_map_unmap_pixels_round_trip():
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    mapped = keras.ops.convert_to_numpy(map_pixels(x))
    assert mapped.min() >= 0.1 - 1e-7 and mapped.max() <= 0.9 + 1e-7
    np.testing.assert_allclose(mapped, 0.8 * x + 0.1, atol=1e-7)
    np.testing.assert_allclose(unmap_pixels(mapped), x, atol=1e-6)
    clipped = keras.ops.convert_to_numpy(unmap_pixels(np.array([[[[0.0, 0.05, 0.95, 1.0]]]])))
    np.testing.assert_allclose(clipped, [[[[0.0, 0.0, 1.0, 1.0]]]])


@pytest.fixture(scope="module")
def small_vae():
    return DiscreteVAE(image_size=16, n_hid=8, group_count=3, n_blk_per_group=1, vocab_size=10,
                       n_init=4)


@pytest.mark.parametrize("images, message", [
    (np.zeros((16, 16, 3), "float32"), "rank 4"),
    (np.zeros((1, 16, 16, 4), "float32"), "3 channels"),
    (np.zeros((1, 10, 16, 3), "float32"), "height must be a positive multiple of 2**(group_count - 1) = 4"),
    (np.zeros((1, 16, 18, 3), "float32"), "width must be a positive multiple"),
    (np.full((1, 16, 16, 3), 255.0, "float32"), "images must be in [0, 1], got min 255 max 255"),
    (np.array([-0.5, 255.0] * 384, "float32").reshape(1, 16, 16, 3),
     "images must be in [0, 1], got min -0.5 max 255"),
    (np.full((1, 16, 16, 3), np.nan, "float32"), "images must be in [0, 1], got min nan"),
])
def test_bad_images_raise(small_vae, images, message):
    for value in (images, tf.constant(images)):
        with pytest.raises(ValueError) as info:
            small_vae.encode(value)
        assert message in str(info.value)


def test_uint8_images_rejected_with_range(small_vae):
    with pytest.raises(ValueError, match=r"images must be in \[0, 1\], got min 0 max 200"):
        small_vae.encode(np.array([0, 200] * 384, "uint8").reshape(1, 16, 16, 3))


@pytest.mark.parametrize("tokens, message", [
    (np.zeros((4, 4), "int32"), "rank 3"),
    (np.zeros((1, 4, 4, 1), "int32"), "rank 3"),
    (np.array([[[0, 10]]], "int32"), "token ids must be in [0, 10), got min 0 max 10"),
    (np.array([[[-1, 3]]], "int64"), "token ids must be in [0, 10), got min -1 max 3"),
    (np.zeros((1, 2, 2), "float32"), "tokens must be integer ids, got dtype float32"),
])
def test_bad_tokens_raise(small_vae, tokens, message):
    with pytest.raises(ValueError) as info:
        small_vae.decode(tokens)
    assert message in str(info.value)
    if tokens.ndim == 3 and tokens.dtype != np.float32:
        with pytest.raises(ValueError, match="token ids must be in"):
            small_vae.decode(tf.constant(tokens))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="image_size must be divisible by 2\\*\\*\\(group_count - 1\\) = 8"):
        DiscreteVAE(image_size=100)
    with pytest.raises(ValueError, match="n_hid must be a multiple of 4"):
        DiscreteVAE(n_hid=10)
    with pytest.raises(ValueError, match="output_channels"):
        DiscreteVAE(output_channels=2)


# --------------------------------------------------------------------------- import errors
def _write_npz(path, state):
    np.savez(path, **state)
    return str(path)


def test_import_reports_missing_unexpected_and_misshaped_keys(tmp_path):
    state = read_state_dict(ENC_NPZ)
    del state["blocks.group_2.block_1.id_path.b"]
    state["blocks.extra.w"] = np.zeros((2, 2), "float32")
    state["blocks.group_1.block_2.res_path.conv_3.w"] = np.zeros((4, 4, 1, 1), "float32")
    bad = _write_npz(tmp_path / "bad_encoder.npz", state)
    with pytest.raises(ValueError) as info:
        load_openai_dvae(bad, DEC_NPZ)
    msg = str(info.value)
    assert "bad_encoder.npz" in msg
    assert "missing keys (1): blocks.group_2.block_1.id_path.b (expected shape (32,))" in msg
    assert "unexpected keys (1): blocks.extra.w (shape (2, 2))" in msg
    assert ("mis-shaped keys (1): blocks.group_1.block_2.res_path.conv_3.w: expected shape "
            "(4, 4, 3, 3), got (4, 4, 1, 1)") in msg


def test_import_reports_override_mismatch_and_conflicts(tmp_path):
    with pytest.raises(ValueError, match=r"decoder\.npz.*mis-shaped keys.*blocks\.output\.conv\.w: "
                                         r"expected shape \(4, 16, 1, 1\), got \(6, 16, 1, 1\)"):
        load_openai_dvae(ENC_NPZ, DEC_NPZ, output_channels=4)
    dec = read_state_dict(DEC_NPZ)
    dec["blocks.input.w"] = np.zeros((8, 32, 1, 1), "float32")
    bad = _write_npz(tmp_path / "other_vocab_decoder.npz", dec)
    with pytest.raises(ValueError, match=r"vocab_size: .*encoder\.npz has 64, .*"
                                         r"other_vocab_decoder\.npz has 32"):
        load_openai_dvae(ENC_NPZ, bad)


def test_import_rejects_unknown_extension_and_missing_file(tmp_path):
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"dVAE encoder weights .*\.h5: unsupported file extension '\.h5'"):
        load_openai_dvae(str(odd), DEC_NPZ)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_openai_dvae(str(tmp_path / "nope.npz"), DEC_NPZ)


# --------------------------------------------------------------------------- torch / dall_e
def _require_dall_e():
    reason = ("needs torch and OpenAI's `dall_e` package (e.g. run with .venv-ref's "
              "site-packages on PYTHONPATH, or pip install torch dall-e attrs)")
    torch = pytest.importorskip("torch", reason=reason)
    dall_e = pytest.importorskip("dall_e", reason=reason)
    return torch, dall_e


def _randomise_biases(torch, module, seed):
    from dall_e.utils import Conv2d

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, Conv2d):
                m.b.normal_(std=0.1, generator=gen)


def _torch_reference(torch, enc, dec, images, vocab_size):
    import torch.nn.functional as F
    from dall_e import map_pixels as torch_map, unmap_pixels as torch_unmap

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        logits = enc(torch_map(x))
        tokens = torch.argmax(logits, dim=1)
        one_hot = F.one_hot(tokens, num_classes=vocab_size).permute(0, 3, 1, 2).float()
        decoded = torch_unmap(torch.sigmoid(dec(one_hot)[:, :3]))
    return (logits.numpy().transpose(0, 2, 3, 1), tokens.numpy().astype("int32"),
            decoded.numpy().transpose(0, 2, 3, 1))


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    base = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    noise = rng.normal(0, 0.05, (n, size, size, 3))
    return np.clip(base[None] + noise, 0, 1).astype("float32")


@pytest.mark.torch
def test_official_pickled_modules_import(tmp_path):
    """torch.save of whole dall_e modules (the format of OpenAI's encoder.pkl / decoder.pkl)."""
    torch, _ = _require_dall_e()
    from dall_e import Decoder, Encoder

    torch.manual_seed(0)
    # The smallest widths dall_e's validators accept.
    enc = Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)
    dec = Decoder(n_init=8, n_hid=64, n_blk_per_group=1, vocab_size=512)
    _randomise_biases(torch, enc, 1)
    _randomise_biases(torch, dec, 2)
    images = _images(2, 32)
    ref_logits, ref_tokens, ref_decoded = _torch_reference(torch, enc, dec, images, 512)

    # Pickles from torch < 1.11 have no Upsample.recompute_scale_factor; mimic that.
    for m in dec.modules():
        if isinstance(m, torch.nn.Upsample) and "recompute_scale_factor" in m.__dict__:
            del m.recompute_scale_factor
    torch.save(enc, tmp_path / "encoder.pkl")
    torch.save(dec, tmp_path / "decoder.pkl")
    vae = load_openai_dvae(tmp_path / "encoder.pkl", tmp_path / "decoder.pkl", image_size=32)
    assert vae.get_config()["n_hid"] == 64 and vae.get_config()["n_init"] == 8
    stats = _compare(vae, images, ref_logits, ref_tokens, ref_decoded)
    assert stats["token_agreement"] >= PICKLE_TOKEN_AGREEMENT_MIN
    assert stats["logits_max_abs_diff"] <= PICKLE_ATOL
    assert stats["decoded_max_abs_diff"] <= PICKLE_ATOL

    # Plain state dicts (.pt, weights_only=True) give the same model.
    torch.save(enc.state_dict(), tmp_path / "encoder.pt")
    torch.save(dec.state_dict(), tmp_path / "decoder.pt")
    vae_pt = load_openai_dvae(tmp_path / "encoder.pt", tmp_path / "decoder.pt", image_size=32)
    for a, b in zip(vae.weights, vae_pt.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
@pytest.mark.torch
def test_full_size_parity_with_dall_e():
    """OpenAI's configuration with random weights, one 256×256 image (slow on CPU)."""
    torch, _ = _require_dall_e()
    from dall_e import Decoder, Encoder

    torch.manual_seed(0)
    enc, dec = Encoder(), Decoder()
    _randomise_biases(torch, enc, 1)
    _randomise_biases(torch, dec, 2)
    assert sum(p.numel() for p in enc.parameters()) == 53_786_240
    assert sum(p.numel() for p in dec.parameters()) == 43_829_766
    images = _images(1, 256)
    ref_logits, ref_tokens, ref_decoded = _torch_reference(torch, enc, dec, images, 8192)
    vae = dvae_from_state_dicts(enc.state_dict(), dec.state_dict())
    del enc, dec
    stats = _compare(vae, images, ref_logits, ref_tokens, ref_decoded)
    print(f"\nfull-size dVAE parity: tokens {100 * stats['token_agreement']:.3f}% | logits max "
          f"abs diff {stats['logits_max_abs_diff']:.3g} (max |logit| "
          f"{np.abs(ref_logits).max():.3g}) | decoded max abs diff "
          f"{stats['decoded_max_abs_diff']:.3g}")
    assert stats["tokens"].shape == (1, 32, 32)
    np.testing.assert_array_equal(stats["tokens"], ref_tokens)  # README: 100% of positions
    assert stats["logits_max_abs_diff"] <= FULL_SIZE_LOGITS_ATOL
    assert stats["decoded_max_abs_diff"] <= FULL_SIZE_DECODED_ATOL
