"""CLIP's byte-level BPE tokenizer, twice: pure Python and in-graph.

Both follow OpenAI's ``simple_tokenizer.py`` as shipped by open_clip (the reference decides):

    ftfy.fix_text → html.unescape ×2 → strip → collapse whitespace (str.split) → lower
    → pre-tokenise with ``<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|
      [^\\s\\p{L}\\p{N}]+`` (IGNORECASE) → UTF-8 bytes → printable unicode chars → BPE with ``</w>``

Ids: 49406 = start of text, 49407 = end of text, 0 = padding (context length 77).

* :class:`SimpleTokenizer` / :func:`tokenize` — Python, exact.
* :class:`CLIPTokenizer` — a Keras layer of TF core + TF Text ops only (tf.data, tf.function,
  SavedModel, TF Serving). ``ftfy.fix_text`` has no in-graph form: the layer applies ftfy's
  character-level fixes and its entity decoding, not its mojibake repair; see the class docstring.

>>> tokenize("a photo of a cat")[0, :7]
array([49406,   320,  1125,   539,   320,  2368, 49407], dtype=int32)
"""

import functools
import gzip
import html
import html.entities
import importlib.resources
import warnings

import ftfy
import ftfy.chardata
import ftfy.fixes
import keras
import numpy as np
import regex
import tensorflow as tf
import tensorflow_text as tf_text

from keras_clip.compat import regex_split_with_offsets_op

_regex_split_ops = regex_split_with_offsets_op()  # None if this TF Text does not expose it

SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")  # open_clip's spelling (OpenAI: <|...|>)
_NUM_MERGES = VOCAB_SIZE - 512 - len(SPECIAL_TOKENS)  # 48,894 lines after the header

# The pre-tokenisation rule, verbatim from the reference (letters run together, every digit is
# its own token, punctuation runs together, whitespace separates).
_PATTERN = "|".join(SPECIAL_TOKENS) + \
    r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def vocab_path():
    """Path of the vendored ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI's merges, MIT licence)."""
    return str(importlib.resources.files(__package__) / "assets" / "bpe_simple_vocab_16e6.txt.gz")


@functools.lru_cache(None)
def load_merges(path):
    """The BPE merges of OpenAI's vocabulary file at ``path`` (gzip text, one "a b" pair per line
    after a header): a tuple of 48,894 (str, str) pairs in rank order. Cached."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1:1 + _NUM_MERGES])  # line 0 is a header


@functools.lru_cache(None)
def bytes_to_unicode():
    """byte → printable char, in vocab order (ids 0..255): printable Latin-1 bytes map to
    themselves, the 68 others (controls, space, NBSP, soft hyphen) to chr(256 + n), so BPE never
    sees whitespace or control characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {b: chr(c) for b, c in zip(keep + moved, keep + [256 + n for n in range(len(moved))])}


