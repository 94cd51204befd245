"""Metric throughput: images/s through the classifier extractor (CPU, and CUDA when present), and the
wall time of a 10,000-sample Frechet distance on Fashion-MNIST-sized inputs (28x28 padded to 32x32).

    python benchmarks/bench_metrics.py [--n 10000] [--json out.json]

Real Fashion-MNIST test images are used when /usr/share/datasets/fashion-mnist holds the IDX file
t10k-images-idx3-ubyte(.gz); otherwise random images in [-1, 1] (the timing does not depend on content).
The classifier is a freshly initialised SmallCNN: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from diffatlas.metrics.extractors import ClassifierExtractor, SmallCNN
from diffatlas.metrics.stats import FrechetReference, StreamingMoments

FASHION = Path("/usr/share/datasets/fashion-mnist")


def load_fashion_test(n: int) -> tuple[torch.Tensor, str]:
    """(n, 1, 32, 32) images in [-1, 1] and where they came from."""
    for name in ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"):
        path = FASHION / name
        if path.is_file():
            raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
            count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
            imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(count, 1, rows, cols)[:n]
            x = torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1.0)
            x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
            reps = (n + x.shape[0] - 1) // x.shape[0]
            return x.repeat(reps, 1, 1, 1)[:n], str(path)
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1, "random"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(ext: ClassifierExtractor, x: torch.Tensor, repeats: int = 3) -> float:
    """Best-of-`repeats` images/s of features_and_logits (input on the CPU, output on the CPU)."""
    ext.features_and_logits(x[: ext.batch_size])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(ext.device)
        t = time.perf_counter()
        ext.features_and_logits(x)
        sync(ext.device)
        best = min(best, time.perf_counter() - t)
    return x.shape[0] / best


def frechet_timing(ext: ClassifierExtractor, x: torch.Tensor, ref: FrechetReference) -> dict[str, float]:
    sync(ext.device)
    t0 = time.perf_counter()
    feats = ext.features(x)
    sync(ext.device)
    t1 = time.perf_counter()
    m = StreamingMoments()
    for i in range(0, feats.shape[0], 1000):
        m.update(feats[i : i + 1000])
    t2 = time.perf_counter()
    fid = ref.distance(m.mean, m.cov)
    t3 = time.perf_counter()
    return {"extract_s": t1 - t0, "moments_s": t2 - t1, "distance_s": t3 - t2, "total_s": t3 - t0, "fid": fid}


def stats_timing(n: int, d: int) -> dict[str, float]:
    """Moments + Frechet distance for random (n, d) features: the statistics cost alone."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, d, generator=g)
    b = torch.randn(n, d, generator=g) * 1.1
    t0 = time.perf_counter()
    ma, mb = StreamingMoments(), StreamingMoments()
    for i in range(0, n, 1000):
        ma.update(a[i : i + 1000])
        mb.update(b[i : i + 1000])
    t1 = time.perf_counter()
    ref = FrechetReference(mb.mean, mb.cov)
    t2 = time.perf_counter()
    fid = ref.distance(ma.mean, ma.cov)
    t3 = time.perf_counter()
    return {"n": n, "d": d, "moments_both_s": t1 - t0, "reference_sqrt_s": t2 - t1, "distance_s": t3 - t2, "fid": fid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    x32, source = load_fashion_test(args.n)
    x8 = torch.rand(args.n, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    result: dict = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "data": source, "runs": [],
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, data: {source}")
    for dev in devices:
        for size, x in ((8, x8), (32, x32)):
            torch.manual_seed(0)
            ext = ClassifierExtractor(SmallCNN(1, 10, size), batch_size=1024 if dev.type == "cuda" else 512).to(dev)
            ips = throughput(ext, x)
            row = {"device": dev.type, "image": f"1x{size}x{size}", "images_per_s": round(ips, 1)}
            if size == 32:
                half = x.shape[0] // 2
                ref_stats = StreamingMoments().update(ext.features(x[:half]))
                ref = FrechetReference(ref_stats.mean, ref_stats.cov)
                row.update({k: float(f"{v:.4g}") for k, v in frechet_timing(ext, x, ref).items()})
            result["runs"].append(row)
            print(row)
    for d in (128, 2048):
        row = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in stats_timing(args.n, d).items()}
        result.setdefault("stats", []).append(row)
        print("stats", row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
