#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtual environment in .venv with every extra installed.
# torch==2.13.0 is installed first when torch is absent (a CPU build that pip finds locally here;
# an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
# Python 3.11 or newer: $PYTHON if set, else python3.11 where there is one, else python3
if [ -z "${PYTHON:-}" ] && command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY="${PYTHON:-python3}"; fi
new_enough='import sys; sys.exit(sys.version_info < (3, 11))'
if ! "$PY" -c "$new_enough" 2>/dev/null; then
    echo "error: mvc needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1 || echo missing) (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
# a .venv that cannot run pip (python3 -m venv without Debian's python3.X-venv leaves one) or whose
# Python is too old is made again, not reused for ever
if ! .venv/bin/python -c "$new_enough" 2>/dev/null || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    "$PY" -m venv --clear .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
# editable_mode=compat: a plain path entry in a .pth file. The default mode installs an import
# finder that every Python start in this venv loads (pathlib and more: ~25 ms of each `mvc` command).
"$VPY" -m pip install --quiet -e ".[test,s3,eval]" --config-settings editable_mode=compat
# An editable install leaves the project's modules uncompiled, and where PYTHONDONTWRITEBYTECODE is
# set every `mvc` command would compile them again (about 30 ms of start-up): compile them once.
"$VPY" -m compileall -q -j 0 mvc kernels cores bricks semantic_ci >/dev/null
