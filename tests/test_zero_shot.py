"""Zero-shot classifier: shipped ImageNet data, template ensembling math, predictions."""

import keras
import numpy as np
import pytest

from keras_clip.zero_shot import (IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES,
                                  SIMPLE_IMAGENET_TEMPLATES, predict_zero_shot,
                                  zero_shot_classifier)

DIM = 8


class PromptTokenizer:
    """Stub tokenizer: each distinct prompt gets its own id in position 0 (then zeros)."""

    def __init__(self):
        self.ids = {}

    def __call__(self, texts):
        tokens = np.zeros((len(texts), 77), np.int32)  # (B, 77)
        for i, text in enumerate(texts):
            tokens[i, 0] = self.ids.setdefault(text, len(self.ids))
        return tokens


class FakeCLIP:
    """Tiny stand-in for a CLIP model, in Keras ops.

    encode_text: row `tokens[:, 0]` of a random table whose rows have very different norms
    (so normalising before the template mean matters). encode_image: flattens (B, 1, 1, D).
    """

    def __init__(self, vocab=4096, seed=0):
        rng = np.random.default_rng(seed)
        table = rng.normal(size=(vocab, DIM)) * rng.uniform(0.1, 10.0, size=(vocab, 1))
        self.table = keras.ops.convert_to_tensor(table.astype(np.float32))
        self.logit_scale = keras.Variable(np.log(1 / 0.07), dtype="float32")
        self.text_calls = []

    def encode_text(self, tokens):
        self.text_calls.append(tokens.shape)
        return keras.ops.take(self.table, keras.ops.convert_to_tensor(tokens[:, 0]), axis=0)

    def encode_image(self, images):
        images = keras.ops.convert_to_tensor(images)
        return keras.ops.reshape(images, (images.shape[0], -1))  # (B, D)


def reference_classifier(model, tokenizer, classnames, templates):
    """OpenAI's notebook, literally: normalise, mean over templates, renormalise, stack."""
    table = keras.ops.convert_to_numpy(model.table).astype(np.float64)
    columns = []
    for name in classnames:
        ids = tokenizer([t.format(name) for t in templates])[:, 0]
        emb = table[ids]
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        mean = emb.mean(axis=0)
        columns.append(mean / np.linalg.norm(mean))
    return np.stack(columns, axis=1)  # (D, C)


def test_shipped_imagenet_data():
    assert len(IMAGENET_CLASSNAMES) == 1000
    assert IMAGENET_CLASSNAMES[0] == "tench" and IMAGENET_CLASSNAMES[281] == "tabby cat"
    assert IMAGENET_CLASSNAMES[-1] == "toilet paper"
    assert all(n == n.strip() and n for n in IMAGENET_CLASSNAMES)
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(OPENAI_IMAGENET_TEMPLATES))
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)
    assert len(SIMPLE_IMAGENET_TEMPLATES) == 7
    assert set(SIMPLE_IMAGENET_TEMPLATES) <= set(OPENAI_IMAGENET_TEMPLATES)
    assert OPENAI_IMAGENET_TEMPLATES[0].format("goldfish") == "a bad photo of a goldfish."


@pytest.mark.parametrize("batch_size", [1, 5, 256])
def test_classifier_is_renormalised_mean_of_normalised_embeddings(batch_size):
    model, tokenizer = FakeCLIP(), PromptTokenizer()
    classnames = ["cat", "dog", "car", "tree"]
    templates = list(SIMPLE_IMAGENET_TEMPLATES)
    weights = zero_shot_classifier(model, classnames, templates, batch_size=batch_size,
                                   tokenizer=tokenizer)
    assert weights.shape == (DIM, 4) and weights.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(weights, axis=0), 1.0, rtol=1e-6)
    expected = reference_classifier(model, tokenizer, classnames, templates)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    # Not the same as averaging unnormalised embeddings (the rows' norms differ a lot).
    table = keras.ops.convert_to_numpy(model.table)
    ids = tokenizer([t.format("cat") for t in templates])[:, 0]
    naive = table[ids].mean(0) / np.linalg.norm(table[ids].mean(0))
    assert np.abs(naive - weights[:, 0]).max() > 1e-2
    # Batches: every call carries at most batch_size prompts of 77 tokens.
    assert all(s[0] <= batch_size and s[1] == 77 for s in model.text_calls)
    assert sum(s[0] for s in model.text_calls) == len(classnames) * len(templates)


def test_templates_may_be_callables_or_a_single_string():
    model, tokenizer = FakeCLIP(), PromptTokenizer()
    as_strings = zero_shot_classifier(model, ["cat", "dog"], ["a photo of a {}.", "art of {}"],
                                      tokenizer=tokenizer)
    as_callables = zero_shot_classifier(
        model, ["cat", "dog"], [lambda c: f"a photo of a {c}.", lambda c: f"art of {c}"],
        tokenizer=tokenizer)
    np.testing.assert_array_equal(as_strings, as_callables)
    single = zero_shot_classifier(model, ["cat"], "a photo of a {}.", tokenizer=tokenizer)
    table = keras.ops.convert_to_numpy(model.table)
    row = table[tokenizer(["a photo of a cat."])[0, 0]]
    np.testing.assert_allclose(single[:, 0], row / np.linalg.norm(row), atol=1e-6)


