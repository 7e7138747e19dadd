#!/usr/bin/env bash
# The test command: builds everything and runs every test of the workspace.
#
# It first makes target/pyenv, a Python with the reference libraries (tiktoken, tokenizers) that the
# differential tests run against, then runs `cargo test`. Reference data is read from
# $SCRATCHLLM_SHARED, else ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyenv
if ! "$venv/bin/python" -c "import tiktoken, tokenizers" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi
export SCRATCHLLM_PYTHON="$PWD/$venv/bin/python"
cargo test --workspace --locked "$@"
