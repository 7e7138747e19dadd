"""The PyTorch peer of `scratchllm bench train --model qwen3-0.6b --lora 16`: transformers' Qwen3 at the
real shape of Qwen/Qwen3-0.6B (random weights, f32), every attention and feed-forward projection wrapped
in a LoRA of the given rank (alpha = rank; the book's appendix E `LinearWithLoRA`, PEFT's default
placement for these targets), the base frozen; forward, backward and AdamW on random tokens, bf16 autocast.

    OMP_NUM_THREADS=2 python scripts/peer_lora_train.py --ctx 2048 [--rank 16] [--checkpoint]

Prints per-step times, `RESULT tokens_per_s N` (the steps after the first) and `RESULT peak_rss_mb N`.
"""
import argparse, math, resource, time
import torch
import transformers as tf

p = argparse.ArgumentParser()
p.add_argument("--ctx", type=int, default=2048)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
p.add_argument("--checkpoint", action="store_true", help="transformers' gradient checkpointing")
a = p.parse_args()
torch.manual_seed(0)
cfg = tf.Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                     tie_word_embeddings=True, max_position_embeddings=40960, rms_norm_eps=1e-6)
m = tf.AutoModelForCausalLM.from_config(cfg)


class LinearWithLoRA(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.empty(base.in_features, rank))
        torch.nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = torch.nn.Parameter(torch.zeros(rank, base.out_features))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A @ self.B)


for p_ in m.parameters():
    p_.requires_grad_(False)
targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
for layer in m.model.layers:
    for parent in (layer.self_attn, layer.mlp):
        for name in targets:
            if hasattr(parent, name):
                setattr(parent, name, LinearWithLoRA(getattr(parent, name), a.rank, a.rank))
if a.checkpoint:
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
m.train()
trained = [p_ for p_ in m.parameters() if p_.requires_grad]
print(f"trained parameters {sum(p_.numel() for p_ in trained)}")
opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.1)
x = torch.randint(0, cfg.vocab_size, (a.batch, a.ctx + 1))
times = []
for s in range(a.steps):
    t = time.perf_counter()
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
        logits = m(x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
    print(f"step {s} loss {loss.item():.4f} {times[-1]:.3f}s", flush=True)
print(f"RESULT tokens_per_s {a.batch * a.ctx * (len(times) - 1) / sum(times[1:]):.1f}")
print(f"RESULT peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.1f}")
