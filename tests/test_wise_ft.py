"""WiSE-FT (keras_clip/wise_ft.py): weight-space interpolation of two CLIPs."""

import re

import numpy as np
import pytest
import keras

from keras_clip.model import CLIP
from keras_clip.saving import load_model, save_model_atomic
from keras_clip.wise_ft import check_same_architecture, interpolate_weights, main, wise_ft


def _tiny(seed, **overrides):
    keras.utils.set_random_seed(seed)
    return CLIP.from_preset("ViT-Tiny", **overrides)


@pytest.fixture(scope="module")
def pair():
    return _tiny(0), _tiny(1)


def _weights(model):
    return [w.numpy() for w in model.weights]


def test_alpha_0_and_1_are_the_endpoints_bit_for_bit_and_half_is_the_mean(pair):
    a, b = pair
    wa, wb = _weights(a), _weights(b)
    assert any(not np.array_equal(x, y) for x, y in zip(wa, wb))  # the test means something
    for alpha, want in ((0.0, wa), (1.0, wb)):
        got = _weights(wise_ft(a, b, alpha))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    half = _weights(wise_ft(a, b, 0.5))
    for g, x, y in zip(half, wa, wb):
        mean = ((x.astype(np.float64) + y.astype(np.float64)) / 2).astype(x.dtype)
        np.testing.assert_array_equal(g, mean)
    # The endpoints are the models themselves, not only their weights.
    ids = np.zeros((2, a.context_length), np.int32)
    ids[:, 0], ids[:, 1], ids[:, 2] = 49406, 320, 49407
    np.testing.assert_array_equal(wise_ft(a, b, 0.0).encode_text(ids).numpy(),
                                  a.encode_text(ids).numpy())
    # The inputs are left alone.
    for w, x in zip(_weights(a), wa):
        np.testing.assert_array_equal(w, x)


def test_interpolate_weights_endpoints_survive_non_finite_values_and_ints_are_not_averaged():
    a = [np.array([1.0, np.inf], np.float32), np.array([1, 2], np.int64)]
    b = [np.array([np.nan, 3.0], np.float32), np.array([5, 6], np.int64)]
    np.testing.assert_array_equal(interpolate_weights(a, b, 0.0)[0], a[0])
    np.testing.assert_array_equal(interpolate_weights(a, b, 1.0)[0], b[0])
    np.testing.assert_array_equal(interpolate_weights(a, b, 0.25)[1], a[1])
    np.testing.assert_array_equal(interpolate_weights(a, b, 0.5)[1], b[1])
    np.testing.assert_allclose(interpolate_weights([np.float32([0.0, 4.0])],
                                                   [np.float32([4.0, 0.0])], 0.25)[0], [1.0, 3.0])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_0_1_is_refused(pair, alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        wise_ft(*pair, alpha)


def _names(model):
    return [w.path.split("/", 1)[1] for w in model.weights]


def test_different_architectures_name_the_first_weight_only_one_has_or_of_another_shape(pair):
    a = pair[0]
    deeper = _tiny(2, vision_layers=3)  # one more residual block: weights only it has
    extra = [n for n in _names(deeper) if n not in _names(a)]
    assert extra  # the test means something
    with pytest.raises(ValueError, match=rf"the fine-tuned model has a weight '{extra[0]}' .* "
                                         rf"that the zero-shot model does not have \(and "
                                         rf"{len(extra) - 1} more"):
        wise_ft(a, deeper, 0.5)
    with pytest.raises(ValueError, match=rf"the zero-shot model has a weight '{extra[0]}'"):
        check_same_architecture(deeper, a)
    wider = _tiny(3, embed_dim=48)  # same weight names, other shapes
    assert _names(wider) == _names(a)
    x, y = next((x, y) for x, y in zip(a.weights, wider.weights)
                if tuple(x.shape) != tuple(y.shape))
    with pytest.raises(ValueError, match=re.escape(
            f"at weight '{x.path.split('/', 1)[1]}': the zero-shot model has {tuple(x.shape)} "
            f"float32, the fine-tuned model {tuple(y.shape)} float32")):
        check_same_architecture(a, wider)


def test_a_siglip_model_against_a_clip_names_logit_bias_not_a_misaligned_pair(pair, tmp_path,
                                                                                capsys):
    # Was (new-user trial): "differ ... at weight 1: 'visual/class_embedding' vs 'logit_bias'"
    # (weights compared by position; SigLIP's extra logit_bias shifts every later one).
    clip, siglip = pair[0], _tiny(6, logit_bias_init=-10.0)
    with pytest.raises(ValueError, match=r"the fine-tuned model has a weight 'logit_bias' \(\) "
                                         r"float32 that the zero-shot model does not have$"):
        check_same_architecture(clip, siglip)
    with pytest.raises(ValueError, match=r"the zero-shot model has a weight 'logit_bias'"):
        wise_ft(siglip, clip, 0.5)
    pa = save_model_atomic(clip, tmp_path / "clip.keras")
    ps = save_model_atomic(siglip, tmp_path / "siglip.keras")
    with pytest.raises(SystemExit) as e:
        main(["--zero-shot", pa, "--fine-tuned", ps, "--alpha", "0.5",
              "--out", str(tmp_path / "mix.keras")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (f"the fine-tuned model ({ps}) has a weight 'logit_bias' () float32 that the "
            f"zero-shot model ({pa}) does not have") in err
    assert "class_embedding" not in err


def test_same_shapes_but_another_configuration_is_named(pair):
    other_heads = _tiny(4, vision_heads=4)  # every shape alike, another attention split
    with pytest.raises(ValueError, match="configurations differ in.*vision_heads"):
        wise_ft(pair[0], other_heads, 0.5)


def test_cli_writes_the_interpolated_model_and_names_a_mismatch(pair, tmp_path, capsys):
    a, b = pair
    pa, pb = save_model_atomic(a, tmp_path / "a.keras"), save_model_atomic(b, tmp_path / "b.keras")
    out = tmp_path / "mix.keras"
    main(["--zero-shot", pa, "--fine-tuned", pb, "--alpha", "0.25", "--out", str(out)])
    mixed = load_model(str(out), CLIP)
    for g, x, y in zip(_weights(mixed), _weights(a), _weights(b)):
        want = (0.75 * x.astype(np.float64) + 0.25 * y.astype(np.float64)).astype(x.dtype)
        np.testing.assert_array_equal(g, want)
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic
    other = save_model_atomic(_tiny(5, vision_layers=3), tmp_path / "c.keras")
    with pytest.raises(SystemExit) as e:
        main(["--zero-shot", pa, "--fine-tuned", other, "--alpha", "0.5",
              "--out", str(tmp_path / "bad.keras")])
    assert e.value.code == 2
    assert "wise_ft: error: the models differ in architecture" in capsys.readouterr().err
    assert not (tmp_path / "bad.keras").exists()
    with pytest.raises(SystemExit) as e:
        main(["--zero-shot", pa, "--fine-tuned", pb, "--alpha", "2", "--out", str(out)])
    assert e.value.code == 2
    assert "--alpha must be in [0, 1], got 2.0" in capsys.readouterr().err
