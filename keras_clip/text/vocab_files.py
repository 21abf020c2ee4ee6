"""Hugging Face tokenizer files for CLIP's BPE vocabulary: write them, and check a folder's.

transformers reads CLIP's tokenizer from a folder holding ``vocab.json`` (token → id),
``merges.txt`` (a ``#version: 0.2`` header, then one merge ``"a b"`` per line, in rank order),
``tokenizer_config.json`` and ``special_tokens_map.json``, or from one ``tokenizer.json`` that
holds the same vocabulary and merges. The layout follows the openai/clip-vit-base-patch32
folder on the Hugging Face hub:

* ids 0..255: the 256 byte characters of :func:`keras_clip.text.tokenizer.bytes_to_unicode`;
  256..511: the same with ``</w>``; 512..49405: the 48,894 merges joined, in rank order;
  49406 ``<|startoftext|>``, 49407 ``<|endoftext|>`` (OpenAI's spelling; open_clip, whose
  SimpleTokenizer our :class:`~keras_clip.text.tokenizer.SimpleTokenizer` follows, writes
  ``<start_of_text>`` / ``<end_of_text>``; the ids are the same).
* bos ``<|startoftext|>``; eos, unk and pad ``<|endoftext|>``; ``model_max_length`` 77.

:func:`write_tokenizer_files` writes these from the vendored vocabulary
(``bpe_simple_vocab_16e6.txt.gz``, no download). :func:`check_tokenizer_files` compares a
folder's files with it, so that a folder whose vocabulary differs is an error rather than a
model that silently reads other ids.

Same vocabulary is not same ids: transformers (5.x: one ``CLIPTokenizer`` class on the
``tokenizers`` library; ``CLIPTokenizerFast`` is the same class) runs no ftfy and no
html.unescape, splits whitespace and lowercases with its own tables, and reads
``<|startoftext|>`` in the text as a special token where OpenAI / open_clip read
``<start_of_text>``. Plain captions tokenise the same; benchmarks/tokenizer_vs_transformers.py
measures and classes the differences.

>>> paths = write_tokenizer_files("/tmp/clip_folder")
>>> check_tokenizer_files("/tmp/clip_folder")
True
"""

import functools
import json
import os

from keras_clip.saving import write_text_atomic
from keras_clip.text.tokenizer import (CONTEXT_LENGTH, VOCAB_SIZE, bytes_to_unicode, load_merges,
                                      vocab_path)

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"


@functools.lru_cache(None)
def _vocabulary():
    """(tokens in id order, merges as "a b" strings in rank order), OpenAI's special spelling."""
    pairs = load_merges(vocab_path())
    chars = list(bytes_to_unicode().values())
    tokens = tuple(chars + [c + "</w>" for c in chars] + ["".join(p) for p in pairs] +
                   [BOS_TOKEN, EOS_TOKEN])  # SimpleTokenizer's order (a test holds them equal)
    merges = tuple(" ".join(p) for p in pairs)
    assert len(tokens) == VOCAB_SIZE and len(merges) == VOCAB_SIZE - 514
    return tokens, merges


@functools.lru_cache(None)
def _encoder():
    return {token: i for i, token in enumerate(_vocabulary()[0])}


def _special(content):
    # As the hub's CLIP files spell an AddedToken (matched after normalisation, i.e. lowercase).
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True, "special": True, "__type": "AddedToken"}


def _tokenizer_config(context_length):
    added = {str(VOCAB_SIZE - 2): dict(_special(BOS_TOKEN)),
             str(VOCAB_SIZE - 1): dict(_special(EOS_TOKEN))}
    for entry in added.values():
        del entry["__type"]
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "bos_token": _special(BOS_TOKEN),
        "eos_token": _special(EOS_TOKEN),
        "unk_token": _special(EOS_TOKEN),
        "pad_token": EOS_TOKEN,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added,
    }


def _special_tokens_map():
    return {"bos_token": _special(BOS_TOKEN), "eos_token": _special(EOS_TOKEN),
            "unk_token": _special(EOS_TOKEN), "pad_token": EOS_TOKEN}


def _image_processor_config(image_size):
    from keras_clip.preprocessing import openai_normalization
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3,  # PIL.Image.BICUBIC
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": openai_normalization()[0],
        "image_std": openai_normalization()[1],
        "do_convert_rgb": True,
    }


def _json(obj, indent=2):
    return json.dumps(obj, ensure_ascii=False, indent=indent) + "\n"


