#!/usr/bin/env bash
# Set up kdhub for development in a virtual environment (default .venv): torch, the project (editable,
# with the test tools) and the example third-party plugin. Idempotent; re-run after pulling.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, on its own: set KDHUB_TORCH to pick a build (e.g. "torch==2.9.1 torchvision==0.24.1").
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q ${KDHUB_TORCH:-torch torchvision}
fi
"$VENV/bin/python" -m pip install -q -e ".[dev]" -e examples/plugin-template

# Fashion-MNIST from Debian, when we may install it (the tests that need it skip otherwise).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "note: could not install Debian's dataset-fashion-mnist; fashion_mnist tests will skip"
fi
echo "kdhub is set up in $VENV"
