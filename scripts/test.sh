#!/usr/bin/env bash
# Install worldsim with its test extras into .venv (CPU torch first) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0            # the CPU wheel on a CPU machine; keep first
python -m pip install -q -e ".[test]"
export MUJOCO_GL=egl GRADIO_ANALYTICS_ENABLED=False
ruff check .
python -m pytest -q --timeout=900 "$@"
