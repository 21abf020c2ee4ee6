"""CLIP tokenizer: known ids, context-length rules, errors, the in-graph layer (tf.function,
tf.data, SavedModel) and exact match against OpenAI's reference on the committed corpus
(tests/fixtures/tokenizer_corpus.json.gz, made by tests/fixtures/make_tokenizer_corpus.py)."""

import gzip
import json
import os
import random

import ftfy
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from keras_clip.text.tokenizer import (EOT_TOKEN, SOT_TOKEN, CLIPTokenizer, SimpleTokenizer,
                                       tokenize)

CORPUS = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer_corpus.json.gz")

# Ids (without sot/eot) from open_clip 3.3.0's SimpleTokenizer.encode, copied from its output.
KNOWN = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "Hello, World! It's 2024.": [3306, 267, 1002, 256, 585, 568, 273, 271, 273, 275, 269],
    "IT'S WE'LL they'D": [585, 568, 649, 1342, 889, 1896],
    "café naïve Zürich": [15304, 1097, 35689, 563, 89, 6522, 4021],
    "&amp;lt;b&amp;gt; &quot;hi&quot;": [283, 321, 285, 257, 1883, 257],
    "it’s “quoted”": [585, 568, 257, 27706, 257],
    "<start_of_text>x<end_of_text>": [49406, 343, 49407],
    "ΟΔΥΣΣΕΥΣ σας": [138, 123, 138, 112, 139, 227, 139, 225, 139, 225, 138, 113, 139, 227, 139,
                     480, 139, 225, 138, 109, 139, 480],
    "東京タワー 🐱👍🏽": [48338, 21078, 105, 34941, 2429, 107, 30391, 35710, 43722],
    "  tabs\tand\nnewlines  ": [29163, 537, 1218, 3418],
    "": [],
}

# Inputs that exercise every in-graph step: entities (named, legacy prefix, numeric, invalid),
# ftfy's char fixes, whitespace kinds, final sigma, IGNORECASE folds ('ſ), the unmatched U+0345,
# NUL, characters newer than TF's ICU, special-token strings.
TRICKY = [
    "&notit; &amp &copy2024 &#x41; &#65 &#0; &#128; &#xD800; &#99999999999; &foo; &#59; &;",
    "<b>Tom &amp; Jerry</b> &AMP; &EACUTE;", "line &amp;amp;\n<i>x</i> &amp;amp;",
    "ﬁ ＡＢＣ１２ ｶﾀｶﾅ ‘quote’ „x‟ \x93smart\x94 \x85", "a\r\nb\rc\u2028d\x85e\x1b[31mred\x1b[0m",
    "x\x00y\x07z\ufeff\u200b", "tab\tnbsp\u00a0ideo\u3000sep\x1c\x1dend  ",
    "ΣΑΣ. ΑΣ'Β ΑΣ\u0301 ΣΣ Σ ΑΣ1 ǅΣ Ⱟ ΣⰯ \U00010570Σ", "'ſ '<ſtart_of_text> <START_OF_TEXT>",
    "α\u0345β A\u0345B", "İstanbul ẞ K Å ǰ", "e\u0301\u0301 cafe\u0301", "٣٤٥ ४२ ² ½ Ⅻ",
    "👨‍👩‍👧 🇯🇵 1️⃣", "rock'n'roll 'S 'LL o'clock ''s", "x" * 300,
]


@pytest.fixture(scope="module")
def python_tokenizer():
    return SimpleTokenizer()


@pytest.fixture(scope="module")
def graph_tokenize():
    """A traced CLIPTokenizer with room for any corpus text (no truncation)."""
    fn = tf.function(CLIPTokenizer(context_length=400),
                     input_signature=[tf.TensorSpec([None], tf.string)])

    def run(texts, batch_size=512):
        rows = np.concatenate([fn(tf.constant(texts[i:i + batch_size])).numpy()
                               for i in range(0, len(texts), batch_size)])
        return [row[1:int(np.flatnonzero(row == EOT_TOKEN)[-1])].tolist() for row in rows]
    return run


@pytest.fixture(scope="module")
def corpus():
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("text", list(KNOWN))
def test_python_encode_gives_reference_ids(python_tokenizer, text):
    assert python_tokenizer.encode(text) == KNOWN[text]


def test_in_graph_gives_reference_ids(graph_tokenize):
    assert graph_tokenize(list(KNOWN)) == list(KNOWN.values())


def test_tokenize_wraps_in_sot_eot_and_zero_pads():
    out = tokenize(["a photo of a cat", "a dog"], context_length=8)
    assert out.dtype == np.int32 and out.shape == (2, 8)
    np.testing.assert_array_equal(out, [[SOT_TOKEN, 320, 1125, 539, 320, 2368, EOT_TOKEN, 0],
                                        [SOT_TOKEN, 320, 1929, EOT_TOKEN, 0, 0, 0, 0]])
    np.testing.assert_array_equal(tokenize("a dog", context_length=8), out[1:])


