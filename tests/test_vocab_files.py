"""keras_clip.text.vocab_files: transformers' tokenizer files written from our vocabulary, and
a folder's files checked against it (a mismatch is a ValueError naming the file)."""

import importlib.util
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_clip.text.tokenizer import SimpleTokenizer, tokenize
from keras_clip.text.vocab_files import check_tokenizer_files, write_tokenizer_files

NAMES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    paths = write_tokenizer_files(folder)
    return folder, paths


def _copy(src, dst, names=("vocab.json", "merges.txt")):
    os.makedirs(dst, exist_ok=True)
    for name in names:
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


def _lines(folder):
    with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
        return f.read().split("\n")


def _write_lines(folder, lines):
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _vocab(folder):
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        return json.load(f)


def _write_vocab(folder, vocab):
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)


def test_written_files_match_our_vocabulary(written):
    folder, paths = written
    assert paths == [os.path.join(folder, n) for n in NAMES]
    assert sorted(os.listdir(folder)) == sorted(NAMES)  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert all(os.stat(p).st_mode & 0o777 == 0o666 & ~umask for p in paths)
    assert check_tokenizer_files(folder) is True

    vocab = _vocab(folder)
    ours = SimpleTokenizer()
    assert len(vocab) == 49408 and len(set(vocab.values())) == 49408
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:-2] == ours.vocab[:-2]
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert [vocab[t] for t in ("hello</w>", ",</w>", "world</w>", "!</w>")] == \
        ours.encode("Hello, World!")
    lines = _lines(folder)
    assert lines[0] == "#version: 0.2" and lines[-1] == "" and len(lines) == 1 + 48894 + 1
    assert lines[1:3] == ["i n", "t h"]

    with open(paths[2], encoding="utf-8") as f:
        config = json.load(f)
    assert config["model_max_length"] == 77 and config["tokenizer_class"] == "CLIPTokenizer"
    assert config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"]["content"] == "<|startoftext|>"
    assert config["eos_token"]["content"] == config["unk_token"]["content"] == "<|endoftext|>"
    with open(paths[3], encoding="utf-8") as f:
        special = json.load(f)
    assert special["pad_token"] == "<|endoftext|>"
    assert special["bos_token"]["content"] == "<|startoftext|>"


def test_rewrite_and_image_processor_config(written, tmp_path):
    folder = _copy(written[0], tmp_path / "again", NAMES)
    paths = write_tokenizer_files(folder, context_length=32, image_size=96)  # overwrites
    assert os.path.basename(paths[-1]) == "preprocessor_config.json"
    assert sorted(os.listdir(folder)) == sorted(NAMES + ["preprocessor_config.json"])
    with open(paths[-1], encoding="utf-8") as f:
        image = json.load(f)
    assert image["size"] == {"shortest_edge": 96}
    assert image["crop_size"] == {"height": 96, "width": 96} and image["resample"] == 3
    with open(paths[2], encoding="utf-8") as f:
        assert json.load(f)["model_max_length"] == 32
    assert check_tokenizer_files(folder)


