#!/usr/bin/env bash
# Install worldsim (CPU torch first) and launch the teleop app on the bundled model at
# http://127.0.0.1:7860 (pass --host/--port/--checkpoint through).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0            # the CPU wheel on a CPU machine; keep first
python -m pip install -q -e .
export MUJOCO_GL=egl GRADIO_ANALYTICS_ENABLED=False
exec worldsim-teleop "$@"
