"""
``env.step``'s time per step in ScratchDQN runs of throughput configuration 2, by backend: the PyTorch backend, the
PyTorch backend inside the one-thread BLAS limit that ``mlp_backend="numpy"`` sets, and the NumPy backend.

    python benchmarks/env_step_by_backend.py [--repeats 2] [--scale 0.5]

Each run is instrumented as ``throughput.py --breakdown`` instruments it (same probes); the three variants alternate.
"""

from __future__ import annotations

import argparse

from threadpoolctl import threadpool_limits
from throughput import Breakdown, configs  # (benchmarks/ is the script's folder)

from sb3_dqn_ext import ScratchDQN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args()
    config = configs(args.scale)["2"]
    variants = [
        ("torch", {}, False),
        ("torch, BLAS on one thread", {}, True),
        ("numpy", {"mlp_backend": "numpy"}, False),
    ]
    print("| variant | wall s | env.step µs/step | store µs/step | other loop µs/step | sample µs/update |")
    print("|---|---:|---:|---:|---:|---:|")
    for _ in range(args.repeats):
        for label, extra, limit in variants:
            if limit:
                with threadpool_limits(limits=1, user_api="blas"):
                    r = Breakdown().run(ScratchDQN, config, extra)
            else:
                r = Breakdown().run(ScratchDQN, config, extra)
            print(
                f"| {label} | {r['wall s']:.2f} | {r['env.step µs/step']:.1f} | {r['store µs/step']:.1f} | "
                f"{r['other loop µs/step']:.1f} | {r['sample µs/update']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
