#!/usr/bin/env bash
# llama.cpp's converter (convert_hf_to_gguf.py, from the source inside the node-llama-cpp package)
# turns each fixture directory into an F32 GGUF file, and scratchllm loads it with transformers'
# logits (crates/model/tests/gguf_converter.rs, ignored in CI: the converter needs torch).
#
#   PEERS_PYTHON=/path/to/venv/bin/python scripts/check_gguf_converter.sh
#
# PEERS_PYTHON is a Python with torch and transformers (../shared/peers/setup.sh makes one); llama.cpp
# is installed into target/llamacpp by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PEERS_PYTHON:?set PEERS_PYTHON to a python with torch and transformers}
"$py" -c "import numpy, sentencepiece" 2>/dev/null || "$py" -m pip install -q numpy sentencepiece
SCRATCHLLM_PEERS_PYTHON="$py" cargo test --workspace --locked --test gguf_converter -- --ignored --nocapture
