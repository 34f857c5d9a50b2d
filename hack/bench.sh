#!/usr/bin/env bash
# bench.sh runs the block store benchmark report tool
# (blockstore/internal/benchreport), passing its arguments through
# (make bench BENCH_ARGS='...').
#
# With no arguments it runs the full benchmark (about 8 minutes) and rewrites
# BENCHMARKS.md at the repository root. With arguments it runs exactly what
# they say and only prints the report unless -write is among them, e.g.
#
#   make bench BENCH_ARGS=-quick            # one-minute smoke run, printed only
#   make bench BENCH_ARGS='-dir /mnt/disk'  # measure another disk, printed only
#   make bench BENCH_ARGS='-dir /mnt/disk -write'
#
# Scratch files go in a temporary directory under -dir (default /var/tmp) and
# are removed at the end. Progress goes to stderr, the report to stdout.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ ! -d blockstore/internal/benchreport ]]; then
	echo "bench.sh: the bench report tool (blockstore/internal/benchreport) is missing" >&2
	exit 1
fi
if (($# == 0)); then
	set -- -write -out BENCHMARKS.md
fi
exec "${GO:-go}" run ./blockstore/internal/benchreport "$@"
