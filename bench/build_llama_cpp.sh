#!/usr/bin/env bash
# llama.cpp for bench/bench_serving.py only, never a runtime requirement: builds
# llama-cpp-python from its source release (the same one the tests take tokenizer files
# from) into .venv, and puts sentencepiece, which llama.cpp's model converter imports, in
# a tools folder of the test-model cache. Takes 15-30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${WEBBOT_TEST_CACHE:-$HOME/.cache/webbot-test-models}
SDIST=$(.venv/bin/python -c 'from harness import assets; print(assets._download(assets.LLAMA_CPP_SDIST, source=True))')
if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/pip install "$SDIST" diskcache
fi
.venv/bin/pip install -q --target "$CACHE/bench-tools" sentencepiece
echo "llama.cpp ready: .venv/bin/python -m bench.bench_serving"
