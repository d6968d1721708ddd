"""k-means on large layers: ours vs scikit-learn and faiss-cpu, time, peak memory and inertia, in one run.

Workloads (synthetic weights: Kaiming scale with a Student-t tail, df = 6, fixed seed):
  resnet50-3x3    7.7M rows of d = 3 (ResNet-50's 23M conv weights as kernel rows), K = 32 and 256
  linear4096-d1   a 4096 x 4096 Linear as 16.8M scalars, K = 16 and 256
  linear4096-d4   the same Linear as 4.2M rows of d = 4, K = 256
Every (workload, library) runs in a fresh process, so its peak resident memory is its own (minus the
process's baseline, measured before the data exists). Inertia is recomputed the same way for all three:
the exact float64 distance of every row to its nearest returned center. Libraries run with their defaults:
ours (k-means++ on growing samples, Lloyd on all rows to a 1e-6 relative improvement, at most 100 passes),
scikit-learn ``KMeans(n_init=1)`` (Lloyd to its own tolerance, at most 300 iterations) and faiss
``Kmeans`` (25 iterations on a sample of at most 256 rows per center, then one assignment pass).

    pip install faiss-cpu scikit-learn
    python benchmarks/kmeans_large.py [--threads 2] [--only resnet50-3x3] [--k 256] [--skip sklearn]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

WORKLOADS = {
    "resnet50-3x3": ((7_700_000, 3), (32, 256)),
    "linear4096-d1": ((4096 * 4096, 1), (16, 256)),
    "linear4096-d4": ((4096 * 1024, 4), (256,)),
}
LIBRARIES = ("ours", "sklearn", "faiss")


def _rows(n: int, d: int) -> np.ndarray:
    """Kaiming-scale rows with a Student-t tail (df = 6), the same for every library."""
    rng = np.random.default_rng(0)
    df = 6.0
    return (rng.standard_t(df, size=(n, d)) * np.sqrt((df - 2) / df) * 0.02).astype(np.float32)


def _inertia(rows: np.ndarray, centers: np.ndarray) -> float:
    """Exact float64 squared distance of every row to its nearest center, in blocks."""
    x = torch.from_numpy(rows)
    c = torch.from_numpy(np.asarray(centers, dtype=np.float64))
    total = 0.0
    for start in range(0, x.shape[0], 1 << 16):
        block = x[start : start + (1 << 16)].double()
        total += float(torch.cdist(block, c).square_().min(dim=1).values.sum())
    return total


def _fit(lib: str, rows: np.ndarray, k: int) -> np.ndarray:
    if lib == "ours":
        from deepkmeans.cluster.kmeans import kmeans

        return kmeans(torch.from_numpy(rows), k, seed=0).centers.numpy()
    if lib == "sklearn":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=1, random_state=0).fit(rows).cluster_centers_
    import faiss

    km = faiss.Kmeans(rows.shape[1], k, niter=25, seed=0)
    km.train(rows)
    return km.centroids


def _child(workload: str, k: int, lib: str, threads: int) -> None:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    if lib == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (n, d), _ = WORKLOADS[workload]
    rows = _rows(n, d)
    with threadpool_limits(limits=threads):
        start = time.perf_counter()
        centers = _fit(lib, rows, k)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"seconds": seconds, "peak": peak, "data": rows.nbytes, "inertia": _inertia(rows, centers)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="run only these workloads")
    parser.add_argument("--skip", choices=LIBRARIES[1:], action="append", default=[], help="leave a peer out")
    parser.add_argument("--k", type=int, action="append", help="run only these K")
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "K", "LIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.child[2], args.threads)
        return
    libs = [lib for lib in LIBRARIES if lib not in args.skip]
    print(f"{args.threads} threads per library; torch {torch.__version__}")
    print("| workload | rows x d | K | library | time | vs ours | peak memory over the data | inertia vs ours |")
    print("|---|---|---|---|---|---|---|---|")
    for workload in args.only or WORKLOADS:
        (n, d), ks = WORKLOADS[workload]
        for k in [k for k in ks if not args.k or k in args.k]:
            results = {}
            for lib in libs:
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", workload, str(k), lib]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"| {workload} | {n} x {d} | {k} | {lib} | failed: {done.stderr.strip()[-200:]} |||")
                    continue
                results[lib] = r = json.loads(done.stdout.strip().splitlines()[-1])
                ours = results.get("ours", r)
                speed = f"{r['seconds']:.1f} s | {r['seconds'] / ours['seconds']:.2f}x"
                memory = f"{(r['peak'] - r['data']) / 2**20:.0f} MiB (data {r['data'] / 2**20:.0f} MiB)"
                inertia = f"{r['inertia'] / ours['inertia']:.4f}"
                print(f"| {workload} | {n} x {d} | {k} | {lib} | {speed} | {memory} | {inertia} |", flush=True)


if __name__ == "__main__":
    main()
