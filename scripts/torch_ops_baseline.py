#!/usr/bin/env python3
"""PyTorch's side of daa's per-operation benchmark (``cargo xtask bench --ops --torch``).

Times, on the CPU with ``--threads`` threads, forward and forward + backward
(of the output's sum) of the operations ``benches/src/ops.rs`` lists, at the
same sizes, through PyTorch's own paths: ``scaled_dot_product_attention``
(causal, grouped heads through ``enable_gqa``), ``rms_norm``, RoPE as
transformers' Llama writes it, ``silu(a) * u``, a matrix product, and one
``AdamW`` step (``fused=True``, PyTorch's one-kernel CPU AdamW, where this
PyTorch has it; else ``foreach``). Prints one JSON list in the benchmark's
format (median seconds over ``--repeats`` after one warm-up). Runs in the
virtual environment ``cargo xtask bench --trainer --torch`` installs
(``$DAA_TORCH_VENV``, default ``/var/tmp/daa-torch-venv``).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

OPS = [
    ("attention", [2, 4, 2, 2048, 64]),
    ("attention", [16, 4, 2, 128, 64]),
    ("rms_norm", [2, 2048, 256]),
    ("rope", [2, 4, 2048, 64]),
    ("swiglu", [2, 2048, 680]),
    ("linear", [4096, 256, 680]),
    ("adamw", [5_000_000]),
]


def median(repeats, f):
    f()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_op(make_inputs, op, repeats):
    """Inputs made once, before the clock; each run takes fresh leaves of them."""
    made = make_inputs()

    def leaves():
        return [t.detach().requires_grad_() for t in made]

    def forward():
        op(*leaves())

    # The output's gradient: a fixed contiguous tensor (as daa's benchmark does).
    shape = op(*leaves()).shape
    upstream = ((torch.arange(shape.numel(), dtype=torch.float32) * 0.618) % 1.0 - 0.5).reshape(shape) * 0.1

    def step():
        (op(*leaves()) * upstream).sum().backward()

    return median(repeats, forward), median(repeats, step)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    def push(name, sizes, times):
        label = name + " " + "×".join(str(s) for s in sizes)
        forward, step = times
        print(f"  {label} torch: forward {forward:.4f} s, forward + backward {step:.4f} s", flush=True)
        rows.append({"op": label, "variant": "torch", "threads": args.threads, "forward_s": forward, "step_s": step})

    for name, sizes in OPS:
        if name == "attention":
            b, heads, kv, t, h = sizes
            make = lambda: [torch.randn(b, heads, t, h), torch.randn(b, kv, t, h), torch.randn(b, kv, t, h)]
            op = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            push(name, sizes, time_op(make, op, args.repeats))
        elif name == "rms_norm":
            b, t, d = sizes
            weight = torch.randn(d).add_(1.0).requires_grad_()
            push(name, sizes, time_op(lambda: [torch.randn(b, t, d)], lambda x: F.rms_norm(x, (d,), weight, 1e-5), args.repeats))
        elif name == "rope":
            b, heads, t, h = sizes
            angles = torch.rand(1, 1, t, h)
            cos, sin = angles.cos(), angles.sin()
            op = lambda x: x * cos + rotate_half(x) * sin
            push(name, sizes, time_op(lambda: [torch.randn(b, heads, t, h)], op, args.repeats))
        elif name == "swiglu":
            b, t, m = sizes
            make = lambda: [torch.randn(b, t, m), torch.randn(b, t, m)]
            push(name, sizes, time_op(make, lambda a, u: F.silu(a) * u, args.repeats))
        elif name == "linear":
            n, d, m = sizes
            push(name, sizes, time_op(lambda: [torch.randn(n, d), torch.randn(d, m)], torch.matmul, args.repeats))
        elif name == "adamw":
            (n,) = sizes
            theta = torch.nn.Parameter(torch.randn(n))
            theta.grad = torch.randn(n)
            try:
                opt = torch.optim.AdamW([theta], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
                opt.step()
            except (RuntimeError, TypeError):
                opt = torch.optim.AdamW([theta], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
            seconds = median(args.repeats, opt.step)
            push(name, sizes, (seconds, seconds))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