@pytest.mark.parametrize("kwargs", [dict(context_length=1), dict(context_length=7.5),
                                    dict(image_size=0), dict(image_size=2.5)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        write_tokenizer_files(tmp_path, **kwargs)
    assert os.listdir(tmp_path) == []


def test_changed_id_is_named(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    vocab = _vocab(folder)
    vocab["hello</w>"], vocab["world</w>"] = vocab["world</w>"], vocab["hello</w>"]
    _write_vocab(folder, vocab)
    path = os.path.join(folder, "vocab.json")
    first = min(vocab["hello</w>"], vocab["world</w>"])  # the lower original id comes first
    token = "hello</w>" if first == vocab["world</w>"] else "world</w>"
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: token '{token}' has id "
                                         rf"{vocab[token]}, keras_clip's vocabulary has {first}$"):
        check_tokenizer_files(folder)


def test_bool_id_is_not_one(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    vocab = _vocab(folder)
    token = next(t for t, i in vocab.items() if i == 1)
    vocab[token] = True  # JSON true == 1 in Python
    _write_vocab(folder, vocab)
    with pytest.raises(ValueError, match=r"vocab\.json: token .* has id True"):
        check_tokenizer_files(folder)


def test_missing_and_extra_tokens_are_named(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    vocab = _vocab(folder)
    del vocab["<|startoftext|>"]
    vocab["<start_of_text>"] = 49406  # open_clip's spelling is not transformers'
    _write_vocab(folder, vocab)
    with pytest.raises(ValueError, match=r"vocab\.json: token '<\|startoftext\|>' is missing"):
        check_tokenizer_files(folder)
    vocab = _vocab(written[0])
    vocab["not-a-token</w>"] = 49408
    _write_vocab(folder, vocab)
    with pytest.raises(ValueError, match=r"vocab\.json: 49409 tokens, keras_clip's vocabulary has "
                                         r"49408; token 'not-a-token</w>' \(id 49408\) is not "
                                         r"in it"):
        check_tokenizer_files(folder)


def test_dropped_merge_is_named(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    lines = _lines(folder)
    _write_lines(folder, lines[:4] + lines[5:])  # drops file line 5 (the 4th merge)
    path = os.path.join(folder, "merges.txt")
    with pytest.raises(ValueError, match=re.escape(
            f"{path}: 48894 merges expected, found 48893; first difference at line 5: "
            f"{lines[5]!r}, keras_clip's vocabulary has {lines[4]!r}") + "$"):
        check_tokenizer_files(folder)


def test_reordered_and_truncated_merges_are_named(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    lines = _lines(folder)
    swapped = list(lines)
    swapped[100], swapped[101] = lines[101], lines[100]
    _write_lines(folder, swapped)
    with pytest.raises(ValueError, match=r"merges\.txt: 48894 merges expected, found 48894; first "
                                         r"difference at line 101:"):
        check_tokenizer_files(folder)
    _write_lines(folder, lines[:1001])  # header + 1000 merges: the end comes first
    with pytest.raises(ValueError, match=r"found 1000; first difference at line 1002: the end of "
                                         r"the merges"):
        check_tokenizer_files(folder)
    _write_lines(folder, lines[:-1] + ["x y", ""])  # one merge too many
    with pytest.raises(ValueError, match=r"found 48895; first difference at line 48896: 'x y', "
                                         r"keras_clip's vocabulary has no more merges"):
        check_tokenizer_files(folder)
    _write_lines(folder, lines[1:])  # no header is fine: merges start at line 1
    assert check_tokenizer_files(folder)


@pytest.mark.parametrize("present, absent", [("vocab.json", "merges.txt"),
                                             ("merges.txt", "vocab.json")])
def test_lone_file_is_named(written, tmp_path, present, absent):
    folder = _copy(written[0], tmp_path, [present])
    with pytest.raises(ValueError, match=re.escape(
            f"{os.path.join(folder, present)}: found without {absent}")):
        check_tokenizer_files(folder)


def test_bad_json_and_bad_text_are_named(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        f.write('{"!": 0,')
    with pytest.raises(ValueError, match=r"vocab\.json: not valid JSON"):
        check_tokenizer_files(folder)
    _write_vocab(folder, ["!", '"'])
    with pytest.raises(ValueError, match=r"vocab\.json: expected a JSON object of token → id, "
                                         r"got list"):
        check_tokenizer_files(folder)
    folder = _copy(written[0], tmp_path / "latin1")
    with open(os.path.join(folder, "merges.txt"), "ab") as f:
        f.write(b"\xe9 \xe9\n")
    with pytest.raises(ValueError, match=r"merges\.txt: not UTF-8 text"):
        check_tokenizer_files(folder)


def test_tokenizer_json_is_checked(written, tmp_path):
    vocab = _vocab(written[0])
    merges = [line.split(" ") for line in _lines(written[0])[1:-1]]
    folder = tmp_path / "saved"
    folder.mkdir()
    path = folder / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}))
    assert check_tokenizer_files(folder) is True  # alone: transformers 5 saves only this file
    merges[7], merges[8] = merges[8], merges[7]
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}))
    with pytest.raises(ValueError, match=re.escape(
            f"{path} (model.merges): 48894 merges expected, found 48894; first difference at "
            "line 8")):
        check_tokenizer_files(folder)
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": vocab, "merges": []}}))
    with pytest.raises(ValueError, match=r"tokenizer\.json: model type 'WordPiece'"):
        check_tokenizer_files(folder)
    path.write_text(json.dumps({"version": "1.0"}))
    with pytest.raises(ValueError, match=r"tokenizer\.json: expected a tokenizers BPE model"):
        check_tokenizer_files(folder)
    _copy(written[0], folder)  # vocab.json + merges.txt match, tokenizer.json still does not
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        check_tokenizer_files(folder)


def test_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert check_tokenizer_files(tmp_path) is False
    with pytest.raises(NotADirectoryError, match="not a directory"):
        check_tokenizer_files(tmp_path / "config.json")


# Runs in a fresh interpreter: in .venv-ref, importing transformers' image processing (torchvision)
# after TensorFlow crashes the process (segfault), and the test session has imported TensorFlow.
_LOAD = r"""
import json, sys
from transformers import CLIPProcessor, CLIPTokenizer, CLIPTokenizerFast
folder, texts = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, cls in (("slow", CLIPTokenizer), ("fast", CLIPTokenizerFast),
                  ("processor", CLIPProcessor)):
    tok = cls.from_pretrained(folder)
    tok = getattr(tok, "tokenizer", tok)
    out[name] = dict(type=type(tok).__name__, max_len=tok.model_max_length,
                     ids=tok(texts, truncation=True, max_length=77)["input_ids"],
                     padded=tok(texts[:1], padding="max_length", max_length=77)["input_ids"][0])
print(json.dumps(out))
"""


@pytest.mark.torch
def test_transformers_loads_written_folder(tmp_path):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers (in .venv-ref: `make test-ref`)")
    folder = tmp_path / "clip"
    write_tokenizer_files(folder, image_size=224)
    texts = ["a photo of a cat", "Hello, World!",
             "It's 3:00 o'clock in São Paulo — 東京タワー 🐱",
             "a diagram of a transformer model " * 20]  # the last one is truncated at 77
    run = subprocess.run([sys.executable, "-c", _LOAD, str(folder), json.dumps(texts)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    ours = tokenize(texts, truncate=True)
    want = [row[:int(np.flatnonzero(row == 49407)[0]) + 1].tolist() for row in ours]
    assert len(want[-1]) == 77
    for name in ("slow", "fast", "processor"):
        assert got[name]["type"] == "CLIPTokenizer" and got[name]["max_len"] == 77
        assert got[name]["ids"] == want, name
        # transformers pads with <|endoftext|> (49407), keras_clip with 0
        padded = ours[0].copy()
        padded[len(want[0]):] = 49407
        assert got[name]["padded"] == padded.tolist(), name
