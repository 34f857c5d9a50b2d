#!/usr/bin/env bash
# bench.sh runs the benchmark programs under bench/: the block store and driver
# report (bench/storebench), then the data image report (bench/imagebench:
# image builds, pgbench on clones, clone creation time, space of many clones).
# Arguments go to storebench (make bench BENCH_ARGS='...'); IMAGEBENCH_ARGS go
# to imagebench.
#
# With no arguments it runs both in full (about 30 minutes) and rewrites
# BENCHMARKS.md at the repository root: the block store part, then the data
# image part after its marker line (each program keeps the other's part). With
# arguments it runs exactly what they say and only prints the report unless
# -write is among them, e.g.
#
#   make bench BENCH_ARGS=-quick            # one-minute smoke run, printed only
#   make bench BENCH_ARGS='-dir /mnt/disk'  # measure another disk, printed only
#   make bench BENCH_ARGS='-dir /mnt/disk -write'
#
# Scratch files go in a temporary directory under -dir (default /var/tmp) and
# are removed at the end. Progress goes to stderr, the report to stdout.
set -euo pipefail

cd "$(dirname "$0")/.."

for tool in bench/storebench bench/imagebench; do
	if [[ ! -d $tool ]]; then
		echo "bench.sh: the benchmark program $tool is missing" >&2
		exit 1
	fi
done
image_args=(${IMAGEBENCH_ARGS:-})
if (($# == 0)); then
	set -- -write -out BENCHMARKS.md
	if ((${#image_args[@]} == 0)); then
		image_args=(-write -out BENCHMARKS.md)
	fi
fi
"${GO:-go}" run ./bench/storebench "$@"
if ((${#image_args[@]} > 0)); then
	exec "${GO:-go}" run ./bench/imagebench "${image_args[@]}"
fi
