"""CLIP.compile(text_padding=...): training steps cut the token ids after the batch's longest
text (keras_clip.text.transformer.pad_to_longest) without changing the loss or the update."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.model import CLIP
from keras_clip.text.transformer import pad_to_longest

EOT = 49407


def _tokens(lengths, context_length=77, seed=0):
    """Rows of BOS, random ids, EOT (at index ``n + 1`` for each n in ``lengths``), zeros."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), context_length), np.int32)
    for i, n in enumerate(lengths):
        ids[i, : n + 2] = [49406, *rng.integers(1, 49000, n), EOT]
    return ids


@pytest.mark.parametrize("lengths, multiple, want", [
    ([3, 18], 16, 32),    # last EOT at 19 → 20 needed → 32
    ([1, 2], 16, 16),     # 4 needed → 16
    ([14], 16, 16),       # exactly 16 needed
    ([3, 18], 8, 24),
    ([75], 16, 77),       # EOT at 76: the whole context, never more
    ([3, 18], 1, 20),
])
def test_pad_to_longest_cuts_after_the_last_eot_in_whole_multiples(lengths, multiple, want):
    ids = _tokens(lengths)
    out = pad_to_longest(ids, multiple=multiple)
    assert out.shape == (len(lengths), want)
    np.testing.assert_array_equal(out.numpy(), ids[:, :want])
    # in a graph the static length is unknown and the cut is taken at run time
    fn = tf.function(lambda x: pad_to_longest(x, multiple=multiple),
                     input_signature=[tf.TensorSpec((None, 77), tf.int32)])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, None]
    assert fn(ids).shape == (len(lengths), want)


def _pair_of_models(text_padding_a, text_padding_b, xla_towers):
    keras.utils.set_random_seed(0)
    a = CLIP.from_preset("ViT-Tiny")
    b = CLIP.from_preset("ViT-Tiny")
    b.set_weights(a.get_weights())
    for model, padding in ((a, text_padding_a), (b, text_padding_b)):
        model.compile(keras.optimizers.SGD(0.5), text_padding=padding, xla_towers=xla_towers,
                      xla_optimizer=False)
    return a, b


@pytest.mark.parametrize("xla_towers", [False, True])
def test_text_padding_longest_trains_exactly_as_max_length(xla_towers):
    """Two fit steps from the same weights on batches whose longest texts need 16 and 32
    columns: the losses and every updated weight agree with the full 77-position run (the
    XLA tower function sees two new lengths)."""
    longest, full = _pair_of_models("longest", "max_length", xla_towers)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
    ids = np.stack([_tokens([2, 9, 1, 5], seed=2), _tokens([20, 5, 3, 7], seed=3)])
    data = tf.data.Dataset.from_tensor_slices({"images": images, "token_ids": ids})
    h_longest = longest.fit(data, epochs=1, verbose=0).history["loss"]
    h_full = full.fit(data, epochs=1, verbose=0).history["loss"]
    # measured (graph / XLA towers): losses 0 / 6.4e-8 apart (relative), weights 1.2e-7 / 1.8e-6
    np.testing.assert_allclose(h_longest, h_full, rtol=3e-7)
    moved = 0
    for w_l, w_f, w0 in zip(longest.weights, full.weights, _pair_of_models(
            "max_length", "max_length", False)[0].weights):
        np.testing.assert_allclose(w_l.numpy(), w_f.numpy(), rtol=0, atol=6e-6, err_msg=w_l.path)
        moved += not np.allclose(w_f.numpy(), w0.numpy())
    assert moved > 10  # the steps did update the towers (the comparison is not of two no-ops)


def test_text_padding_longest_runs_the_text_tower_on_the_cut_ids_only():
    model = CLIP.from_preset("ViT-Tiny")
    model.compile("sgd", xla_towers=False)  # "longest" is the default
    seen = []
    call = model.text.call
    model.text.call = lambda token_ids, **kw: (seen.append(tuple(token_ids.shape)),
                                               call(token_ids, **kw))[1]
    images = np.zeros((2, 32, 32, 3), np.float32)
    model._towers(images, _tokens([3, 10]), False)
    model.compile("sgd", xla_towers=False, text_padding="max_length")
    model._towers(images, _tokens([3, 10]), False)
    assert seen == [(2, 16), (2, 77)]


