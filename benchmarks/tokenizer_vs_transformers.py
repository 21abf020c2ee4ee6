"""Agreement of keras_clip's tokenizers and transformers' CLIPTokenizer / CLIPTokenizerFast with
OpenAI's reference ids at 77 tokens, and the classes of transformers' differences.

    .venv-ref/bin/python benchmarks/tokenizer_vs_transformers.py [--batch-size 256] [--show 1]

Reads tests/fixtures/tokenizer_corpus.json.gz (12,300 strings; the reference is open_clip's
SimpleTokenizer, i.e. OpenAI's, with ftfy). The transformers tokenizers are loaded from a folder
written by keras_clip.text.vocab_files.write_tokenizer_files (no download), in a child process
without TensorFlow (transformers' image side crashes next to it), once as installed and once with
ftfy hidden (``import ftfy`` fails).

Everything is compared at 77 tokens the way each side truncates: keras_clip
``tokenize(texts, truncate=True)`` and ``CLIPTokenizer(context_length=77)`` (in-graph) keep
sot + 75 ids + eot; transformers ``tok(texts, truncation=True, max_length=77)`` keeps bos + 75 ids
+ eos; the reference ids are cut the same way. Padding is left out (keras_clip pads with 0,
transformers with <|endoftext|> = 49407).

A transformers difference is classed by the steps of OpenAI's text cleaning that, swapped into a
step-by-step emulation of transformers' pipeline, make its ids equal the reference (the smallest
such set, found by dropping steps one at a time; see _Emulation): "ftfy" (ftfy.fix_text, which
transformers does not run), "html.unescape" (twice, not run either), "whitespace" (OpenAI splits
on str.isspace, e.g. U+001C-U+001F, which tokenizers' \\s+ does not match), "lowercase"
(str.lower, e.g. final sigma, vs tokenizers' per-character Lowercase), "pre-tokenizer" (OpenAI's
words: the regex module with IGNORECASE, where U+0345, which case-folds to a letter, is matched
by no branch and dropped, while transformers keeps it as a symbol; and regex's newer Unicode
tables for \\p{L} / \\p{N} than the Oniguruma in tokenizers). Texts holding a
<|startoftext|> / <start_of_text> spelling are "special-token text"; those no set explains, "other".
"""

import argparse
import collections
import gzip
import json
import os
import subprocess
import sys
import tempfile

import regex

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                      "tokenizer_corpus.json.gz")
SOT, EOT, CONTEXT = 49406, 49407, 77
SPECIAL_RE = r"(?i)<\|?[sſ]tart_?of_?text\|?>|<\|?end_?of_?text\|?>"
SPECIAL_CLASS = ("special-token text (open_clip reads <start_of_text> as its token, "
                 "transformers <|startoftext|>)")


def load_corpus(path=CORPUS):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def truncated(ids, context=CONTEXT):
    """Content ids → [sot] + first context-2 ids + [eot] (open_clip's truncate=True)."""
    return [SOT] + list(ids[:context - 2]) + [EOT]


# ------------------------------------------------------------------------------------------------
# Child process: transformers only (no TensorFlow).

STEPS = ("ftfy", "html.unescape", "whitespace", "lowercase", "pre-tokenizer")
# OpenAI's pre-tokenisation, as open_clip spells it (keras_clip.text.tokenizer._PATTERN; not
# imported: this process stays free of TensorFlow). OpenAI matches it with IGNORECASE.
OPENAI_PATTERN = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                  r"[^\s\p{L}\p{N}]+")


