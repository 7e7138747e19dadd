"""Reference values for classification fine-tuning and LoRA, computed with PyTorch.

The book's chapter 6 recipe on the train-trace fixture model (ctx 32, emb 64, 2 layers, no qkv
bias, dropout 0): the output head replaced by a 2-class nn.Linear, everything frozen except the
last block, the final norm and the head; class logits read at the last (padded) position; AdamW
(lr 1e-3, weight decay 0.1). And appendix E's LoRA (rank 4, alpha 8, every linear layer including
the head, base frozen). Texts are the first SMS Spam Collection lines, GPT-2 tokens.

Run with the peers' environment (torch, tiktoken):
    PEERS_VENV=... ../shared/peers/run.sh ../../main/scripts/reference_classify.py OUT.json
or  $PEERS_VENV/bin/python scripts/reference_classify.py crates/train/tests/data/classify-reference.json
"""
import json, math, os, sys

import torch
import torch.nn as nn
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
sys.path.insert(0, os.path.join(SHARED, "peers"))
from peer_common import gpt2_encoding  # noqa: E402

CFG = dict(vocab_size=50257, context_length=32, emb_dim=64, n_heads=4, n_layers=2)


class LayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.eps, self.scale, self.shift = 1e-5, nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class MultiHeadAttention(nn.Module):
    def __init__(self, d, ctx, heads):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.W_query, self.W_key, self.W_value = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.out_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx), diagonal=1))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (m(x).view(b, t, self.h, self.hd).transpose(1, 2) for m in (self.W_query, self.W_key, self.W_value))
        s = q @ k.transpose(2, 3)
        s.masked_fill_(self.mask.bool()[:t, :t], -torch.inf)
        w = torch.softmax(s / self.hd**0.5, dim=-1)
        return self.out_proj((w @ v).transpose(1, 2).reshape(b, t, d))


class GELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * x**3)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["emb_dim"]
        self.att = MultiHeadAttention(d, c["context_length"], c["n_heads"])
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(d, 4 * d), GELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = LayerNorm(d), LayerNorm(d)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class GPTModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.tok_emb = nn.Embedding(c["vocab_size"], c["emb_dim"])
        self.pos_emb = nn.Embedding(c["context_length"], c["emb_dim"])
        self.trf_blocks = nn.Sequential(*[Block(c) for _ in range(c["n_layers"])])
        self.final_norm = LayerNorm(c["emb_dim"])
        self.out_head = nn.Linear(c["emb_dim"], c["vocab_size"], bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


class LoRALayer(nn.Module):
    def __init__(self, d_in, d_out, rank, alpha):
        super().__init__()
        self.A = nn.Parameter(torch.empty(d_in, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, d_out))
        self.scale = alpha / rank

    def forward(self, x):
        return self.scale * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear, self.lora = linear, LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model, rank, alpha):
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        else:
            replace_linear_with_lora(module, rank, alpha)


def model_with_head():
    torch.manual_seed(123)
    model = GPTModel(CFG)
    model.load_state_dict(load_file(os.path.join(SHARED, "fixtures", "train-trace", "init.safetensors")), strict=False)
    model.out_head = nn.Linear(CFG["emb_dim"], 2)
    return model


def batches():
    enc = gpt2_encoding()
    lines = open(os.path.join(SHARED, "data", "sms-spam-collection.tsv"), encoding="utf-8").read().splitlines()[:12]
    labels = [1 if l.split("\t", 1)[0] == "spam" else 0 for l in lines]
    ids = [enc.encode(l.split("\t", 1)[1])[:CFG["context_length"]] for l in lines]
    width = max(len(i) for i in ids)
    padded = [i + [50256] * (width - len(i)) for i in ids]
    return [(padded[k:k + 4], labels[k:k + 4]) for k in range(0, 12, 4)], ids, labels


def train(model, data, params):
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    losses = []
    for x, y in data:
        logits = model(torch.tensor(x))[:, -1, :]
        loss = nn.functional.cross_entropy(logits, torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(out):
    data, ids, labels = batches()
    # Chapter 6: last block, final norm and head trainable.
    model = model_with_head()
    head = {"out_head.weight": model.out_head.weight.tolist(), "out_head.bias": model.out_head.bias.tolist()}
    for p in model.parameters():
        p.requires_grad = False
    for m in (model.trf_blocks[-1], model.final_norm, model.out_head):
        for p in m.parameters():
            p.requires_grad = True
    with torch.no_grad():
        first_logits = model(torch.tensor(data[0][0]))[:, -1, :].tolist()
    last_block = train(model, data, [p for p in model.parameters() if p.requires_grad])
    # Appendix E: LoRA on every linear layer, base (and new head) frozen.
    model = model_with_head()
    for p in model.parameters():
        p.requires_grad = False
    torch.manual_seed(7)
    replace_linear_with_lora(model, rank=4, alpha=8)
    adapters = {n.replace(".linear", "").replace(".lora.A", ".lora_A").replace(".lora.B", ".lora_B"): p.detach().tolist()
                for n, p in model.named_parameters() if ".lora." in n}
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora_losses = train(model, data, trainable)
    json.dump({
        "config": CFG,
        "ids": ids,
        "labels": labels,
        "batch_size": 4,
        "head": head,
        "first_batch_last_logits": first_logits,
        "last_block_losses": last_block,
        "lora": {"rank": 4, "alpha": 8, "adapters": adapters, "trainable_params": sum(p.numel() for p in trainable), "losses": lora_losses},
        "optimizer": "AdamW lr=1e-3 weight_decay=0.1, 3 steps of batch 4, padded to the longest of the 12 texts",
    }, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