def test_text_padding_is_validated_and_kept_in_the_compile_config(tmp_path):
    model = CLIP.from_preset("ViT-Tiny")
    with pytest.raises(ValueError, match='text_padding must be "longest" or "max_length", '
                                         "got 'shortest'"):
        model.compile("sgd", text_padding="shortest")
    model.compile("sgd", text_padding="max_length")
    assert model.get_compile_config()["text_padding"] == "max_length"
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.saving.load_model(path).text_padding == "max_length"


def test_zero_shot_classifier_cuts_prompts_of_a_causal_text_tower_without_changing_it():
    from keras_clip.zero_shot import zero_shot_classifier
    model = CLIP.from_preset("ViT-Tiny")
    seen = []

    class Plain:  # only encode_text: no text_encoder attribute, so nothing is cut
        def encode_text(self, tokens):
            seen.append(tokens.shape[1])
            return model.encode_text(tokens)

    call = model.text.call
    model.text.call = lambda token_ids, **kw: (seen.append(token_ids.shape[1]),
                                               call(token_ids, **kw))[1]
    names, templates = ["cat", "dog", "school bus"], ["a photo of a {}.", "a {} in the snow."]
    cut = zero_shot_classifier(model, names, templates)
    assert seen == [16]  # one chunk, longest prompt 9 tokens → 16 columns
    seen.clear()
    full = zero_shot_classifier(Plain(), names, templates)
    assert seen[0] == 77
    np.testing.assert_allclose(cut, full, atol=1e-6)


def test_ids_wider_than_the_context_are_refused_before_the_cut_hides_them():
    """Short captions in 100-column ids would fit after the cut; the width is still an error,
    named at the first step (and by zero_shot_classifier), not a shape clash at a long caption."""
    from keras_clip.zero_shot import zero_shot_classifier
    model = CLIP.from_preset("ViT-Tiny")
    model.compile("sgd")  # text_padding="longest"
    data = tf.data.Dataset.from_tensors({"images": np.zeros((2, 32, 32, 3), np.float32),
                                         "token_ids": _tokens([3, 5], context_length=100)})
    msg = "token_ids are 100 long; this model's context_length is 77"
    with pytest.raises(ValueError, match=msg):
        model.fit(data, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=msg):
        zero_shot_classifier(model, ["cat"], ["a {}."],
                             tokenizer=lambda texts: _tokens([3] * len(texts), context_length=100))


def test_pad_to_longest_names_bad_arguments():
    with pytest.raises(ValueError, match=r"token_ids must be rank 2 \(B, T\), got shape \(77,\)"):
        pad_to_longest(np.zeros(77, np.int32))
    with pytest.raises(ValueError, match="multiple must be an int >= 1, got 0"):
        pad_to_longest(_tokens([3]), multiple=0)


@pytest.mark.parametrize("option, value, msg", [
    ("xla_towers", 1, 'xla_towers must be True, False or "auto", got 1'),
    ("xla_towers", "on", 'xla_towers must be True, False or "auto", got \'on\''),
    ("xla_optimizer", "no", "xla_optimizer must be True or False, got 'no'"),
    ("xla_optimizer", None, "xla_optimizer must be True or False, got None"),
])
def test_compile_refuses_option_values_of_the_wrong_type(option, value, msg):
    model = CLIP.from_preset("ViT-Tiny")
    with pytest.raises(ValueError, match=msg):
        model.compile("sgd", **{option: value})


def test_train_cli_refuses_no_xla_with_xla_towers_on(capsys):
    from keras_clip import train
    with pytest.raises(SystemExit):
        train.main(["--no-xla", "--xla-towers", "on", "--epochs", "1"])
    assert "--no-xla contradicts --xla-towers on" in capsys.readouterr().err
