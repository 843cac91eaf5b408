#!/usr/bin/env bash
# The main job on its embedded default: set up, create a local repository in ./demo-repo and run
# the LayerCake pipeline's tiny profile on bundled/local data (under 10 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p demo-repo
cd demo-repo
../.venv/bin/mvc init .
../.venv/bin/mvc run ../examples/layercake.toml --profile "${PROFILE:-tiny}" "$@"
../.venv/bin/mvc log --oneline -n 5 layercake/rubric || true
