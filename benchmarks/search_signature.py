"""SavedModel size and query latency of the exact search part of the `search` signature
(export.search_signature.search_top_k) for N collection vectors of D=512 (ViT-B/32's width).

    .venv/bin/python benchmarks/search_signature.py 10000 100000 1000000

prints one markdown row per N: the saved folder's size, and the median of 30 timed calls (after
one warm-up) for 1 and 8 queries, k = 10.
"""
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
import tensorflow as tf
from export.search_signature import search_top_k

D, K = 512, 10


class Search(tf.Module):
    def __init__(self, n):
        super().__init__()
        emb = tf.math.l2_normalize(tf.random.stateless_normal([n, D], seed=[0, n]), axis=1)
        self.emb = tf.Variable(emb, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32, name="queries"),
                                  tf.TensorSpec([None], tf.int32, name="k")])
    def search(self, queries, k):
        idx, scores = search_top_k(queries, self.emb, k)
        return {"index": idx, "scores": scores}


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


print(f"| N | SavedModel (search part) | latency B=1, k={K} (median of 30) | B=8 |")
print("|---|---|---|---|")
for n in map(int, sys.argv[1:]):
    tmp = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR"))
    m = Search(n)
    t0 = time.time()
    tf.saved_model.save(m, tmp, signatures={"search": m.search})
    save_s = time.time() - t0
    del m
    size = dir_size(tmp)
    t0 = time.time()
    fn = tf.saved_model.load(tmp).signatures["search"]
    load_s = time.time() - t0
    row = []
    for b in (1, 8):
        q = tf.math.l2_normalize(tf.random.normal([b, D]), axis=1)
        k = tf.constant([K])
        fn(queries=q, k=k)  # warm up
        times = []
        for _ in range(30):
            t = time.perf_counter(); fn(queries=q, k=k)["scores"].numpy(); times.append(time.perf_counter() - t)
        row.append(np.median(times) * 1e3)
    print(f"| {n:,} | {size / 2**20:,.1f} MiB | {row[0]:.2f} ms | {row[1]:.2f} ms |  (save {save_s:.1f} s, load {load_s:.1f} s)", flush=True)
    shutil.rmtree(tmp)
