#!/usr/bin/env bash
# Quantized decode speed beside llama.cpp, same machine, same sitting, same threads: for each model
# (presets, random weights) and type, scratchllm's `bench generate` (greedy, batch 1, KV cache,
# 16-token prompt, 128 new tokens) on the GGUF file we write, and llama.cpp's decode of 128 tokens
# after a 16-token prompt on the same file (../shared/peers/llamacpp). Our bf16 (f32 for GPT-2) is
# the baseline the quantized types are compared with.
#
#   scripts/bench_gguf.sh [MODEL ...]        (default: qwen3-0.6b gpt2-small)
#
# Needs target/llamacpp (scripts/test.sh installs it) and node.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/scratchllm
llama=${SCRATCHLLM_LLAMACPP:-target/llamacpp/llamacpp.mjs}
threads=${THREADS:-2}
cargo build --release --locked -q
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen3-0.6b gpt2-small)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
result() { grep 'RESULT \(decode_\)\?tokens_per_s' | tail -1 | awk '{print $3}'; }
for model in "${models[@]}"; do
    base=bf16
    [ "$model" != "${model#gpt2}" ] && base=f32
    ours_base=$("$bin" --threads "$threads" bench generate --model "$model" --dtype "$base" --prompt-tokens 16 --new-tokens 128 --repeat 3 | tee /dev/stderr | result)
    echo "$model $base: scratchllm $ours_base tokens/s"
    for quant in q8_0 q4_0; do
        file=$tmp/$model-$quant.gguf
        "$bin" convert --model "$model" --to gguf --quant "$quant" --out "$file" 2>/dev/null
        ours=$("$bin" --threads "$threads" bench generate --model "$file" --prompt-tokens 16 --new-tokens 128 --repeat 3 | tee /dev/stderr | result)
        theirs=$(node "$llama" bench "$file" 128 "$threads" | result)
        echo "$model $quant: scratchllm $ours tokens/s, llama.cpp $theirs ($(echo "scale=2; $ours / $theirs" | bc)x); $(echo "scale=2; $ours / $ours_base" | bc)x our $base"
    done
done
