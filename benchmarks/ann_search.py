"""Approximate (FAISS IVF) vs exact search in keras_clip.index.ImageIndex: recall@10, queries/s,
build time and memory, on synthetic unit vectors.

Data (``--data``):
* ``clustered`` (default): ``--n`` unit vectors in ``--dim`` dimensions drawn around
  ``--clusters`` random unit centres (x = normalise(c + sigma * g / sqrt(d)), g standard normal),
  a stand-in for real CLIP embeddings, which are far from uniform on the sphere; queries are
  fresh draws from the same mixture.
* ``uniform``: uniform on the sphere (normalised Gaussians): no structure, the worst case for
  any ANN index (the nearest neighbours are barely nearer than the rest).

Recall@10 is |ANN top-10 ∩ exact top-10| / 10 averaged over the queries; exact search is
``search_embeddings(exact=True)`` (chunked float32 matmul, keras_clip.index.exact_search).
Queries/s: ``--queries`` queries in one call, median and min–max over ``--reps`` repetitions.

    python benchmarks/ann_search.py --n 1000000 --dim 512 --reps 5
"""

import argparse
import os
import statistics
import time

import numpy as np


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def unit(x):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic(n, dim, clusters, sigma, kind, rng, chunk=100_000):
    out = np.empty((n, dim), np.float32)
    centres = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        g = rng.standard_normal((m, dim), dtype=np.float32)
        if kind == "clustered":
            g = centres[rng.integers(0, clusters, m)] + sigma * g / np.sqrt(dim)
        out[s:s + m] = unit(g)
    return out


def timed(fn, reps):
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, times


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--kinds", default="ivf_flat,ivf_sq8")
    p.add_argument("--nlist", type=int, default=2048)
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--nprobes", default="4,8,16,32")
    args = p.parse_args()

    import faiss

    from keras_clip.index import ImageIndex

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    emb = synthetic(args.n, args.dim, args.clusters, args.sigma, args.data, rng)
    queries = synthetic(args.queries, args.dim, args.clusters, args.sigma, args.data,
                        np.random.default_rng(1)) if args.data == "uniform" else None
    if queries is None:  # same centres: regenerate them from the same seed, fresh noise
        rng_c = np.random.default_rng(0)
        centres = unit(rng_c.standard_normal((args.clusters, args.dim), dtype=np.float32))
        r = np.random.default_rng(1)
        g = r.standard_normal((args.queries, args.dim), dtype=np.float32)
        queries = unit(centres[r.integers(0, args.clusters, args.queries)]
                       + args.sigma * g / np.sqrt(args.dim))
    print(f"data: {args.n} x {args.dim} {args.data} unit vectors"
          + (f" ({args.clusters} clusters, sigma {args.sigma})" if args.data == "clustered"
             else "") + f", made in {time.perf_counter() - t:.1f} s; {args.queries} queries, "
          f"k={args.k}; {os.cpu_count()} CPU cores, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")
    base = rss_mib()
    index = ImageIndex(emb)
    del emb
    exact, times = timed(lambda: index.search_embeddings(queries, args.k, exact=True), args.reps)
    exact_qps = [args.queries / s for s in times]
    rows = [("exact (chunked matmul)", "-", "-", 1.0, exact_qps, "-",
             f"{index.embeddings.nbytes / 2**20:.0f}")]
    for kind in args.kinds.split(","):
        before = rss_mib()
        t = time.perf_counter()
        index.build_ann(kind, nlist=args.nlist, train_size=args.train_size)
        build = time.perf_counter() - t
        size = faiss.serialize_index(index._ann[1]).nbytes / 2**20
        grown = rss_mib() - before
        for nprobe in [int(x) for x in args.nprobes.split(",")]:
            index.set_nprobe(nprobe)
            approx, times = timed(lambda: index.search_embeddings(queries, args.k), args.reps)
            recall = np.mean([len(set(a) & set(e)) / args.k
                              for a, e in zip(approx.indices, exact.indices)])
            rows.append((kind, args.nlist, nprobe, recall, [args.queries / s for s in times],
                         f"{build:.0f}", f"{size:.0f} (RSS +{grown:.0f})"))
        index.drop_ann()
    med_exact = statistics.median(exact_qps)
    print(f"RSS before the index: {base:.0f} MiB; exact search holds the float32 matrix")
    print("| search | nlist | nprobe | recall@10 | queries/s median (min-max) | x exact | "
          "build s | index MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, nlist, nprobe, recall, qps, build, mem in rows:
        m = statistics.median(qps)
        print(f"| {kind} | {nlist} | {nprobe} | {recall:.3f} | {m:,.0f} ({min(qps):,.0f}-"
              f"{max(qps):,.0f}) | {m / med_exact:.1f}x | {build} | {mem} |")


if __name__ == "__main__":
    main()