class _Emulation:
    """transformers' CLIPTokenizer pipeline with its normaliser run step by step in Python,
    each step swappable for OpenAI's: text → [ftfy.fix_text] → [html.unescape ×2] → NFC →
    whitespace (tokenizers' Replace(\\s+, ' ') or OpenAI's ' '.join(str.split())) → lowercase
    (tokenizers' Lowercase or str.lower) → the tokenizer with its normaliser removed, or (the
    "pre-tokenizer" swap) the words OpenAI's regex finds under IGNORECASE, BPE'd as they are.
    With no swap it must give transformers' ids (checked on the whole corpus)."""

    def __init__(self, cls, folder):
        import html

        import ftfy
        from tokenizers import Regex, normalizers, pre_tokenizers
        self.words = regex.compile(OPENAI_PATTERN, regex.IGNORECASE).findall
        self.words_case = regex.compile(OPENAI_PATTERN).findall
        self.rust_words = cls.from_pretrained(folder).backend_tokenizer.pre_tokenizer[0]  # Split
        # BPE of given words: no normaliser, and only the byte mapping of the pre-tokenizer.
        self.bpe_words = cls.from_pretrained(folder)
        self.bpe_words.backend_tokenizer.normalizer = None
        self.bpe_words.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=False, use_regex=False)
        self.bare = cls.from_pretrained(folder)
        self.bare.backend_tokenizer.normalizer = None
        self.nfc = normalizers.NFC().normalize_str
        self.rust_ws = normalizers.Replace(Regex(r"\s+"), " ").normalize_str
        self.rust_lower = normalizers.Lowercase().normalize_str
        self.ftfy, self.unescape = ftfy.fix_text, lambda t: html.unescape(html.unescape(t))

    def __call__(self, text, swaps=()):
        if "ftfy" in swaps:
            text = self.ftfy(text)
        if "html.unescape" in swaps:
            text = self.unescape(text)
        text = self.nfc(text)
        text = " ".join(text.split()) if "whitespace" in swaps else self.rust_ws(text)
        text = text.lower() if "lowercase" in swaps else self.rust_lower(text)
        if "pre-tokenizer" in swaps:
            return self.bpe_words(self.words(text), is_split_into_words=True, truncation=True,
                                  max_length=CONTEXT)["input_ids"]
        return self.bare(text, truncation=True, max_length=CONTEXT)["input_ids"]

    def pre_tokenizer_reason(self, text):
        """Why OpenAI's words differ from transformers' on the cleaned `text`."""
        text = " ".join(self.unescape(self.ftfy(text)).split()).lower()
        reasons = []
        if self.words(text) != self.words_case(text):
            reasons.append("IGNORECASE")  # e.g. U+0345, which folds to a letter
        if self.words_case(text) != [w for w, _ in self.rust_words.pre_tokenize_str(text)]:
            reasons.append("Unicode tables")  # regex's \p{L} / \p{N} vs Oniguruma's
        return "pre-tokenizer (" + ", ".join(reasons or ["?"]) + ")"

    def classify(self, text, want):
        """The smallest set of OpenAI's steps that, swapped in, gives `want`; None if none.
        A text holding a special-token spelling is classed as such first (the pre-tokenizer
        swap would BPE '<|startoftext|>', which transformers reads as its special token)."""
        if regex.search(SPECIAL_RE, text):
            return SPECIAL_CLASS
        names = list(STEPS)
        if self(text, names) != want:
            return None
        for name in STEPS:  # drop steps one at a time while the rest still explain it
            if self(text, [n for n in names if n != name]) == want:
                names.remove(name)
        if "pre-tokenizer" in names:
            names[names.index("pre-tokenizer")] = self.pre_tokenizer_reason(text)
        if "lowercase" in names:
            names[names.index("lowercase")] = self.lowercase_reason(text)
        return " + ".join(names) if names else "none"

    def lowercase_reason(self, text):
        """Final sigma (str.lower reads context, tokenizers maps each character) or other."""
        text = " ".join(self.unescape(self.ftfy(text)).split())
        ours, theirs = text.lower(), self.rust_lower(text)
        sigma = len(ours) == len(theirs) and all(
            a == b or {a, b} == {"\u03c2", "\u03c3"} for a, b in zip(ours, theirs))
        return "lowercase (final sigma)" if sigma else "lowercase (case tables)"

    def ftfy_fixes(self, text):
        """Names of the fixes ftfy.fix_and_explain applies to `text` ('encode' / 'decode' steps
        are its mojibake repair; 'apply' / 'transcode' steps name a function)."""
        import ftfy
        steps = ftfy.fix_and_explain(text).explanation or []
        names = {"mojibake repair (re-decoding)" if action in ("encode", "decode") else name
                 for action, name in steps}
        return sorted(names) or ["normalization only"]


