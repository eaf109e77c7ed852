#!/usr/bin/env python3
"""The GEMM under lookalike's convolutions against PyTorch's, on the same shapes, in one run.

Runs `cargo run --release -p benches --example gemm -- --json` (the `gemm` crate that
vendor/burn-flex's dense convolutions call, on ResNet-18's convolution products at 224 px),
then `torch.mm` on the same shapes with the same threads, and prints one table: GFLOP/s on one
thread and on all, and the ratio (above 1: the gemm crate is faster). It says how fast any
convolution built on the gemm crate can be against PyTorch's, whose convolutions run on oneDNN.

    python3 benches/peers/gemm.py              # about a minute; makes target/peers-venv first
    python3 benches/peers/gemm.py --markdown target/peers/gemm.md

Uses the peers venv of peers.py (torch from requirements.txt). Not part of CI.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import peers  # noqa: E402  (its venv and root)


def torch_gflops(torch, m, n, k, threads, seconds=1.0):
    torch.set_num_threads(threads)
    a = torch.full((m, k), 0.5)
    b = torch.full((k, n), 0.25)
    out = torch.empty((m, n))
    torch.mm(a, b, out=out)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        calls += 1
    return 2.0 * m * n * k * calls / (time.perf_counter() - start) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", help="write the table here too")
    p.add_argument("--here", action="store_true", help="use this Python's torch (no venv)")
    args = p.parse_args()
    peers.ensure_venv(__file__)
    import torch

    cmd = ["cargo", "run", "--release", "-q", "-p", "benches", "--example", "gemm", "--", "--json"]
    ours = [json.loads(line) for line in
            subprocess.run(cmd, cwd=peers.ROOT, check=True, capture_output=True,
                           text=True).stdout.splitlines() if line.startswith("{")]
    threads = ours[0]["threads"]
    lines = [f"| layer (m × k · k × n) | gemm crate, 1 thread | torch.mm, 1 thread | ratio | "
             f"gemm crate, {threads} threads | torch.mm, {threads} threads | ratio |",
             "|---|---|---|---|---|---|---|"]
    for row in ours:
        m, n, k = row["m"], row["n"], row["k"]
        t1 = torch_gflops(torch, m, n, k, 1)
        tn = torch_gflops(torch, m, n, k, threads)
        lines.append(f"| {row['layer']} ({m} × {k} · {k} × {n}) | {row['one']:.1f} | {t1:.1f} | "
                     f"{row['one'] / t1:.2f}× | {row['all']:.1f} | {tn:.1f} | {row['all'] / tn:.2f}× |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        path = pathlib.Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table + "\n")


if __name__ == "__main__":
    main()
