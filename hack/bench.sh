#!/usr/bin/env bash
# bench.sh runs the block store benchmark report tool, passing its arguments
# through (make bench BENCH_ARGS='...').
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ ! -d blockstore/internal/benchreport ]]; then
	echo "bench.sh: the bench report tool (blockstore/internal/benchreport) is missing" >&2
	exit 1
fi
exec "${GO:-go}" run ./blockstore/internal/benchreport "$@"