def test_default_templates_are_the_80_openai_ones():
    model, tokenizer = FakeCLIP(), PromptTokenizer()
    zero_shot_classifier(model, ["cat", "dog"], tokenizer=tokenizer)
    assert len(tokenizer.ids) == 160
    assert "a bad photo of a cat." in tokenizer.ids and "a toy dog." in tokenizer.ids


def test_empty_inputs_raise():
    with pytest.raises(ValueError, match="at least one class"):
        zero_shot_classifier(FakeCLIP(), [], tokenizer=PromptTokenizer())


@pytest.mark.parametrize("template, message", [
    ("a photo", "template 'a photo' has no '{}' for the class name: every class would get the same"),
    ("a {{}} photo", "template 'a {{}} photo' has no '{}'"),
    ("a {} and a {}", "template 'a {} and a {}' is not a format string with one '{}'"),
    ("a {name}", "template 'a {name}' is not a format string with one '{}'"),
])
def test_a_template_without_a_place_for_the_class_name_raises(template, message):
    # Was: accepted, every class getting the same prompt (and the same classifier column).
    model, tokenizer = FakeCLIP(), PromptTokenizer()
    templates = ["a photo of a {}.", template]
    with pytest.raises(ValueError) as err:
        zero_shot_classifier(model, ["cat", "dog"], templates, tokenizer=tokenizer)
    assert message in str(err.value)
    assert not tokenizer.ids and not model.text_calls  # checked before any encoding
    with pytest.raises(ValueError, match="has no"):  # also with one class, where it cannot show
        zero_shot_classifier(model, ["cat"], "a photo", tokenizer=tokenizer)
    with pytest.raises(TypeError, match="format strings with '{}' or callables, got bytes"):
        zero_shot_classifier(model, ["cat"], [b"a {}"], tokenizer=tokenizer)


def test_predict_probabilities_and_top_class():
    model, tokenizer = FakeCLIP(), PromptTokenizer()
    classnames = [f"class {i}" for i in range(6)]
    weights = zero_shot_classifier(model, classnames, SIMPLE_IMAGENET_TEMPLATES,
                                   tokenizer=tokenizer)  # (D, 6)
    # Image embeddings equal (up to scale) to class 4's and class 1's text embedding.
    images = np.stack([3.0 * weights[:, 4], 0.5 * weights[:, 1]])[:, None, None, :]  # (2,1,1,D)
    probs = predict_zero_shot(model, images.astype(np.float32), weights)
    assert probs.shape == (2, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert list(probs.argmax(axis=1)) == [4, 1]
    # Default scale is 100 · cosine.
    logits = 100.0 * weights[:, [4, 1]].T @ weights
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_predict_logit_scale_options_and_batching():
    model = FakeCLIP()
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(DIM, 5))
    weights /= np.linalg.norm(weights, axis=0)
    images = rng.normal(size=(7, 1, 1, DIM)).astype(np.float32)
    feats = images.reshape(7, DIM) / np.linalg.norm(images.reshape(7, DIM), axis=1, keepdims=True)

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    got = predict_zero_shot(model, images, weights, logit_scale="model")
    np.testing.assert_allclose(got, softmax((1 / 0.07) * feats @ weights), atol=1e-5)
    got = predict_zero_shot(model, images, weights, logit_scale=5.0, batch_size=3)
    np.testing.assert_allclose(got, softmax(5.0 * feats @ weights), atol=1e-5)
    with pytest.raises(ValueError, match="logit_scale"):
        predict_zero_shot(model, images, weights, logit_scale="exp")
    with pytest.raises(ValueError, match="dim"):
        predict_zero_shot(model, images, weights[:4])


def test_with_the_real_tokenizer():
    from keras_clip.text import tokenizer as tokenizer_module

    class SumOfTokens(FakeCLIP):
        def encode_text(self, tokens):  # any (B, 77) ids from the real BPE tokenizer
            assert tokens.shape[1] == 77 and tokens.dtype == np.int32
            onehot = keras.ops.one_hot(keras.ops.convert_to_tensor(tokens % 4096), 4096)
            return keras.ops.einsum("btv,vd->bd", onehot, self.table)

    model = SumOfTokens()
    weights = zero_shot_classifier(model, ["cat", "dog"], SIMPLE_IMAGENET_TEMPLATES)
    assert weights.shape == (DIM, 2)
    tokens = tokenizer_module.tokenize([t.format("dog") for t in SIMPLE_IMAGENET_TEMPLATES])
    emb = keras.ops.convert_to_numpy(model.encode_text(np.asarray(tokens, np.int32)))
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(weights[:, 1], emb.mean(0) / np.linalg.norm(emb.mean(0)),
                               atol=1e-6)
