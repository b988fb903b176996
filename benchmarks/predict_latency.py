"""
``ScratchDQN.predict`` for one observation, PyTorch backend against ``mlp_backend="numpy"``, alternated.

    python benchmarks/predict_latency.py [--net-arch 256,256] [--calls 3000] [--repeats 3]

Each repeat times ``--calls`` deterministic calls per backend on a fresh CartPole model (one torch thread, NumPy's
BLAS on one thread as ``learn()`` sets it) and prints µs per call; the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch as th
from threadpoolctl import threadpool_limits

from sb3_dqn_ext import ScratchDQN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net-arch", default="256,256")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    th.set_num_threads(1)
    net_arch = [int(width) for width in args.net_arch.split(",")]
    models = {
        backend: ScratchDQN(
            "MlpPolicy", "CartPole-v1", mlp_backend=backend, seed=0, policy_kwargs=dict(net_arch=net_arch)
        )
        for backend in ("torch", "numpy")
    }
    obs = np.zeros(4, np.float32)
    print("| repeat | torch µs/call | numpy µs/call | ratio |")
    print("|---:|---:|---:|---:|")
    with threadpool_limits(limits=1, user_api="blas"):
        for repeat in range(args.repeats):
            micros = {}
            for backend, model in models.items():
                for _ in range(200):
                    model.predict(obs, deterministic=True)
                start = time.perf_counter()
                for _ in range(args.calls):
                    model.predict(obs, deterministic=True)
                micros[backend] = (time.perf_counter() - start) / args.calls * 1e6
            torch_us, numpy_us = micros["torch"], micros["numpy"]
            print(f"| {repeat} | {torch_us:.1f} | {numpy_us:.1f} | {torch_us / numpy_us:.2f}x |")


if __name__ == "__main__":
    main()
