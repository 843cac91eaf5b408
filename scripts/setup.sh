#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtual environment in .venv with every extra installed.
# torch==2.13.0 is installed first when torch is absent (a CPU build that pip finds locally here;
# an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install --quiet "torch==2.13.0"
fi
# editable_mode=compat: a plain path entry in a .pth file. The default mode installs an import
# finder that every Python start in this venv loads (pathlib and more: ~25 ms of each `mvc` command).
"$VPY" -m pip install --quiet -e ".[test,s3,eval]" --config-settings editable_mode=compat
# An editable install leaves the project's modules uncompiled, and where PYTHONDONTWRITEBYTECODE is
# set every `mvc` command would compile them again (about 30 ms of start-up): compile them once.
"$VPY" -m compileall -q -j 0 mvc kernels cores bricks semantic_ci >/dev/null