def write_tokenizer_files(folder, context_length=CONTEXT_LENGTH, image_size=None):
    """Writes CLIP's tokenizer files for transformers into `folder` (created if missing).

    ``vocab.json`` (49,408 tokens), ``merges.txt`` (header + 48,894 merges),
    ``tokenizer_config.json`` (``CLIPTokenizer``, ``model_max_length`` = `context_length`) and
    ``special_tokens_map.json`` (bos ``<|startoftext|>``; eos, unk, pad ``<|endoftext|>``), as in
    openai/clip-vit-base-patch32. The folder then loads with transformers'
    ``CLIPTokenizer.from_pretrained(folder)`` / ``CLIPTokenizerFast.from_pretrained(folder)``,
    which give the ids of :func:`keras_clip.tokenize` on text that needs no ftfy / HTML fixing
    (see benchmarks/tokenizer_vs_transformers.py for where they differ). Each file is written
    to a temporary file and renamed, so none is ever half-written.

    Args:
        folder: directory to write into.
        context_length: int >= 2, the ``model_max_length`` (77 for every OpenAI CLIP).
        image_size: None, or an int: the model's input size; then ``preprocessor_config.json``
            (``CLIPImageProcessor``: bicubic resize of the shortest side, centre crop, scale by
            1/255, OpenAI's mean and std) is written too, which ``CLIPProcessor`` needs.

    Returns:
        list of the written paths (str), in the order above.

    Raises:
        ValueError: `context_length` < 2 or `image_size` < 1 (or not integers).
    """
    if int(context_length) != context_length or context_length < 2:
        raise ValueError(f"context_length must be an integer >= 2, got {context_length!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be None or an integer >= 1, got {image_size!r}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tokens, merges = _vocabulary()
    files = [(VOCAB_FILE, _json(_encoder())),
             (MERGES_FILE, "\n".join((MERGES_HEADER,) + merges) + "\n"),
             (TOKENIZER_CONFIG_FILE, _json(_tokenizer_config(int(context_length)))),
             (SPECIAL_TOKENS_MAP_FILE, _json(_special_tokens_map()))]
    if image_size is not None:
        files.append((IMAGE_PROCESSOR_FILE, _json(_image_processor_config(int(image_size)))))
    return [write_text_atomic(os.path.join(folder, name), text) for name, text in files]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _check_vocab(path, vocab):
    """Raises ValueError naming `path` and the first token whose id differs from ours."""
    expected = _encoder()
    if vocab == expected and all(type(i) is int for i in vocab.values()):  # JSON true == 1
        return
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: expected a JSON object of token → id, got "
                         f"{type(vocab).__name__}")
    for token, i in expected.items():  # id order: the first difference is the lowest id
        got = vocab.get(token)
        if got is None:
            raise ValueError(f"{path}: token {token!r} is missing; keras_clip's vocabulary has it "
                             f"as id {i}")
        if got != i or type(got) is not int:
            raise ValueError(f"{path}: token {token!r} has id {got!r}, keras_clip's vocabulary "
                             f"has {i}")
    extra = next(t for t in vocab if t not in expected)
    raise ValueError(f"{path}: {len(vocab)} tokens, keras_clip's vocabulary has {len(expected)}; "
                     f"token {extra!r} (id {vocab[extra]!r}) is not in it")


def _check_merges(path, merges, first_line):
    """`merges`: list of "a b" strings; `first_line`: the file line number of merges[0]."""
    expected = _vocabulary()[1]
    if tuple(merges) == expected:
        return
    where = next((k for k, (a, b) in enumerate(zip(merges, expected)) if a != b),
                 min(len(merges), len(expected)))
    got = repr(merges[where]) if where < len(merges) else "the end of the merges"
    want = repr(expected[where]) if where < len(expected) else "no more merges"
    raise ValueError(f"{path}: {len(expected)} merges expected, found {len(merges)}; first "
                     f"difference at line {first_line + where}: {got}, keras_clip's vocabulary "
                     f"has {want}")


def _read_merges(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    first = 1
    if lines and lines[0].startswith("#version"):
        lines, first = lines[1:], 2
    return [line.rstrip("\r") for line in lines], first


def _check_tokenizer_json(path):
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or "vocab" not in model or "merges" not in model:
        raise ValueError(f"{path}: expected a tokenizers BPE model with 'model' → 'vocab' and "
                         f"'merges'")
    if model.get("type", "BPE") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r}, CLIP's tokenizer is 'BPE'")
    _check_vocab(f"{path} (model.vocab)", model["vocab"])
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in model["merges"]]
    # merges are a JSON list: "line" k is the k-th merge, counted from 1
    _check_merges(f"{path} (model.merges)", merges, 1)


def check_tokenizer_files(folder):
    """Checks a folder's transformers tokenizer files against keras_clip's vocabulary.

    Compares ``vocab.json`` (every token's id) and ``merges.txt`` (every merge, in order; a
    leading ``#version`` line is skipped) and, when present, ``tokenizer.json``'s
    ``model.vocab`` / ``model.merges`` (transformers reads that file first) with the
    vocabulary of :func:`write_tokenizer_files`. ``vocab.json`` and ``merges.txt`` must come
    together: transformers would otherwise invent the missing half. Takes about 0.1-0.3 s.

    Args:
        folder: a directory (e.g. a transformers model folder).

    Returns:
        True if the folder has tokenizer files and they match; False if it has none of
        ``vocab.json``, ``merges.txt``, ``tokenizer.json``.

    Raises:
        ValueError: naming the file and the first difference, e.g. ``…/vocab.json: token
            'hello</w>' has id 3306, keras_clip's vocabulary has 3305`` or ``…/merges.txt:
            48894 merges expected, found 1000; first difference at line 5: …``; also for
            ``vocab.json`` without ``merges.txt`` (or the reverse), invalid JSON or non-UTF-8
            text.
        NotADirectoryError: `folder` is not a directory.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"not a directory: {folder}")
    vocab_path, merges_path, json_path = (os.path.join(folder, name) for name in
                                          (VOCAB_FILE, MERGES_FILE, TOKENIZER_FILE))
    has_vocab, has_merges = os.path.isfile(vocab_path), os.path.isfile(merges_path)
    if has_vocab != has_merges:
        present, absent = (vocab_path, MERGES_FILE) if has_vocab else (merges_path, VOCAB_FILE)
        raise ValueError(f"{present}: found without {absent} in the same folder; CLIP's BPE "
                         f"tokenizer needs both (write them with write_tokenizer_files)")
    if has_vocab:
        _check_vocab(vocab_path, _read_json(vocab_path))
        _check_merges(merges_path, *_read_merges(merges_path))
    if os.path.isfile(json_path):
        _check_tokenizer_json(json_path)
        return True
    return has_vocab
