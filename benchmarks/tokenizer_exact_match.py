"""Exact-match rate of our two tokenizer paths against OpenAI's reference ids, per category.

    .venv/bin/python benchmarks/tokenizer_exact_match.py [--batch-size 256] [--show 3]

Reads tests/fixtures/tokenizer_corpus.json.gz (made by tests/fixtures/make_tokenizer_corpus.py).
A string matches when the full, un-truncated id list is equal. "clean" = the strings that
ftfy.fix_text leaves unchanged (the in-graph path does not repair mojibake). Throughput: the
Python path with a cold BPE cache; the in-graph path as a traced tf.function on batches, after
one warm-up batch.
"""

import argparse
import collections
import gzip
import json
import os
import time

import numpy as np
import tensorflow as tf

from keras_clip.text.tokenizer import EOT_TOKEN, CLIPTokenizer, SimpleTokenizer

CORPUS = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                      "tokenizer_corpus.json.gz")


def load_corpus(path=CORPUS):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def python_ids(texts):
    tok = SimpleTokenizer()
    start = time.perf_counter()
    ids = [tok.encode(t) for t in texts]
    return ids, len(texts) / (time.perf_counter() - start)


def graph_ids(texts, batch_size, context_length):
    """Ids from CLIPTokenizer with a context long enough that nothing is truncated."""
    layer = CLIPTokenizer(context_length=context_length)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None], tf.string)])
    fn(tf.constant(texts[:batch_size]))  # trace + warm-up
    start = time.perf_counter()
    rows = [fn(tf.constant(texts[i:i + batch_size])).numpy()
            for i in range(0, len(texts), batch_size)]
    rate = len(texts) / (time.perf_counter() - start)
    out = []
    for row in np.concatenate(rows):
        end = int(np.flatnonzero(row == EOT_TOKEN)[-1])
        out.append(row[1:end].tolist())
    return out, rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--show", type=int, default=0, help="print N mismatches per path")
    args = parser.parse_args()

    data = load_corpus()
    texts, cats, ref, clean = data["texts"], data["categories"], data["ids"], data["ftfy_clean"]
    print(f"corpus: {len(texts)} strings, {sum(clean)} ftfy-clean; reference {data['meta']}")
    py, py_rate = python_ids(texts)
    context = max(len(r) for r in ref) + 2
    graph, graph_rate = graph_ids(texts, args.batch_size, context)

    stats = collections.defaultdict(lambda: np.zeros(5, int))  # n, py ok, graph ok, clean, both
    for c, r, p, g, k in zip(cats, ref, py, graph, clean):
        for key in (c, "ALL"):
            stats[key] += [1, p == r, g == r, k, k and g == r]

    def pct(a, b):
        return f"{100.0 * a / b:6.2f}%" if b else "     –"
    print(f"\n| {'category':<15} | {'n':>5} | {'python':>7} | {'in-graph':>8} | "
          f"{'clean n':>7} | {'in-graph on clean':>17} |")
    print(f"|{'-' * 17}|{'-' * 7}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 19}|")
    for key in sorted(stats, key=lambda k: (k == "ALL", k)):
        n, p, g, k, kg = stats[key]
        name = f"**{key}**" if key == "ALL" else key
        print(f"| {name:<15} | {n:>5} | {pct(p, n):>7} | {pct(g, n):>8} | {k:>7} | "
              f"{pct(kg, k):>17} |")
    print(f"\nthroughput: python {py_rate:,.0f} strings/s (cold cache), "
          f"in-graph {graph_rate:,.0f} strings/s (batch {args.batch_size}, tf.function)")

    for name, ids in (("python", py), ("in-graph", graph)):
        bad = [i for i in range(len(texts)) if ids[i] != ref[i]]
        for i in bad[:args.show]:
            print(f"\n{name} mismatch [{cats[i]}, clean={clean[i]}] {texts[i]!r}\n"
                  f"  ref  {ref[i]}\n  ours {ids[i]}")


if __name__ == "__main__":
    main()
