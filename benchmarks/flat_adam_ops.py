"""
Adam's default op sequence on one flat float32 buffer (what ScratchDQN runs on CPU, bitwise ``torch.optim.Adam``)
against PyTorch's fused Adam kernel, and the same sequence run in cache-sized chunks (the same ops per element, so
the same bits), one torch thread.

    python benchmarks/flat_adam_ops.py [--params 1686180] [--chunks 16384,65536,262144]

The default size is the parameter count of SB3's NatureCNN with a 4-action head on 84x84x4 frames.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch as th
from throughput import best_seconds  # (benchmarks/ is the script's folder, so on sys.path)

th.set_num_threads(1)
LR, BETA1, BETA2, EPS, STEP = 1e-4, 0.9, 0.999, 1e-8, 100


def adam_ops(g: th.Tensor, m: th.Tensor, v: th.Tensor, p: th.Tensor, buffer: th.Tensor) -> None:
    """The sequence of ``sb3_dqn_ext.fast_update.FlatAdam._adam`` (its ``max(v, 1e-37)`` square root)."""
    step_size = (LR / (1 - BETA1**STEP)) * -1
    bias_correction2_sqrt = (1 - BETA2**STEP) ** 0.5
    m.lerp_(g, 1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    denom = th.clamp_min(v, 1e-37, out=buffer).sqrt_().div_(bias_correction2_sqrt).add_(EPS)
    p.addcdiv_(m, denom, value=step_size)


def best_ms(fn: Callable[[], None], reps: int = 30) -> float:
    """Milliseconds per call: the throughput benchmark's timing (best of 5 × ``reps`` calls, after 2)."""
    return best_seconds(fn, reps, warmup=2) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_686_180)
    parser.add_argument("--chunks", default="16384,65536,262144")
    args = parser.parse_args()
    n = args.params
    th.manual_seed(0)
    start = (th.randn(n) * 1e-3, th.randn(n) * 1e-3, th.rand(n) * 1e-6, th.randn(n))

    def state() -> tuple[th.Tensor, ...]:
        return tuple(t.clone() for t in start)

    g, m, v, p = state()
    buffer = th.empty(n)
    whole = best_ms(lambda: adam_ops(g, m, v, p, buffer))
    print(f"{n} parameters, one thread: Adam's op sequence on the flat buffer {whole:.3f} ms")
    reference = state()
    adam_ops(*reference, th.empty(n))
    for chunk in (int(c) for c in args.chunks.split(",")):
        g, m, v, p = state()

        def chunked(g=g, m=m, v=v, p=p, chunk=chunk) -> None:
            for s in range(0, n, chunk):
                adam_ops(g[s : s + chunk], m[s : s + chunk], v[s : s + chunk], p[s : s + chunk], buffer[s : s + chunk])

        chunked()
        same = all(th.equal(a, b) for a, b in zip(reference[1:], (m, v, p), strict=True))
        print(f"  in chunks of {chunk}: {best_ms(chunked):.3f} ms (first step bitwise the whole-buffer one: {same})")
    g, m, v, p = state()
    steps = [th.tensor(float(STEP))]

    def fused() -> None:
        th._fused_adam_(
            [p],
            [g],
            [m],
            [v],
            [],
            steps,
            amsgrad=False,
            lr=LR,
            beta1=BETA1,
            beta2=BETA2,
            weight_decay=0.0,
            eps=EPS,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    print(f"  fused Adam kernel (torch.optim.Adam(fused=True)): {best_ms(fused):.3f} ms")


if __name__ == "__main__":
    main()