def worker(folder, out_path, hide_ftfy):
    if hide_ftfy:
        sys.modules["ftfy"] = None  # `import ftfy` now raises ImportError
    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    data = load_corpus()
    texts, ref = data["texts"], [truncated(r) for r in data["ids"]]
    result = dict(version=transformers.__version__,
                  fast_is_slow=CLIPTokenizerFast is CLIPTokenizer, tokenizers={})
    tokenizer_classes = {"CLIPTokenizer": CLIPTokenizer, "CLIPTokenizerFast": CLIPTokenizerFast}
    for name, cls in tokenizer_classes.items():
        tok = cls.from_pretrained(folder)
        ids = tok(texts, truncation=True, max_length=CONTEXT)["input_ids"]
        full = tok(texts)["input_ids"]
        result["tokenizers"][name] = dict(cls=f"{cls.__module__}.{cls.__qualname__}", ids=ids,
                                          untruncated_equal=[f == [SOT] + r + [EOT] for f, r in
                                                             zip(full, data["ids"])])
    result["ftfy_imported"] = sys.modules.get("ftfy") is not None  # before the emulation's import
    if hide_ftfy:
        return _dump(result, out_path)
    for name, cls in tokenizer_classes.items():
        entry, emulate = result["tokenizers"][name], _Emulation(cls, folder)
        entry["emulation_equal"] = sum(emulate(t) == i for t, i in zip(texts, entry["ids"]))
        entry["classes"] = {}
        for i, (got, want) in enumerate(zip(entry["ids"], ref)):
            if got != want:
                entry["classes"][i] = emulate.classify(texts[i], want) or "other"
        entry["ftfy_fixes"] = {i: emulate.ftfy_fixes(texts[i])
                               for i, c in entry["classes"].items() if "ftfy" in c}
    _dump(result, out_path)


def _dump(result, out_path):
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


def run_worker(folder, hide_ftfy):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", folder, out]
        subprocess.run(cmd + (["--hide-ftfy"] if hide_ftfy else []), check=True)
        with open(out, encoding="utf-8") as f:
            return json.load(f)
    finally:
        os.remove(out)


# ------------------------------------------------------------------------------------------------
# Parent: keras_clip's tokenizers (TensorFlow) and the table.

def keras_clip_ids(texts, batch_size, graph):
    import numpy as np
    import tensorflow as tf

    from keras_clip.text.tokenizer import CLIPTokenizer, tokenize

    def rows(arr):
        return [row[:int(np.flatnonzero(row == EOT)[-1]) + 1].tolist() for row in arr]
    out = {"keras_clip.tokenize": rows(tokenize(texts, context_length=CONTEXT, truncate=True))}
    if graph:
        fn = tf.function(CLIPTokenizer(context_length=CONTEXT),
                         input_signature=[tf.TensorSpec([None], tf.string)])
        out["keras_clip CLIPTokenizer (in-graph)"] = rows(np.concatenate(
            [fn(tf.constant(texts[i:i + batch_size])).numpy()
             for i in range(0, len(texts), batch_size)]))
    return out


def openai_clip_ids(texts):
    """Ids of openai/CLIP's own simple_tokenizer, emulated: keras_clip's SimpleTokenizer (which
    is open_clip's) with the special tokens spelled <|startoftext|> / <|endoftext|>, as
    openai/CLIP spells them."""
    from keras_clip.text.tokenizer import SimpleTokenizer, _PATTERN
    tok = SimpleTokenizer()
    tok.cache = {"<|startoftext|>": (SOT,), "<|endoftext|>": (EOT,)}
    tok.pattern = regex.compile(_PATTERN.replace("<start_of_text>|<end_of_text>",
                                                 r"<\|startoftext\|>|<\|endoftext\|>"),
                                regex.IGNORECASE)
    return [truncated(tok.encode(t)) for t in texts]


