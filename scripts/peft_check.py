#!/usr/bin/env python3
"""daa's LoRA adapter folders against Hugging Face peft: a check run by hand
(CI has no PyTorch), whose measured result docs/training.md reports.

For each architecture (Llama with GQA, Cohere) it writes a tiny checkpoint
and preference data, trains LoRA-DPO with `daa train` (rank 4 on every linear
layer, enough steps to move the adapters), then

1. loads the base with transformers and the adapter with
   ``PeftModel.from_pretrained`` (peft 0.13) and compares the next-token
   log-probabilities of some token sequences with daa's
   (``cargo run --example token_logprobs``) on the same adapter folder;
2. compares ``merge_and_unload()`` with ``daa merge``'s checkpoint;
3. checks the adapter moved the log-probabilities (else the comparison says
   nothing).

    python3 scripts/peft_check.py [--daa target/debug/daa] [--example target/debug/examples/token_logprobs]

Needs torch, transformers and peft (``DAA_PEFT_VENV``, default
/var/tmp/daa-peft-venv, is used when it exists). Exits 1 when a difference
exceeds the tolerance.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

VENV = os.environ.get("DAA_PEFT_VENV", "/var/tmp/daa-peft-venv")
if os.path.exists(os.path.join(VENV, "bin", "python")) and sys.prefix != VENV:
    os.execv(os.path.join(VENV, "bin", "python"), [os.path.join(VENV, "bin", "python")] + sys.argv)

import torch  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

# f32 on both sides; daa's forward differs from PyTorch's by f32 rounding.
TOLERANCE = 2e-4


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def torch_logprobs(model, sequences):
    rows = []
    with torch.no_grad():
        for ids in sequences:
            logits = model(torch.tensor([ids])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            rows.append([logp[t, ids[t + 1]].item() for t in range(len(ids) - 1)])
    return rows


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    parser.add_argument("--daa", default=os.path.join(target, "debug", "daa"))
    parser.add_argument("--example", default=os.path.join(target, "debug", "examples", "token_logprobs"))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    failed = False
    for arch in ["llama", "cohere"]:
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base")
            data = os.path.join(tmp, "prefs.jsonl")
            run([args.example, "--write-tiny", arch, base, data])
            out = os.path.join(tmp, "run")
            run([args.daa, "train", "--model", base, "--data", data, "--out", out, "--max-steps", "8",
                 "--set", f'train.cache_dir="{os.path.join(tmp, "cache")}"', "--set", "lora.rank=4",
                 "--set", "lora.alpha=8", "--set", 'lora.target_modules="all-linear"', "--set", "train.lr=0.05",
                 "--set", "train.warmup_steps=1"])
            adapter = os.path.join(out, "checkpoint-000008")
            ids_path = os.path.join(tmp, "ids.json")
            sequences = [[1] + [ord(c) for c in "What is 12+30? 42, says daa."], [1] + [ord(c) for c in "short one"]]
            with open(ids_path, "w") as f:
                json.dump(sequences, f)
            daa = json.loads(run([args.example, adapter, ids_path]))
            daa_base = json.loads(run([args.example, base, ids_path]))
            base_model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
            plain = torch_logprobs(base_model, sequences)
            adapted = PeftModel.from_pretrained(base_model, adapter)
            with_peft = torch_logprobs(adapted, sequences)
            merged_dir = os.path.join(tmp, "merged")
            run([args.daa, "merge", "--adapter", adapter, "--out", merged_dir])
            daa_merged = torch_logprobs(AutoModelForCausalLM.from_pretrained(merged_dir, torch_dtype=torch.float32),
                                        sequences)
            peft_merged = torch_logprobs(adapted.merge_and_unload(), sequences)
            figures = {
                "base: daa vs transformers": max_diff(daa_base, plain),
                "adapter: daa vs peft": max_diff(daa, with_peft),
                "merged: daa merge vs peft merge_and_unload": max_diff(daa_merged, peft_merged),
                "the adapter moves the log-probabilities by": max_diff(with_peft, plain),
            }
            for name, value in figures.items():
                print(f"{arch}: {name} {value:.3g}")
            moved = figures["the adapter moves the log-probabilities by"]
            if moved < 1e-3:
                print(f"{arch}: the adapter barely moves the log-probabilities: the comparison says nothing")
                failed = True
            for name in list(figures)[:3]:
                if figures[name] > TOLERANCE:
                    print(f"{arch}: {name} exceeds {TOLERANCE}")
                    failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
