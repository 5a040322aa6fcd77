#!/usr/bin/env python3
"""The PyTorch + transformers baseline of daa's trainer benchmark.

Reads the inputs the benchmark writes (``--inputs DIR``: ``config.json`` of a
Llama and ``batch.json`` of token-id pairs), builds that model with random
weights in transformers (seed 0, saved to ``DIR/checkpoint`` so daa loads the
same weights), and times, on the CPU with ``--threads`` threads:

* one DPO optimizer step as TRL's DPOTrainer does it: one forward of chosen
  and rejected concatenated, per-sequence sums of completion-token
  log-probabilities, sigmoid DPO (beta 0.1) against reference scores computed
  once beforehand (a cached reference), backward, global-norm clipping to 1.0,
  AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1);
* one forward-only scoring pass of the same batch (``torch.inference_mode``),
  timed first, on the checkpoint's weights (its ``loss`` field is the first
  chosen sequence's log-probability, which daa must reproduce).

Prints two JSON lines in the benchmark's format (median seconds over
``--repeats`` after one warm-up, tokens/s, the process's peak resident
memory) and, last, both as one JSON list.

On a GPU (``--device cuda --dtype bfloat16``, what ``scripts/gpu-check.sh``
runs) the weights stay f32 and the forward runs under
``torch.autocast(dtype=torch.bfloat16)`` (automatic mixed precision: f32
master weights, gradients and AdamW state, bf16 products), the reference
scores come from the model itself, ``--no-save`` skips the checkpoint;
``peak_rss_mib`` stays the host's peak (as daa reports it) and
``gpu_allocator_peak_mib`` is ``torch.cuda.max_memory_allocated``, which has
no daa counterpart: GPU memory is compared by nvidia-smi's peak only.

Run it through ``cargo xtask bench --trainer --torch`` (which prints the ratio
to daa in the same run). On its own, the benchmark binary writes the inputs:
``trainer_step --write-inputs 5m DIR`` (the binary under
``target/release/deps/``), then ``--inputs DIR``. ``--install`` first creates a virtual environment
outside the clone (``$DAA_TORCH_VENV``, default ``/var/tmp/daa-torch-venv``)
with torch and transformers from PyPI, then re-runs itself there;
without it nothing is installed. CI does not run this script.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VENV = os.environ.get("DAA_TORCH_VENV", "/var/tmp/daa-torch-venv")


def install_and_rerun():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    try:
        subprocess.check_call([python, "-c", "import torch, transformers"], stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        # PyPI's torch (with CUDA libraries on Linux: several GB); set
        # DAA_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the
        # CPU-only wheels where that index is reachable.
        index = os.environ.get("DAA_TORCH_INDEX_URL")
        subprocess.check_call(pip + ["torch"] + (["--index-url", index] if index else []))
        subprocess.check_call(pip + ["transformers", "safetensors"])
    argv = [a for a in sys.argv[1:] if a != "--install"]
    os.execv(python, [python, os.path.abspath(__file__)] + argv)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", help="folder with config.json and batch.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype (autocast)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per block")
    parser.add_argument("--no-save", action="store_true", help="do not write the checkpoint daa would load")
    parser.add_argument("--install", action="store_true", help="create the virtual environment and re-run there")
    parser.add_argument("--setup-only", action="store_true", help="check that torch and transformers import, then stop")
    args = parser.parse_args()
    if args.install:
        install_and_rerun()
    if args.setup_only:
        import torch
        import transformers

        print(f"torch {torch.__version__}, transformers {transformers.__version__}: {sys.executable}")
        return
    if not args.inputs:
        parser.error("--inputs is required")

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    with open(os.path.join(args.inputs, "config.json")) as f:
        config = LlamaConfig(**json.load(f))
    with open(os.path.join(args.inputs, "batch.json")) as f:
        pairs = json.load(f)["pairs"]
    shape = os.path.basename(os.path.normpath(args.inputs)).removeprefix("baseline-")

    torch.manual_seed(0)
    config.attn_implementation = "sdpa"
    device = torch.device(args.device)
    with device:
        model = LlamaForCausalLM(config).float()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    if not args.no_save:
        model.save_pretrained(os.path.join(args.inputs, "checkpoint"), safe_serialization=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    # Chosen rows first, then rejected, padded on the right with 0 as TRL's
    # collator does (with an attention mask when lengths differ).
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    prompt = [p["prompt_len"] for p in pairs] * 2
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    uneven = any(len(r) != width for r in rows)
    attention_mask = None
    if uneven:
        attention_mask = torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device
        )
    # labels[t] = ids[t + 1] where that token is a completion token.
    scored = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    for r, start in enumerate(prompt):
        scored[r, start - 1 : len(rows[r]) - 1] = True
    targets = torch.roll(ids, shifts=-1, dims=1)
    # Real tokens (padding not counted), as daa counts them.
    tokens = sum(len(r) for r in rows)

    def sequence_logps(logits):
        logps = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)
        return (logps * scored).sum(dim=1)

    with torch.inference_mode(), autocast:
        reference = sequence_logps(model(ids, attention_mask=attention_mask).logits)
    n = len(pairs)
    ref_chosen, ref_rejected = reference[:n].clone(), reference[n:].clone()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    beta = 0.1

    def step():
        with autocast:
            logits = model(ids, attention_mask=attention_mask).logits
        policy = sequence_logps(logits)
        margin = (policy[:n] - ref_chosen) - (policy[n:] - ref_rejected)
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def score():
        with torch.inference_mode(), autocast:
            return sequence_logps(model(ids, attention_mask=attention_mask).logits)[0].item()

    def gpu_allocator_peak_mib():
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 2**20
        return 0.0

    # Model FLOPs as daa's benchmark counts them (PaLM's MFU): per token
    # 6N + 12·L·d·T to train, 2N + 4·L·d·T forward only, N without the input embedding.
    n_params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if config.tie_word_embeddings:
        n_params += model.get_input_embeddings().weight.numel()
    # Per sequence of length T, for its real tokens only.
    def model_flops(per_param, per_attention):
        layer_width = config.num_hidden_layers * config.hidden_size
        return sum((per_param * n_params + per_attention * layer_width * len(r)) * len(r) for r in rows)

    flops = {"step": model_flops(6, 12), "score": model_flops(2, 4)}

    results = []
    # Scoring first, on the checkpoint's weights: its first value (row 0's
    # log-probability) must equal daa's on the same checkpoint.
    for mode, fn in (("score", score), ("step", step)):
        times, first = [], None
        for _ in range(args.repeats + 1):
            started = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - started)
            first = value if first is None else first
        times = times[1:]
        seconds = statistics.median(times)
        result = {
            "engine": "pytorch",
            "shape": shape,
            "mode": mode,
            "threads": args.threads,
            "seconds": seconds,
            "best_seconds": min(times),
            "tokens_per_s": tokens / seconds,
            "peak_rss_mib": peak_rss_mib(),
            "gpu_allocator_peak_mib": gpu_allocator_peak_mib(),
            "loss": first,
            "backend": args.device,
            "model_flops": flops[mode],
            "precision": "bf16" if args.dtype == "bfloat16" else "f32",
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    print(json.dumps(results[::-1]))


if __name__ == "__main__":
    main()
