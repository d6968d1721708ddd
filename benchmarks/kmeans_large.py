"""k-means on large layers: our exact and fast paths beside faiss-cpu, time, peak memory and inertia.

Rows are synthetic weights (Kaiming scale, Student-t tail with df = 6, seed 0), N x d for every ``--shape``
and K for every ``--k``. Every (shape, K, library) runs in a fresh process, so its peak resident memory is
its own (over the process's baseline before the data exists, less the data). Each library does the whole
job a compression needs, centers and the center of every row:

  exact    ``kmeans(rows, K)`` (k-means++ on growing samples, Lloyd on all rows to a 1e-6 improvement)
  fast     ``kmeans(rows, K, fast=True)`` (trained on 256 rows per center, then every row assigned exactly)
  faiss    ``faiss.Kmeans(d, K, niter=25, seed=0).train(rows)`` then ``index.search(rows, 1)``: train and
           assignment of every row are timed together (the parts are printed too)
  sklearn  ``KMeans(n_clusters=K, n_init=1)`` (on request: minutes per workload)

Inertia is recomputed the same way for all: float64 squared distance of each row to the center its library
assigned it. ``--device cuda`` adds our two paths on the GPU (rows moved there before the clock starts); the
column is skipped, with the reason, when torch sees no GPU.

    pip install faiss-cpu [scikit-learn]
    OMP_NUM_THREADS=1 python benchmarks/kmeans_large.py [--threads 1] [--shape 1500000x3 ...] [--k 256 ...]
        [--libs exact,fast,faiss] [--device cuda] [--repeat 1]
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

SHAPES = [f"{n}x{d}" for n in (1_000_000, 8_000_000) for d in (1, 3, 4, 9, 18)] + ["1500000x3"]
KS = (16, 256)
LIBRARIES = ("exact", "fast", "faiss", "sklearn")


def _rows(n: int, d: int) -> np.ndarray:
    """Kaiming-scale rows with a Student-t tail (df = 6), the same for every library. Drawn in chunks (the same
    values as one draw), so no float64 copy of all rows raises the process's peak memory."""
    rng = np.random.default_rng(0)
    df = 6.0
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        chunk = rng.standard_t(df, size=(min(1 << 16, n - start), d))
        out[start : start + chunk.shape[0]] = chunk * np.sqrt((df - 2) / df) * 0.02
    return out


def _inertia(rows: np.ndarray, centers: np.ndarray, assignments: np.ndarray) -> float:
    """float64 squared distance of every row to its assigned center, in blocks."""
    c = np.asarray(centers, dtype=np.float64)
    total = 0.0
    for start in range(0, rows.shape[0], 1 << 20):
        block = rows[start : start + (1 << 20)].astype(np.float64)
        total += float(np.square(block - c[assignments[start : start + (1 << 20)]]).sum())
    return total


def _fit(lib: str, rows: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(centers, assignments, extra timings) of one library."""
    if lib in ("exact", "fast"):
        from deepkmeans.cluster.kmeans import kmeans

        x = torch.from_numpy(rows).to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = kmeans(x, k, seed=0, fast=lib == "fast")
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return result.centers.cpu().numpy(), result.assignments.cpu().numpy(), {"seconds": seconds}
    if lib == "sklearn":
        from sklearn.cluster import KMeans

        start = time.perf_counter()
        fitted = KMeans(n_clusters=k, n_init=1, random_state=0).fit(rows)
        return fitted.cluster_centers_, fitted.labels_, {"seconds": time.perf_counter() - start}
    import faiss

    start = time.perf_counter()
    km = faiss.Kmeans(rows.shape[1], k, niter=25, seed=0)
    km.train(rows)
    trained = time.perf_counter()
    _, labels = km.index.search(rows, 1)
    done = time.perf_counter()
    return km.centroids, labels[:, 0], {"seconds": done - start, "train": trained - start, "assign": done - trained}


def _child(shape: str, k: int, lib: str, threads: int, device: str, repeat: int) -> None:
    torch.set_num_threads(threads)
    if lib == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    else:  # imported before the baseline, as faiss is: the library's own code is not the run's memory
        import deepkmeans.cluster.kmeans  # noqa: F401
    from threadpoolctl import threadpool_limits

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n, d = map(int, shape.split("x"))
    rows = _rows(n, d)
    best = None
    with threadpool_limits(limits=threads):
        for _ in range(repeat):
            centers, assignments, times = _fit(lib, rows, k, device)
            if best is None or times["seconds"] < best[2]["seconds"]:
                best = (centers, assignments, times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    centers, assignments, times = best
    report = {"peak": peak, "data": rows.nbytes, "inertia": _inertia(rows, centers, assignments)} | times
    print(json.dumps(report))


def _cuda_reason() -> str:
    """Why the CUDA column cannot run here ('' when it can)."""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", action="append", help="N x d of the rows, e.g. 1500000x3 (repeatable)")
    parser.add_argument("--k", type=int, action="append", help="centers (repeatable; default 16 and 256)")
    parser.add_argument("--libs", default="exact,fast,faiss", help=f"comma-separated, of {', '.join(LIBRARIES)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: add our paths on the GPU")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell in its process; the fastest counts")
    parser.add_argument("--child", nargs=4, metavar=("SHAPE", "K", "LIB", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, k, lib, device = args.child
        _child(shape, int(k), lib, args.threads, device, args.repeat)
        return
    libs = [lib.strip() for lib in args.libs.split(",")]
    unknown = sorted(set(libs) - set(LIBRARIES))
    if unknown:
        parser.error(f"unknown --libs {', '.join(unknown)}; valid: {', '.join(LIBRARIES)}")
    cells = [(lib, "cpu") for lib in libs]
    if args.device == "cuda":
        reason = _cuda_reason()
        if reason:
            print(f"cuda column skipped: {reason}")
        else:
            cells += [(lib, "cuda") for lib in libs if lib in ("exact", "fast")]
    print(f"{args.threads} thread(s) per library; torch {torch.__version__}; best of {args.repeat}")
    print("| rows x d | K | library | time | vs faiss | peak memory over the data | inertia vs faiss |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shape or SHAPES:
        for k in args.k or KS:
            faiss_result = None
            for lib, device in sorted(cells, key=lambda cell: cell[0] != "faiss"):
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeat", str(args.repeat)]
                done = subprocess.run([*cmd, "--child", shape, str(k), lib, device], capture_output=True, text=True)
                name = lib if device == "cpu" else f"{lib} (cuda)"
                if done.returncode != 0:
                    print(f"| {shape} | {k} | {name} | failed: {done.stderr.strip()[-200:]} ||||", flush=True)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                faiss_result = r if lib == "faiss" else faiss_result
                ref = faiss_result or r
                seconds = f"{r['seconds']:.2f} s"
                if lib == "faiss":
                    seconds += f" ({r['train']:.2f} + {r['assign']:.2f})"
                memory = f"{(r['peak'] - r['data']) / 2**20:.0f} MiB (data {r['data'] / 2**20:.0f} MiB)"
                ratio = f"{r['seconds'] / ref['seconds']:.2f}x | {memory} | {r['inertia'] / ref['inertia']:.4f}"
                print(f"| {shape} | {k} | {name} | {seconds} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
