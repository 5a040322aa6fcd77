#!/usr/bin/env python3
"""PyTorch's eager path to the same statistics, timed on the same shapes as
benches/examples/cuda_check.rs (8192 rows; V in {32000, 128256, 256000};
k in {10, 100}; f32 and bf16), so daa's fused kernel is compared side by
side in one GPU session. Prints a markdown table of GB/s of logits read."""
import time

import torch


def eager_stats(logits, targets, k):
    logp = torch.log_softmax(logits.float(), dim=-1)
    target_logprob = logp.gather(-1, targets[:, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    top = logp.topk(k, dim=-1).values
    p = top.exp()
    mass = p.sum(-1)
    q = p / mass[:, None]
    topk_entropy = -(q * torch.log2(q)).sum(-1)
    return target_logprob, entropy, mass, topk_entropy


def main():
    rows, iterations = 8192, 10
    print(f"device: {torch.cuda.get_device_name()}")
    print("| dtype | V | k | ms/iter (torch eager) | GB/s read | peak extra memory GB |")
    print("|---|---|---|---|---|---|")
    for vocab in (32000, 128256, 256000):
        for dtype in (torch.float32, torch.bfloat16):
            logits = (torch.randn(rows, vocab, device="cuda") * 2.0).to(dtype)
            targets = torch.randint(0, vocab, (rows,), device="cuda")
            for k in (10, 100):
                eager_stats(logits, targets, k)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                start = time.perf_counter()
                for _ in range(iterations):
                    eager_stats(logits, targets, k)
                torch.cuda.synchronize()
                seconds = (time.perf_counter() - start) / iterations
                extra = (torch.cuda.max_memory_allocated() - base) / 1e9
                gbps = logits.numel() * logits.element_size() / seconds / 1e9
                name = "f32" if dtype == torch.float32 else "bf16"
                print(f"| {name} | {vocab} | {k} | {seconds * 1e3:.3f} | {gbps:.0f} | {extra:.1f} |")
            del logits
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