def _first_diff(a, b):
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--show", type=int, default=1, help="examples per difference class")
    parser.add_argument("--no-graph", action="store_true", help="skip the in-graph tokenizer")
    parser.add_argument("--worker", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--hide-ftfy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.hide_ftfy)

    from keras_clip.text.vocab_files import write_tokenizer_files

    data = load_corpus()
    texts, cats, clean = data["texts"], data["categories"], data["ftfy_clean"]
    ref = [truncated(r) for r in data["ids"]]
    n = len(texts)
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer_files(folder)
        hf = run_worker(folder, hide_ftfy=False)
        hf_hidden = run_worker(folder, hide_ftfy=True)
    ours = keras_clip_ids(texts, args.batch_size, not args.no_graph)

    long = sum(len(r) > CONTEXT - 2 for r in data["ids"])
    print(f"corpus: {n} strings ({sum(clean)} ftfy-clean, {long} longer than {CONTEXT - 2} ids); "
          f"reference {data['meta']['reference']} with ftfy {data['meta']['ftfy']}")
    print(f"transformers {hf['version']}: CLIPTokenizerFast is CLIPTokenizer: {hf['fast_is_slow']}"
          f"; ftfy imported by loading and running them: {hf['ftfy_imported']} (installed), "
          f"{hf_hidden['ftfy_imported']} (hidden)")
    rows = list(ours.items())
    for name, entry in hf["tokenizers"].items():
        rows.append((f"transformers {name}", entry["ids"]))
        rows.append((f"transformers {name}, ftfy hidden", hf_hidden["tokenizers"][name]["ids"]))
    base = ours["keras_clip.tokenize"]

    def pct(k, m):
        return f"{k}/{m} ({100.0 * k / m:.2f}%)"
    print("\n| tokenizer (77 tokens, truncated) | = OpenAI reference | on ftfy-clean strings "
          "| = keras_clip.tokenize |")
    print("|---|---|---|---|")
    for name, ids in rows:
        same = [a == b for a, b in zip(ids, ref)]
        print(f"| {name} | {pct(sum(same), n)} | "
              f"{pct(sum(s for s, c in zip(same, clean) if c), sum(clean))} | "
              f"{pct(sum(a == b for a, b in zip(ids, base)), n)} |")

    for name, entry in hf["tokenizers"].items():
        if name != "CLIPTokenizer" and entry["ids"] == hf["tokenizers"]["CLIPTokenizer"]["ids"]:
            print(f"\ntransformers {name}: ids identical to CLIPTokenizer's on every string")
            continue
        classes = {int(i): c for i, c in entry["classes"].items()}
        hidden = sum(not e and entry["ids"][i] == ref[i]
                     for i, e in enumerate(entry["untruncated_equal"]))
        print(f"\ntransformers {name} ({entry['cls']}): {len(classes)} of {n} differ at 77 "
              f"tokens; {hidden} more differ only beyond token 76 (hidden by truncation). The "
              f"step-by-step emulation of its pipeline reproduces its ids on "
              f"{entry['emulation_equal']}/{n}.")
        print("\n| difference class (steps that fix it) | strings | example (text → first "
              "differing id: reference vs transformers) |")
        print("|---|---|---|")
        by_class = collections.defaultdict(list)
        for i, c in classes.items():
            by_class[c].append(i)
        for c, idx in sorted(by_class.items(), key=lambda kv: -len(kv[1])):
            examples = []
            for i in idx[:args.show]:
                got = entry["ids"][i]
                k = _first_diff(ref[i], got)
                examples.append(f"{texts[i][:50]!r} [{cats[i]}] → @{k}: "
                                f"{ref[i][k:k + 3]} vs {got[k:k + 3]}")
            print(f"| {c} | {len(idx)} | {'; '.join(examples)} |")
        special = by_class.get(SPECIAL_CLASS, [])
        if special:
            orig = openai_clip_ids([texts[i] for i in special])
            same = sum(o == entry["ids"][i] for o, i in zip(orig, special))
            print(f"\nOf the {len(special)} special-token texts, {same} equal openai/CLIP's own "
                  f"tokenizer (open_clip's with <|startoftext|> / <|endoftext|> as the special "
                  f"spellings, emulated)")
        fixes = collections.defaultdict(list)
        for i, names in entry["ftfy_fixes"].items():
            for fix in names:
                fixes[fix].append(int(i))
        print("\n| ftfy fix (in the strings classed 'ftfy…'; a string can have several) | "
              "strings | example |")
        print("|---|---|---|")
        for fix, idx in sorted(fixes.items(), key=lambda kv: -len(kv[1])):
            print(f"| {fix} | {len(idx)} | {texts[idx[0]][:50]!r} [{cats[idx[0]]}] |")
        per_cat = collections.Counter(cats[i] for i in classes)
        print("\ndiffering strings per corpus category: " + ", ".join(
            f"{c} {k}/{cats.count(c)}" for c, k in per_cat.most_common()))


if __name__ == "__main__":
    main()