def test_decode_inverts_encode_up_to_cleaning(python_tokenizer):
    ids = python_tokenizer.encode("Hello, World! Zürich 東京")
    assert python_tokenizer.decode(ids) == "hello , world ! zürich 東京 "


def test_too_long_text_raises_naming_text_and_lengths():
    text = "a photo of a cat " * 30
    with pytest.raises(ValueError) as info:
        tokenize(["ok", text])
    message = str(info.value)
    assert repr(text[:60]) in message
    assert "got 152 tokens" in message and "context_length 77" in message


@pytest.mark.parametrize("context_length", [5, 77])
def test_truncate_keeps_eot_last_in_both_paths(context_length):
    text = "one two three four five six seven eight nine ten " * 10
    ids = [SOT_TOKEN] + SimpleTokenizer().encode(text) + [EOT_TOKEN]
    expected = ids[:context_length - 1] + [EOT_TOKEN]
    np.testing.assert_array_equal(tokenize(text, context_length, truncate=True)[0], expected)
    layer = CLIPTokenizer(context_length=context_length)  # truncate=True by default
    np.testing.assert_array_equal(layer(tf.constant([text])).numpy()[0], expected)


def test_in_graph_truncate_false_fails_the_batch_on_a_long_text():
    layer = CLIPTokenizer(context_length=6, truncate=False)
    np.testing.assert_array_equal(layer(tf.constant(["a cat"])).numpy()[0],
                                  [SOT_TOKEN, 320, 2368, EOT_TOKEN, 0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 4 tokens"):
        layer(tf.constant(["a cat", "one two three four five"]))


@pytest.mark.parametrize("bad", [3, b"bytes", ["ok", None], ["ok", b"x"]])
def test_non_string_input_raises_type_error(bad):
    with pytest.raises(TypeError, match="str"):
        tokenize(bad)


def test_in_graph_equals_python_on_tricky_strings(graph_tokenize, python_tokenizer):
    assert graph_tokenize(TRICKY) == [python_tokenizer.encode(t) for t in TRICKY]


def test_in_graph_equals_python_on_random_tricky_strings(graph_tokenize, python_tokenizer):
    """Random mixes of the pieces where the two paths could part (entities, Σ, folds, width,
    controls, line breaks, newer-than-ICU letters); only ftfy-clean ones are promised equal."""
    atoms = ["&", "#", ";", "x", "amp", "lt", "not", "notin", "copy", "AMP", "EACUTE", "0", "1",
             "9", "3B", "a", "A", "<", ">", "\n", "\r", "\r\n", " ", "\t", "'", "s", "S", "ll",
             "Σ", "σ", "ς", "\u0345", "\u0301", "ſ", "İ", "\x85", "\x92", "\x00", "\x1b[1m",
             "“", "’", "ﬁ", "Ａ", "\u3000", "\xa0", "\u2028", "\x1c", "\ufeff", "\u200b", "é",
             "東", "😀", "\u2c2f", "\U00010570", "ǅ", "ᾼ", "٣", "²", "<start_of_text>", "_", "&#",
             "&#x", "&#128", "&#1114112", "&#xD800", "nbsp", "NotEqualTilde", "ß", "ẞ", "K"]
    rng = random.Random(7)
    texts = ["".join(rng.choices(atoms, k=rng.randint(0, 25))) for _ in range(2000)]
    clean = [t for t in texts if ftfy.fix_text(t) == t]
    assert len(clean) > 300
    assert graph_tokenize(clean) == [python_tokenizer.encode(t) for t in clean]


def test_in_graph_unescapes_up_to_10_nested_html_levels(graph_tokenize, python_tokenizer):
    """README: ftfy's fix loop is capped at 8 rounds in-graph; with the two html.unescape calls
    after it, up to 10 levels of nested escaping match the Python path and the 11th differs."""
    def nested(levels):  # "&lt;" is one level, "&amp;lt;" two, ...
        return "fish &" + "amp;" * (levels - 1) + "lt;chips"
    texts = [nested(levels) for levels in (1, 10, 11)]
    got, want = graph_tokenize(texts), [python_tokenizer.encode(t) for t in texts]
    assert got[:2] == want[:2] and got[2] != want[2]
    assert want[0] == want[1] == want[2]  # Python unescapes every level


def test_in_graph_reads_invalid_utf8_like_decode_replace():
    raw = [b"\xff\xfe abc", b"caf\xc3", b"\xc3\xa9\x80x", b"ab\xedA\x80\x80c", b"\xf0\x9f\x98",
           b"\xed\xa0\x80x", b"\xf4\x90\x80\x80", b"\xc0\xaf"]
    np.testing.assert_array_equal(CLIPTokenizer()(tf.constant(raw)).numpy(),
                                  tokenize([b.decode("utf-8", "replace") for b in raw]))


def test_in_graph_accepts_scalar_and_empty_batch():
    layer = CLIPTokenizer()
    np.testing.assert_array_equal(layer(tf.constant("a photo of a cat")).numpy(),
                                  tokenize("a photo of a cat"))
    assert layer(tf.constant([], tf.string)).shape == (0, 77)


def test_in_graph_accepts_python_lists_of_str_like_the_tensor():
    # Was: ValueError "Only input tensors may be passed as positional arguments" for a list.
    layer, texts = CLIPTokenizer(), ["a photo of a cat", "café ΟΔΥΣΣΕΥΣ", ""]
    want = layer(tf.constant(texts)).numpy()
    np.testing.assert_array_equal(layer(texts).numpy(), want)
    np.testing.assert_array_equal(layer(tuple(texts)).numpy(), want)
    np.testing.assert_array_equal(layer([t.encode() for t in texts]).numpy(), want)
    np.testing.assert_array_equal(layer(texts[0]).numpy(), want[:1])
    assert layer([]).shape == (0, 77)
    with pytest.raises(TypeError, match="item 1 is int: 3"):
        layer(["a cat", 3])


def test_in_graph_runs_in_tf_data_map():
    texts = ["a photo of a cat", "Hello, World! It's 2024.", "ΟΔΥΣΣΕΥΣ", ""]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(3).map(CLIPTokenizer())
    out = np.concatenate([batch.numpy() for batch in ds])
    np.testing.assert_array_equal(out, tokenize(texts))


def test_in_graph_survives_saved_model_round_trip(tmp_path):
    module = tf.Module()
    module.tokenizer = CLIPTokenizer(context_length=32)
    module.serve = tf.function(lambda x: module.tokenizer(x),
                               input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path))
    import tensorflow_text  # noqa: F401  (registers the TF Text ops for loading)
    loaded = tf.saved_model.load(str(tmp_path))
    texts = tf.constant(TRICKY)
    np.testing.assert_array_equal(loaded.serve(texts).numpy(), module.serve(texts).numpy())
    # Stock TF Serving links TF core + TF Text ops only: nothing else may appear.
    saved = saved_model_pb2.SavedModel.FromString((tmp_path / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    ops -= {f.signature.name for f in graph.library.function}
    assert {op for op in ops if not hasattr(tf.raw_ops, op)} <= {"RegexSplitWithOffsets",
                                                                 "NormalizeUTF8"}


def test_get_config_round_trips():
    layer = CLIPTokenizer(context_length=64, truncate=False, name="tok")
    config = layer.get_config()
    assert config["context_length"] == 64 and config["truncate"] is False
    clone = CLIPTokenizer.from_config(config)
    assert (clone.context_length, clone.truncate, clone.name) == (64, False, "tok")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, CLIPTokenizer) and restored.context_length == 64


def test_corpus_fixture_is_large_labelled_and_flagged(corpus):
    n = len(corpus["texts"])
    # README ("Tokenizer"): 12,300 strings in 26 categories, 9,318 of them need no ftfy repair.
    assert n == 12_300 and len(corpus["categories"]) == len(corpus["ids"]) == n
    assert len(set(corpus["categories"])) == 26
    assert sum(corpus["ftfy_clean"]) == 9_318
    assert max(map(len, corpus["ids"])) + 2 <= 400  # graph_tokenize never truncates


def test_python_path_matches_reference_corpus_exactly(corpus):
    tok = SimpleTokenizer()
    bad = [t for t, ids in zip(corpus["texts"], corpus["ids"]) if tok.encode(t) != ids]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"


def test_in_graph_matches_reference_corpus_on_ftfy_clean_strings(corpus, graph_tokenize):
    clean = [i for i, ok in enumerate(corpus["ftfy_clean"]) if ok]
    got = graph_tokenize([corpus["texts"][i] for i in clean])
    bad = [corpus["texts"][i] for i, ids in zip(clean, got) if ids != corpus["ids"][i]]
    assert not bad, f"{len(bad)} of {len(clean)} clean strings differ, e.g. {bad[:3]!r}"


def test_in_graph_matches_reference_corpus_except_mojibake(corpus, graph_tokenize):
    """ftfy's character-level fixes run in-graph too: only mojibake repair is missing."""
    keep = [i for i, c in enumerate(corpus["categories"]) if c != "mojibake"]
    got = graph_tokenize([corpus["texts"][i] for i in keep])
    bad = [corpus["texts"][i] for i, ids in zip(keep, got) if ids != corpus["ids"][i]]
    assert not bad, f"{len(bad)} of {len(keep)} strings differ, e.g. {bad[:3]!r}"


def test_in_graph_matches_16_of_the_400_mojibake_strings(corpus, graph_tokenize):
    """README's in-graph rates, exactly: mojibake 16 / 400 = 4.00%, so with every other
    category exact (above) all 12,300 strings give (12,300 − 400 + 16) / 12,300 = 96.88%."""
    moji = [i for i, c in enumerate(corpus["categories"]) if c == "mojibake"]
    got = graph_tokenize([corpus["texts"][i] for i in moji])
    matches = sum(ids == corpus["ids"][i] for i, ids in zip(moji, got))
    assert (matches, len(moji)) == (16, 400)
    total = len(corpus["texts"])
    assert f"{100 * (total - len(moji) + matches) / total:.2f}" == "96.88"