def _clean(text):
    """The reference's 'lower' cleaning: ftfy → html.unescape ×2 → whitespace → lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class SimpleTokenizer:
    """Pure-Python CLIP tokenizer, token-for-token equal to OpenAI's / open_clip's.

    Example:
        >>> tok = SimpleTokenizer()
        >>> tok.encode("Hello, World!")
        [3306, 267, 1002, 256]
        >>> tok.decode(tok.encode("Hello, World!"))
        'hello , world ! '
    """

    def __init__(self, path=None):
        merges = load_merges(path or vocab_path())
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        chars = list(self.byte_encoder.values())
        self.vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + \
            list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(self.vocab)}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.cache = {t: (self.encoder[t],) for t in SPECIAL_TOKENS}  # special strings stay whole
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)

    def bpe(self, token):
        """Byte-encoded word → ids. Greedy: merge every non-overlapping occurrence (left to right)
        of the adjacent pair with the lowest merge rank; repeat until no pair is a merge."""
        ids = self.cache.get(token)
        if ids is not None:
            return ids
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            ranks = [self.bpe_ranks.get(pair, np.inf) for pair in zip(word, word[1:])]
            best = min(ranks)
            if best == np.inf:
                break
            i = ranks.index(best)
            first, second = word[i], word[i + 1]
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = self.cache[token] = tuple(self.encoder[w] for w in word)
        return ids

    def encode(self, text):
        """Text → BPE ids, without start/end tokens."""
        ids = []
        for word in self.pattern.findall(_clean(text)):
            ids.extend(self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8"))))
        return ids

    def decode(self, ids):
        """Ids → text; word ends become spaces, invalid UTF-8 becomes U+FFFD."""
        chars = "".join(self.vocab[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in chars)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(None)
def _default_tokenizer():
    return SimpleTokenizer()


def _as_text_list(texts):
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"tokenize expects a str or a list of str, got {type(texts).__name__}"
                        + (" (decode bytes to str first)" if isinstance(texts, bytes) else ""))
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"tokenize expects a str or a list of str; item {i} is "
                            f"{type(t).__name__}: {t!r:.60}")
    return texts


def tokenize(texts, context_length=CONTEXT_LENGTH, truncate=False):
    """str or list of str → int32 array [B, context_length]: ``[sot] + ids + [eot]``, 0-padded.

    A text longer than ``context_length`` raises ValueError, unless ``truncate=True``, which keeps
    the first ``context_length - 1`` tokens and puts eot last (open_clip's rule).

    Example:
        >>> tokenize(["a photo of a cat", "a dog"], context_length=8).tolist()
        [[49406, 320, 1125, 539, 320, 2368, 49407, 0], [49406, 320, 1929, 49407, 0, 0, 0, 0]]
    """
    texts = _as_text_list(texts)
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (sot and eot), got {context_length}")
    tok = _default_tokenizer()
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
        ids = [SOT_TOKEN] + tok.encode(text) + [EOT_TOKEN]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"Text {text[:60]!r}{'…' if len(text) > 60 else ''} is too long: "
                                 f"got {len(ids)} tokens, context_length {context_length}. "
                                 "Pass truncate=True to cut it (eot stays the last token).")
            ids = ids[:context_length - 1] + [EOT_TOKEN]
        out[row, :len(ids)] = ids
    return out


# ------------------------------------------------------------------------------------------------
# In-graph tokenizer. Every table is a numpy constant looked up with tf.searchsorted: no hash-table
# resources to track, initialise or re-create in tf.data / SavedModel. Tables that encode Python's
# Unicode behaviour (letter/digit classes, whitespace, lowercase, entities) are derived from the
# running Python / regex / ftfy / html modules, so both paths agree by construction.


def _codepoints(chars):
    """Chars → sorted unique int64 codepoints, surrogates dropped (they are not UTF-8)."""
    cps = np.frombuffer("".join(chars).encode("utf-32-le", "surrogatepass"), np.uint32)
    mask = np.zeros(0x110000, bool)
    mask[cps] = True
    mask[0xD800:0xE000] = False
    return np.flatnonzero(mask)


def _re2_class(cps):
    """Sorted codepoints → RE2 character-class body of ranges ("\\x{41}-\\x{5a}...")."""
    cut = np.flatnonzero(np.diff(cps) != 1) + 1
    return "".join(f"\\x{{{cps[a]:x}}}" + (f"-\\x{{{cps[b]:x}}}" if b > a else "")
                   for a, b in zip(np.r_[0, cut], np.r_[cut, len(cps)] - 1))


class _Tables:
    """Everything the graph needs, as numpy arrays / strings (built once per process)."""

    def __init__(self):
        every = "".join(map(chr, range(0x110000)))
        # Pre-tokenisation classes exactly as `regex` sees them under IGNORECASE. Only " " is left
        # of the whitespace after cleaning; the chars no branch matches (e.g. U+0345, which folds
        # to a letter) separate words like spaces do.
        flags = regex.IGNORECASE
        letters = _codepoints(regex.findall(r"[\p{L}]", every, flags))
        digits = _codepoints(regex.findall(r"[\p{N}]", every, flags))
        skipped = regex.sub(r"\s", "", regex.sub(_PATTERN, "", every, flags=flags))
        L, N, sep = _re2_class(letters), _re2_class(digits), _re2_class(_codepoints(skipped + " "))

        literals = (*SPECIAL_TOKENS, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
        chars = sorted(set("".join(literals)))
        folds = regex.findall(f"[{regex.escape(''.join(chars))}]", every, flags)
        fold = {c: _re2_class(_codepoints(f for f in folds if regex.fullmatch(regex.escape(c), f,
                                                                              flags)))
                for c in chars}  # e.g. 's' also matches 'ſ' (U+017F) under IGNORECASE
        words = ["".join(f"[{fold[c]}]" for c in lit) for lit in literals]
        self.token_pattern = "|".join(words + [f"[{L}]+", f"[{N}]", f"[^{sep}{L}{N}]+"])
        self.separator_pattern = f"[{sep}]+"
        # str.split() whitespace (str.isspace), which the reference collapses to one space.
        self.space_pattern = f"[{_re2_class(_codepoints(c for c in every if c.isspace()))}]+"

        # BPE: pair (a, b) → merged id. Merge ids are 512 + rank (the vocab has no duplicates and
        # every merge's parts precede it), so the smallest merged id is the lowest rank.
        merges = load_merges(vocab_path())
        enc = SimpleTokenizer().encoder
        keys = np.array([enc[a] * VOCAB_SIZE + enc[b] for a, b in merges], np.int64)
        order = np.argsort(keys)
        self.pair_keys, self.pair_ids = keys[order], (512 + order).astype(np.int32)
        byte_ids = {b: i for i, b in enumerate(bytes_to_unicode())}
        self.byte_ids = np.array([byte_ids[b] for b in range(256)], np.int32)

        self.html = _html_tables()
        self.ftfy = _ftfy_tables(every)
        self.lower_fix = _lower_fixups(every)
        self.sigma_keys, self.sigma_kinds = _sigma_tables(every)


def _charmap(mapping):
    """{codepoint: replacement str} → (sorted int32 keys, replacement strings, RE2 trigger)."""
    keys = np.array(sorted(mapping), np.int32)
    return keys, np.array([mapping[k] for k in keys], object), f"[{_re2_class(keys)}]"


def _html_tables():
    """html.unescape's data: named entities and the numeric references Python remaps."""
    names = html.entities.html5
    # Numeric references whose result is not chr(n) (Windows-1252 remaps, NUL, noncharacters…).
    odd = [*range(0xA0), *range(0xFDD0, 0xFDF0), *(p * 0x10000 + k for p in range(17)
                                                   for k in (0xFFFE, 0xFFFF))]
    numeric = {n: html.unescape(f"&#{n};") for n in odd if html.unescape(f"&#{n};") != chr(n)}
    return dict(names=_str_table(names),
                legacy_lengths=sorted({len(k) for k in names if not k.endswith(";")}, reverse=True),
                numeric_keys=np.array(sorted(numeric), np.int64),
                numeric_values=np.array([numeric[k] for k in sorted(numeric)], object),
                ftfy_names=_str_table(ftfy.chardata.HTML_ENTITIES))


def _ftfy_tables(every):
    """ftfy's character-level fixes as two composed char maps (see CLIPTokenizer)."""
    f = ftfy.fixes
    chars = {*range(0x80, 0xA0), *ftfy.chardata.LIGATURES, *ftfy.chardata.WIDTH_MAP,
             *(ord(c) for c in ftfy.chardata.SINGLE_QUOTE_RE.findall(every)),
             *(ord(c) for c in ftfy.chardata.DOUBLE_QUOTE_RE.findall(every))}
    first = {}  # fix_c1_controls → fix_latin_ligatures → fix_character_width → uncurl_quotes
    for c in chars:
        out = f.uncurl_quotes(f.fix_character_width(f.fix_latin_ligatures(
            f.fix_c1_controls(chr(c)))))
        if out != chr(c):
            first[c] = out
    second = {}  # fix_line_breaks (single chars; \r\n is a regex before) → remove_control_chars
    for c in {0x0D, 0x85, 0x2028, 0x2029, *ftfy.chardata.CONTROL_CHARS}:
        out = f.remove_control_chars(f.fix_line_breaks(chr(c)))
        if out != chr(c):
            second[c] = out
    return dict(first=_charmap(first), second=_charmap(second))


def _lower_fixups(every):
    """Chars Python's str.lower() lowercases but TF's ICU (an older Unicode) leaves alone."""
    probe = [c for c in regex.findall(r"\p{Changes_When_Lowercased}", every) if c != c.lower()]
    with tf.init_scope():
        icu = tf.strings.lower("\n".join(probe), encoding="utf-8").numpy().decode().split("\n")
    fix = {ord(c): c.lower() for c, got in zip(probe, icu) if got == c}
    unfixable = [c for c, got in zip(probe, icu) if got not in (c, c.lower())]
    if unfixable:
        warnings.warn(f"CLIPTokenizer: tf.strings.lower differs from str.lower on {unfixable!r}; "
                      "those characters stay as ICU lowercases them.")
    return _charmap(fix) if fix else None


def _sigma_tables(every):
    """Python's Cased / Case_Ignorable sets, which decide final sigma, read off str.lower itself
    (ICU's sets are from an older Unicode): kind 1 = cased, 2 = case-ignorable."""
    chars = regex.findall(r"[^\p{Cn}\p{Co}\p{Cs}\n]", every)  # assigned chars, a superset

    def final(prefix):  # chars c with (prefix + c + 'Σ').lower() ending in 'ς'
        out = "\n".join(f"{prefix}{c}\u03a3" for c in chars).lower().split("\n")
        return {ord(c) for c, o in zip(chars, out) if o[-1] == "\u03c2"}
    cased = final("")  # a case-ignorable c is skipped, so this leaves cased, non-ignorable chars
    kinds = {**{c: 2 for c in final("A") - cased}, **{c: 1 for c in cased}}
    keys = np.array(sorted(kinds), np.int32)
    return keys, np.array([kinds[k] for k in keys], np.int32)


@functools.lru_cache(None)
def _tables():
    return _Tables()


def _lookup(keys, values, query, default):
    """Sorted-array map: query → (values[key], hit)."""
    keys = tf.convert_to_tensor(keys)
    i = tf.minimum(tf.searchsorted(keys, query), tf.size(keys) - 1)
    hit = tf.equal(tf.gather(keys, i), query)
    return tf.where(hit, tf.gather(tf.convert_to_tensor(values), i), default), hit


def _lookup_str(table, query):
    """String map by 64-bit fingerprint (a TF core op) + an equality check."""
    hashes, keys, values = table
    h = tf.strings.to_hash_bucket_fast(query, 2**63 - 1)
    out, hit = _lookup(hashes, values, h, "")
    i = tf.minimum(tf.searchsorted(tf.constant(hashes), h), len(keys) - 1)
    hit &= tf.equal(tf.gather(tf.constant(keys), i), query)
    return tf.where(hit, out, ""), hit


def _str_table(mapping):
    """{str: str} → (sorted fingerprints, keys, values) for _lookup_str."""
    keys = sorted(mapping)
    with tf.init_scope():
        hashes = tf.strings.to_hash_bucket_fast(keys, 2**63 - 1).numpy()
    order = np.argsort(hashes)
    if len(np.unique(hashes)) != len(keys):
        raise RuntimeError("fingerprint collision in a tokenizer string table")
    return (hashes[order], np.array(keys, object)[order],
            np.array([mapping[k] for k in keys], object)[order])


def _substr(x, pos, length):
    """tf.strings.substr (bytes), pos clipped to the string (the op fails past the end) and
    scalar pos/length broadcast (graph mode wants equal shapes)."""
    shape = tf.shape(x)
    pos = tf.minimum(tf.broadcast_to(tf.cast(pos, tf.int32), shape), tf.strings.length(x))
    return tf.strings.substr(x, pos,
                             tf.broadcast_to(tf.cast(length, tf.int32), shape))


def _regex_split(x, delim, keep):
    """tf_text.regex_split of a 1-D batch via its raw op (the wrapper adds ~300 graph ops):
    splits at matches of `delim`, keeping those that match `keep` as pieces."""
    if _regex_split_ops is None:
        return tf_text.regex_split(x, delim, keep)
    pieces, _, _, splits = _regex_split_ops.regex_split_with_offsets(x, f"({delim})", f"({keep})")
    return tf.RaggedTensor.from_row_splits(pieces, splits, validate=False)


def _join(pieces, separator=""):
    """Concatenate each row of a ragged string tensor (one op, unlike ragged reduce_join)."""
    return tf.strings.unsorted_segment_join(pieces.flat_values, pieces.value_rowids(),
                                            pieces.nrows(), separator=separator)


def _if_any(x, trigger, fn):
    """Run fn(x) only when some string contains a char of `trigger` (cheap RE2 scan)."""
    return tf.cond(tf.reduce_any(tf.strings.regex_full_match(x, f"(?s).*{trigger}.*")),
                   lambda: fn(x), lambda: x)


def _translate(x, charmap):
    """str.translate in-graph: every char in the map becomes its replacement string."""
    keys, values, trigger = charmap

    def apply(x):
        chars = tf.strings.unicode_split(x, "UTF-8")
        cps = tf.strings.unicode_decode(x, "UTF-8")
        out, hit = _lookup(keys, values, cps.flat_values, "")
        new = tf.where(hit, out, chars.flat_values)
        return _join(chars.with_flat_values(new))
    return _if_any(x, trigger, apply)


def _replace_refs(x, pattern, replace):
    """re.sub(pattern, replace, x) for a per-match replacement computed by `replace(pieces)`."""
    def apply(x):
        parts = tf.strings.split(x, "\x00")  # TF Text's regex_split stops at a zero byte
        pieces = _regex_split(parts.flat_values, pattern, pattern)  # matches kept whole
        p = pieces.flat_values
        new, hit = replace(p)
        hit &= tf.strings.regex_full_match(p, pattern)
        joined = _join(pieces.with_flat_values(tf.where(hit, new, p)))
        return _join(parts.with_flat_values(joined), separator="\x00")
    return _if_any(x, "&", apply)


def _numeric_ref(p, t):
    """'&#65;' / '&#x41' (any of html.unescape's numeric forms) → the char html.unescape gives."""
    body = tf.strings.regex_replace(p, r"^&#[xX]?0*|;$", "")
    is_hex = tf.strings.regex_full_match(p, "&#[xX].*")
    too_big = tf.strings.length(body) > tf.where(is_hex, 6, 7)  # > 0x10FFFF for sure
    cps = tf.strings.unicode_decode(_substr(body, 0, 7), "UTF-8")  # digits are ASCII
    rows, v = cps.value_rowids(), tf.cast(cps.flat_values, tf.int64)
    digit = tf.where(v >= 65, tf.bitwise.bitwise_or(v, 32) - 87, v - 48)
    power = tf.gather(cps.row_lengths(), rows) - 1 - (tf.range(tf.size(v, tf.int64)) -
                                                       tf.gather(cps.row_splits, rows))
    base = tf.gather(tf.where(is_hex, tf.constant(16, tf.int64), tf.constant(10, tf.int64)), rows)
    n = tf.math.unsorted_segment_sum(digit * tf.pow(base, power), rows, tf.size(p))
    bad = too_big | (n < 0) | (n > 0x10FFFF) | ((n >= 0xD800) & (n <= 0xDFFF))
    special, is_special = _lookup(t["numeric_keys"], t["numeric_values"], n, "")
    safe = tf.cast(tf.where(bad, tf.zeros_like(n), n), tf.int32)
    char = tf.strings.unicode_encode(tf.expand_dims(safe, 1), "UTF-8")
    return tf.where(bad, "\ufffd", tf.where(is_special, special, char))


def _html_unescape(x, t):
    """Exactly html.unescape: numeric refs, the 2,231 HTML5 names, and the legacy names without
    ';' matched as the longest prefix ('&notit;' → '¬it;')."""
    def replace(p):
        name = _substr(p, 1, tf.strings.length(p) - 1)
        # Candidates [K, P]: the whole name, then legacy names (no ';') that are a proper
        # prefix, longest first; the first candidate found wins.
        cuts = [2**30] + t["legacy_lengths"]
        value, hit = _lookup_str(t["names"], tf.concat([_substr(name, 0, n) for n in cuts], 0))
        value, hit = tf.reshape(value, [len(cuts), -1]), tf.reshape(hit, [len(cuts), -1])
        proper = tf.strings.length(name, "UTF8_CHAR")[None] > tf.constant(cuts)[:, None]
        hit &= tf.concat([tf.ones_like(proper[:1]), proper[1:]], 0)
        first = tf.argmax(tf.cast(hit, tf.int32), axis=0, output_type=tf.int32)
        rest = _substr(name, tf.gather(cuts, first), tf.strings.length(name))
        new = tf.gather(tf.transpose(value), first, batch_dims=1) + rest
        found = tf.reduce_any(hit, axis=0)
        numeric = tf.strings.regex_full_match(p, "&#.*")
        return tf.where(numeric, _numeric_ref(p, t), new), found | numeric
    return _replace_refs(x, r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)", replace)


def _ftfy_unescape(x, t):
    """ftfy.fixes.unescape_html: ';'-terminated names (incl. ftfy's ALL-CAPS extras) and
    well-formed numeric refs; a numeric ref that would give ';' stays as it is."""
    def replace(p):
        new, hit = _lookup_str(t["ftfy_names"], p)
        numeric = tf.strings.regex_full_match(p, "&#[0-9]+;|&#[xX][0-9a-fA-F]+;")
        num = _numeric_ref(p, t)
        numeric &= tf.not_equal(num, ";")
        return tf.where(numeric, num, new), hit | numeric
    return _replace_refs(x, "&#?[0-9A-Za-z]{1,24};", replace)


def _final_sigma(x, t):
    """Σ → ς when a cased letter precedes it and none follows (skipping case-ignorable chars
    both ways), else σ: str.lower's rule, decided here so that ICU's older Unicode data does not
    decide it."""
    def apply(x):
        cps = tf.strings.unicode_decode(x, "UTF-8")
        v, row = cps.flat_values, cps.value_rowids()
        kind, _ = _lookup(t.sigma_keys, t.sigma_kinds, v, 0)
        solid = tf.not_equal(kind, 2)  # positions that are not case-ignorable
        solid_at = tf.cast(tf.where(solid)[:, 0], tf.int32)  # not empty: a Σ is solid
        before = tf.cumsum(tf.cast(solid, tf.int32), exclusive=True)  # solid positions < i
        prev = tf.gather(solid_at, tf.maximum(before - 1, 0))
        prev_cased = (before > 0) & tf.equal(tf.gather(row, prev), row) & \
            tf.equal(tf.gather(kind, prev), 1)
        upto = before + tf.cast(solid, tf.int32)  # solid positions <= i
        nxt = tf.gather(solid_at, tf.minimum(upto, tf.size(solid_at) - 1))
        next_cased = (upto < tf.size(solid_at)) & tf.equal(tf.gather(row, nxt), row) & \
            tf.equal(tf.gather(kind, nxt), 1)
        sigma = tf.where(prev_cased & ~next_cased, 0x3C2, 0x3C3)
        v = tf.where(tf.equal(v, 0x3A3), sigma, v)
        return tf.strings.unicode_encode(cps.with_flat_values(v), "UTF-8")
    return _if_any(x, "\u03a3", apply)


def _ftfy_fixes(x, unescape, t):
    """One round of ftfy.fix_and_explain without fix_encoding (see CLIPTokenizer)."""
    x = tf.where(unescape, _ftfy_unescape(x, t.html), x)
    x = _translate(x, t.ftfy["first"])  # C1 controls, Latin ligatures, width, curly quotes
    x = tf.strings.regex_replace(x, "\r\n", "\n")
    x = tf.strings.regex_replace(x, r"\x1b\[(?:\p{Nd}|;)*[a-zA-Z]", "")  # terminal escapes
    x = _translate(x, t.ftfy["second"])  # other line breaks → \n, control characters removed
    return tf_text.normalize_utf8(x, "NFC")


def _ftfy_lite(x, t, max_rounds=8):
    """ftfy.fix_text minus mojibake repair. ftfy fixes each line on its own, repeating until
    stable, and decodes entities only in the lines before the first line containing '<': so the
    text is cut there, and both parts are fixed as separate rows."""
    has_lt = tf.strings.regex_full_match(x, "(?s).*<.*")
    head = tf.where(has_lt, tf.strings.regex_replace(x, r"(?s)^((?:[^<]*\n)?).*$", r"\1"), x)
    tail = _substr(x, tf.strings.length(head), tf.strings.length(x))
    rows = tf.concat([head, tail], 0)
    unescape = tf.concat([tf.ones_like(has_lt), tf.zeros_like(has_lt)], 0)

    def body(i, rows, _):
        new = _ftfy_fixes(rows, unescape, t)
        return i + 1, new, tf.reduce_any(tf.not_equal(rows, new))
    _, rows, _ = tf.while_loop(lambda i, rows, changed: changed & (i < max_rounds), body,
                               (tf.constant(0), rows, tf.constant(True)))
    head, tail = tf.split(rows, 2)
    return head + tail


def _bpe(words, t):
    """Unique words (tf.string [U]) → ids RaggedTensor [U, None], merging all words in parallel."""
    chars = tf.strings.bytes_split(words)
    byte = tf.cast(tf.reshape(tf.io.decode_raw(chars.flat_values, tf.uint8, fixed_length=1), [-1]),
                   tf.int32)
    ids = tf.gather(tf.constant(t.byte_ids), byte)
    splits = chars.row_splits
    # The last byte of a word gets '</w>' (ids + 256).
    ids = tf.tensor_scatter_nd_add(ids, tf.expand_dims(splits[1:] - 1, 1),
                                   tf.fill(tf.shape(words), 256))
    # Special-token strings are one token (the reference caches them as themselves).
    special = tf.where(tf.equal(words, SPECIAL_TOKENS[0]), SOT_TOKEN,
                       tf.where(tf.equal(words, SPECIAL_TOKENS[1]), EOT_TOKEN, -1))
    row = tf.ragged.row_splits_to_segment_ids(splits, out_type=tf.int64)
    pos = tf.range(tf.size(ids, out_type=tf.int64)) - tf.gather(splits, row)
    row_special = tf.gather(special, row)
    keep = (row_special < 0) | tf.equal(pos, 0)
    ids = tf.boolean_mask(tf.where(row_special < 0, ids, row_special), keep)
    splits = tf.concat([[0], tf.cumsum(tf.math.unsorted_segment_sum(
        tf.cast(keep, tf.int64), row, tf.size(words, out_type=tf.int64)))], 0)

    none = tf.constant(np.iinfo(np.int32).max)
    pair_keys, pair_ids = tf.constant(t.pair_keys), tf.constant(t.pair_ids)

    def step(ids, splits, _):
        n = tf.size(ids, out_type=tf.int64)
        num_words = tf.size(splits, out_type=tf.int64) - 1
        row = tf.ragged.row_splits_to_segment_ids(splits, out_type=tf.int64)
        is_last = tf.not_equal(tf.concat([row, [-1]], 0)[1:], row)
        nxt = tf.concat([ids, [0]], 0)[1:]
        key = tf.cast(ids, tf.int64) * VOCAB_SIZE + tf.cast(nxt, tf.int64)
        merged, hit = _lookup(pair_keys, pair_ids, key, none)
        merged = tf.where(hit & ~is_last, merged, none)
        best = tf.gather(tf.math.unsorted_segment_min(merged, row, num_words), row)
        match = (merged < none) & tf.equal(merged, best)
        # Non-overlapping, left to right: in a run of matches (only "x x x" with pair (x, x)
        # overlaps) merge at even offsets from the run start.
        idx = tf.range(n)
        stops = tf.cast(tf.where(~match)[:, 0], tf.int64)  # never empty: a word's last position
        count = tf.cumsum(tf.cast(~match, tf.int64))
        last_stop = tf.where(count > 0, tf.gather(stops, tf.maximum(count - 1, 0)),
                             -tf.ones_like(count))
        start = match & tf.equal(tf.math.floormod(idx - last_stop - 1, 2), 0)
        keep = ~tf.concat([[False], start], 0)[:-1]  # the right half of a merged pair goes
        new_ids = tf.boolean_mask(tf.where(start, merged, ids), keep)
        lengths = tf.math.unsorted_segment_sum(tf.cast(keep, tf.int64), row, num_words)
        return new_ids, tf.concat([[0], tf.cumsum(lengths)], 0), tf.reduce_any(start)

    ids, splits, _ = tf.while_loop(
        lambda ids, splits, changed: changed, step, (ids, splits, tf.constant(True)),
        shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])))
    return tf.RaggedTensor.from_row_splits(ids, splits, validate=False)


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIPTokenizer(keras.layers.Layer):
    """In-graph CLIP tokenizer: tf.string [B] (or a scalar) → int32 [B, context_length].

    Built from TF core and TF Text ops only (regex_split, normalize_utf8), so it runs in
    ``tf.data`` ``.map``, in a ``tf.function`` and in a SavedModel served by stock TF Serving
    (load with ``import tensorflow_text`` first). Output equals :func:`tokenize` (same ids,
    same zero padding) for every text that ``ftfy.fix_text`` leaves unchanged.

    ``truncate=True`` (default) keeps the first ``context_length - 1`` tokens and puts eot last;
    ``truncate=False`` fails the whole batch (InvalidArgumentError) when a text is too long,
    since a graph cannot raise per text.

    ``ftfy.fix_text`` in-graph: its entity decoding (only in the lines before the first line
    with '<', as ftfy does), C1 controls read as Windows-1252, Latin ligatures, full/half-width
    forms, curly quotes, line breaks, terminal escapes, control characters and NFC, repeated
    until stable (at most 8 rounds). Not done: ftfy's mojibake repair, ``fix_encoding`` and its
    helpers ('cafÃ©' stays 'cafÃ©'; 'ß\x92' or 'ß' + U+FFFD are not re-decoded), so such texts
    tokenise differently from :func:`tokenize`.

    Python's Unicode behaviour (letter/digit classes, str.isspace, str.lower incl. final sigma,
    html.unescape, ftfy's tables) is read from the running Python, regex, html and ftfy when the
    layer is first called and baked into the graph as constants; lowercasing uses TF's
    ICU plus a table for the letters ICU's older Unicode lacks. Invalid UTF-8 becomes U+FFFD.

    Example:
        >>> tok = CLIPTokenizer()
        >>> tok(tf.constant(["a photo of a cat"]))[0, :7].numpy()
        array([49406,   320,  1125,   539,   320,  2368, 49407], dtype=int32)
        >>> ds = tf.data.Dataset.from_tensor_slices(["a dog", "a cat"]).batch(2).map(tok)
    """

    def __init__(self, context_length=CONTEXT_LENGTH, truncate=True, **kwargs):
        super().__init__(**kwargs)
        if int(context_length) != context_length or context_length < 2:
            raise ValueError(f"context_length must be an integer >= 2, got {context_length!r}")
        self.context_length = int(context_length)
        self.truncate = bool(truncate)
        self.built = True  # no weights

    def __call__(self, inputs, *args, **kwargs):
        # Keras treats a Python list as a structure of inputs (and refuses a bare str): a str, or
        # a list / tuple of str (or bytes), is one batch of texts.
        if isinstance(inputs, (str, bytes)):
            inputs = tf.constant(inputs, tf.string)
        elif isinstance(inputs, (list, tuple)):
            for i, text in enumerate(inputs):
                if not isinstance(text, (str, bytes)):
                    raise TypeError(f"CLIPTokenizer expects a tf.string tensor or a list of str; "
                                    f"item {i} is {type(text).__name__}: {text!r}")
            inputs = tf.constant(list(inputs), tf.string, shape=[len(inputs)])
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs):
        t = _tables()
        x = tf.reshape(tf.convert_to_tensor(inputs, tf.string), [-1])  # scalar → [1]
        # Invalid UTF-8 (a Python str cannot hold it) → U+FFFD, as bytes.decode(errors="replace").
        x = tf.strings.unicode_transcode(x, "UTF-8", "UTF-8", errors="replace")
        x = _ftfy_lite(x, t)
        x = tf.while_loop(lambda i, x: i < 2, lambda i, x: (i + 1, _html_unescape(x, t.html)),
                          (0, x), shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]))
                          )[1]  # html.unescape twice, traced once; the batch may be static
        x = tf.strings.regex_replace(x, t.space_pattern, " ")
        x = tf.strings.regex_replace(x, "^ | $", "")
        # Zero bytes would cut ICU's string short; ftfy removed them already.
        x = tf.strings.lower(_final_sigma(x, t), encoding="utf-8")
        if t.lower_fix is not None:
            x = _translate(x, t.lower_fix)
        words = _regex_split(x, t.token_pattern + "|" + t.separator_pattern,
                             t.token_pattern)  # [B, (words)]
        unique, where = tf.unique(words.flat_values)  # BPE each distinct word once per batch
        ids = tf.gather(_bpe(unique, t), where)  # [words, (ids)]
        ids = tf.RaggedTensor.from_row_splits(ids, words.row_splits, validate=False)
        ids = ids.merge_dims(1, 2)  # [B, (ids)]
        return self._pack(ids)

    def _pack(self, ids):
        size = self.context_length - 2
        if self.truncate:
            ids = ids[:, :size]
        else:
            longest = tf.reduce_max(tf.concat([ids.row_lengths(), [0]], 0))
            tf.debugging.assert_less_equal(
                longest, tf.cast(size, longest.dtype),
                message=f"CLIPTokenizer(truncate=False): a text has more than {size} tokens "
                        f"(context_length {self.context_length}); use truncate=True")
        batch = ids.nrows()
        sot = tf.fill([batch, 1], SOT_TOKEN)
        eot = tf.fill([batch, 1], EOT_TOKEN)
        full = tf.concat([sot, tf.cast(ids, tf.int32), eot], axis=1)
        return full.to_tensor(0, shape=[None, self.context_length])

    def compute_output_shape(self, input_shape):
        batch = input_shape[0] if len(input_shape) else 1
        return (batch, self.context_length)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(context_length=self.context_length, truncate=self.truncate)
        return config
