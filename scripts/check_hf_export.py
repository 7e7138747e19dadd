#!/usr/bin/env python3
"""Loads a Hugging Face directory written by `scratchllm convert --to hf` (GPT-2, Llama, Qwen3, Gemma 3) in
transformers and compares its logits with a fixture's (transformers' own, from the original weights).

    check_hf_export.py EXPORTED_DIR FIXTURE_DIR

FIXTURE_DIR (../shared/fixtures/gpt2-tiny or ../shared/fixtures/arch/*-tiny) holds expected.json (prompts
with their ids) and expected-logits.safetensors. Prints the largest absolute difference per prompt; exits 1
when one exceeds 1e-4. Needs torch, transformers and safetensors (the peers' environment has them).
"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

exported, fixture = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(exported, torch_dtype=torch.float32).eval()
expected = json.load(open(f"{fixture}/expected.json"))
want = load_file(f"{fixture}/expected-logits.safetensors")
worst = 0.0
with torch.no_grad():
    for i, p in enumerate(expected["prompts"]):
        ids = p.get("ids", p.get("input_ids"))
        ref = want.get(f"prompt{i}", want.get(f"prompt{i}.logits"))
        got = model(torch.tensor([ids])).logits[0]
        d = (got - ref).abs().max().item()
        worst = max(worst, d)
        print(f"prompt{i} max_abs_diff {d:.3e}")
print(f"RESULT max_abs_diff {worst:.3e}")
sys.exit(0 if worst <= 1e-4 else 1)
