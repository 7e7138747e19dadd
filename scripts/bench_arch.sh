#!/usr/bin/env bash
# Llama 3.2 1B, Qwen3 0.6B and Gemma 3 270M shapes (random weights) beside transformers, same machine,
# same sitting: decode tokens/s (greedy, batch 1, KV cache, 16-token prompt, 100 new tokens) and
# training tokens/s (batch 1, context 256, AdamW; bf16 = autocast with f32 master weights).
#
#   PEERS_PYTHON=/path/to/venv/bin/python scripts/bench_arch.sh [ARCH ...]
#
# PEERS_PYTHON is a Python with torch and transformers (../shared/peers/setup.sh makes one).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PEERS_PYTHON:?set PEERS_PYTHON to a python with torch and transformers}
peers=${SCRATCHLLM_SHARED:-../shared}/peers
bin=target/release/scratchllm
cargo build --release --locked -q
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen3-0.6b llama3.2-1b gemma3-270m)
result() { grep 'RESULT tokens_per_s' | awk '{print $3}'; }
for arch in "${archs[@]}"; do
    for dtype in bf16; do
        ours=$("$bin" bench generate --model "$arch" --dtype "$dtype" --prompt-tokens 16 --new-tokens 100 --repeat 2 | tee /dev/stderr | result)
        theirs=$(OMP_NUM_THREADS=2 "$py" "$peers/hf_arch.py" generate --arch "$arch" --dtype "$dtype" --new-tokens 100 | result)
        echo "generate $arch $dtype: scratchllm $ours tokens/s, transformers $theirs ($(echo "scale=2; $ours / $theirs" | bc)x)"
        ours=$("$bin" bench train --model "$arch" --batch 1 --ctx 256 --steps 4 --dtype "$dtype" | result)
        theirs=$(OMP_NUM_THREADS=2 "$py" "$peers/hf_arch.py" train --arch "$arch" --dtype "$dtype" --batch 1 --ctx 256 --steps 4 | result)
        echo "train $arch $dtype: scratchllm $ours tokens/s, PyTorch $theirs ($(echo "scale=2; $ours / $theirs" | bc)x)"
    done
done
