#!/usr/bin/env bash
# bench.sh runs the benchmark report tools: the block store and driver report
# (blockstore/internal/benchreport), then the data image report
# (imagebuilder/internal/imagebench: image builds, pgbench on clones, clone
# creation time, space of many clones). Arguments go to the block store tool
# (make bench BENCH_ARGS='...'); IMAGEBENCH_ARGS go to the data image tool.
#
# With no arguments it runs both in full (about 30 minutes) and rewrites
# BENCHMARKS.md at the repository root: the block store part, then the data
# image part after its marker line (each tool keeps the other's part). With arguments it runs exactly what
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
image_args=(${IMAGEBENCH_ARGS:-})
if (($# == 0)); then
	set -- -write -out BENCHMARKS.md
	if ((${#image_args[@]} == 0)); then
		image_args=(-write -out BENCHMARKS.md)
	fi
fi
"${GO:-go}" run ./blockstore/internal/benchreport "$@"
if ((${#image_args[@]} > 0)); then
	exec "${GO:-go}" run ./imagebuilder/internal/imagebench "${image_args[@]}"
fi
