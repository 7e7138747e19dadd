#!/usr/bin/env python3
"""Loads a Hugging Face GPT-2 directory with transformers and compares its logits with a reference.

    check_hf_export.py MODEL_DIR EXPECTED_JSON EXPECTED_LOGITS_SAFETENSORS

EXPECTED_JSON and the logits are ../shared/fixtures/gpt2-tiny/expected.json and
expected-logits.safetensors. Prints the largest absolute difference and exits 1 above 1e-4.
Needs torch, transformers and safetensors (the peers' environment has them).
"""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

model_dir, expected_json, expected_logits = sys.argv[1:4]
model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
want = load_file(expected_logits)
worst = 0.0
with torch.no_grad():
    for i, p in enumerate(json.load(open(expected_json))["prompts"]):
        got = model(torch.tensor([p["input_ids"]])).logits[0]
        worst = max(worst, (got - want[f"prompt{i}.logits"]).abs().max().item())
print(f"max abs logit difference {worst:.3g}")
sys.exit(0 if worst < 1e-4 else 1)
