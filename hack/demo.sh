#!/usr/bin/env bash
# demo.sh is `make demo`: a data image built from a real PostgreSQL backup, served as three
# writable clones, on this machine, without Kubernetes.
#
#   1. installs what it needs (hack/install-deps.sh) and builds bin/dataimage;
#   2. makes a source PostgreSQL instance filled by pgbench (scale DEMO_SCALE: 50 is about
#      750 MB) and takes a base backup of it (pg_basebackup -Ft -X stream);
#   3. builds the data image from the backup (`dataimage image build`, with its progress bar);
#   4. makes three clones, shows them answering the same query, writes differently into each,
#      shows they differ, resets one and shows it is back to the image's numbers;
#   5. prints the timings and the pool's use, and leaves the clones running.
#
# Run as root on Debian 12 (the database servers run as the postgres user). Re-runnable: the
# source instance and its backup are kept and reused (delete DEMO_DIR/source and
# DEMO_DIR/backups, or change DEMO_SCALE, to remake them); the previous demo's clones and image
# are deleted and made again.
#
# Environment:
#   DEMO_DIR          where the demo keeps everything (default /var/lib/dataimage-demo)
#   DEMO_SCALE        pgbench scale of the source (default 50; 1 is 15 MB, for a quick look)
#   DEMO_SOURCE_PORT  TCP port of the source instance while it runs (default 54329)
#   DATAIMAGE_HOME    the data home the demo's daemon uses (default DEMO_DIR/home)
#   GO                the go command (default go)
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"

DEMO_DIR="${DEMO_DIR:-/var/lib/dataimage-demo}"
DEMO_SCALE="${DEMO_SCALE:-50}"
DEMO_SOURCE_PORT="${DEMO_SOURCE_PORT:-54329}"
export DATAIMAGE_HOME="${DATAIMAGE_HOME:-$DEMO_DIR/home}"
GO="${GO:-go}"

IMAGE=pgbench-demo
CLONES=(demo-1 demo-2 demo-3)
SOURCE="$DEMO_DIR/source"       # the source instance's data directory
SOURCE_RUN="$DEMO_DIR/run"      # its socket directory and log
BACKUP="$DEMO_DIR/backups/$IMAGE"
QUERY="SELECT count(*), sum(abalance) FROM pgbench_accounts"
DI="$REPO/bin/dataimage"

if [[ -t 1 ]]; then
	BOLD=$'\e[1m' DIM=$'\e[2m' GREEN=$'\e[32m' RED=$'\e[31m' RESET=$'\e[0m'
else
	BOLD='' DIM='' GREEN='' RED='' RESET=''
fi

section() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$RESET"; }
say() { printf '%s\n' "$*"; }
# run shows a command, then runs it; quiet_run does too, without its output.
run() {
	printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"
	"$@"
}
quiet_run() {
	printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"
	"$@" >/dev/null
}
die() {
	printf '%sdemo: %s%s\n' "$RED" "$*" "$RESET" >&2
	exit 1
}

# now_ms is the time in milliseconds; seconds_since writes the seconds since a now_ms.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
seconds_since() {
	local ms=$(($(now_ms) - $1))
	printf '%d.%02ds' $((ms / 1000)) $((ms % 1000 / 10))
}

[[ $(id -u) -eq 0 ]] || die "run me as root (sudo make demo): the daemon mounts volumes and runs the servers as postgres"
[[ $DEMO_SCALE =~ ^[1-9][0-9]*$ ]] || die "DEMO_SCALE=$DEMO_SCALE: want a positive whole number"
DEMO_START=$(now_ms)

section "Dependencies (hack/install-deps.sh) and bin/dataimage"
run env DATAIMAGE_DEPS=local hack/install-deps.sh
mkdir -p bin
run "$GO" build -o bin/dataimage ./cmd/dataimage

PG_BIN="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
[[ -n $PG_BIN && -x $PG_BIN/postgres ]] || die "no PostgreSQL server under /usr/lib/postgresql (hack/install-deps.sh installs it)"
PG_VERSION="$("$PG_BIN/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')"
say "PostgreSQL $PG_VERSION: $PG_BIN"

# The daemon of a previous run may be an older build: stop it, so that the commands below start
# this one (its clones stop with it; they are deleted below anyway).
if "$DI" daemon status >/dev/null 2>&1; then
	run "$DI" daemon stop
fi

# pg runs a PostgreSQL tool as the postgres user, from a directory it can read.
pg() { (cd / && runuser -u postgres -- "$@"); }

# The demo directory and its parents must be traversable by postgres.
mkdir -p "$DEMO_DIR" "$SOURCE_RUN" "$(dirname "$BACKUP")"
chmod 755 "$DEMO_DIR" "$SOURCE_RUN" "$(dirname "$BACKUP")"
chown postgres: "$SOURCE_RUN"

source_started=
stop_source() {
	if [[ -n $source_started ]]; then
		pg "$PG_BIN/pg_ctl" -D "$SOURCE" -m fast -w stop >/dev/null || true
		source_started=
	fi
}
trap stop_source EXIT

section "Source instance and its backup (pgbench scale $DEMO_SCALE)"
if [[ -f $BACKUP/.complete && $(cat "$BACKUP/.complete") == "$DEMO_SCALE" ]]; then
	say "Reusing the backup of a previous run: $BACKUP"
	ls -lh "$BACKUP"/*.tar
else
	if [[ ! -f $SOURCE/.complete || $(cat "$SOURCE/.complete") != "$DEMO_SCALE" ]]; then
		say "Making the source instance: $SOURCE"
		if [[ -f $SOURCE/postmaster.pid ]]; then
			pg "$PG_BIN/pg_ctl" -D "$SOURCE" -m immediate -w stop >/dev/null 2>&1 || true
		fi
		rm -rf "$SOURCE"
		install -d -o postgres -g postgres -m 700 "$SOURCE"
		quiet_run pg "$PG_BIN/initdb" -D "$SOURCE" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8
	fi
	if ! pg "$PG_BIN/pg_ctl" -D "$SOURCE" status >/dev/null 2>&1; then
		quiet_run pg "$PG_BIN/pg_ctl" -D "$SOURCE" -l "$SOURCE_RUN/source.log" -w \
			-o "-p $DEMO_SOURCE_PORT -k $SOURCE_RUN -c listen_addresses=" start
		source_started=1
	fi
	if [[ ! -f $SOURCE/.complete || $(cat "$SOURCE/.complete") != "$DEMO_SCALE" ]]; then
		t=$(now_ms)
		say "Filling it with pgbench -i -s $DEMO_SCALE (about $((DEMO_SCALE * 15)) MB)..."
		run pg "$PG_BIN/pgbench" -i -q -s "$DEMO_SCALE" -h "$SOURCE_RUN" -p "$DEMO_SOURCE_PORT" -U postgres postgres 2>&1 |
			grep -v -e '^NOTICE:' -e '^dropping old tables'
		echo "$DEMO_SCALE" >"$SOURCE/.complete"
		say "Filled in $(seconds_since "$t")."
	fi
	say "Source numbers: $(pg "$PG_BIN/psql" -h "$SOURCE_RUN" -p "$DEMO_SOURCE_PORT" -U postgres -AtF ' | ' -c "$QUERY" postgres)"
	rm -rf "$BACKUP"
	install -d -o postgres -g postgres -m 755 "$BACKUP"
	t=$(now_ms)
	run pg "$PG_BIN/pg_basebackup" -h "$SOURCE_RUN" -p "$DEMO_SOURCE_PORT" -U postgres -D "$BACKUP" -Ft -X stream --checkpoint=fast
	echo "$DEMO_SCALE" >"$BACKUP/.complete"
	say "Backup taken in $(seconds_since "$t"):"
	ls -lh "$BACKUP"/*.tar
	stop_source
fi

cat >"$BACKUP/image.yaml" <<EOF
# The demo's image definition: pgbench's database at scale $DEMO_SCALE, from a base backup.
name: $IMAGE
engine: postgres
version: "$PG_VERSION"
sourceType: backup
backups:
  - path: base.tar
    format: basebackup-tar
  - path: pg_wal.tar
    format: basebackup-tar
tags: [demo, pgbench, scale-$DEMO_SCALE]
lifetime: "0"
EOF
say "Image definition $BACKUP/image.yaml:"
sed 's/^/    /' "$BACKUP/image.yaml"

section "Previous demo clones and image"
found=
for c in "${CLONES[@]}"; do
	if "$DI" clone get "$c" >/dev/null 2>&1; then
		run "$DI" clone delete "$c"
		found=1
	fi
done
if "$DI" image get "$IMAGE" >/dev/null 2>&1; then
	run "$DI" image delete "$IMAGE"
	found=1
fi
[[ -n $found ]] || say "None (data home $DATAIMAGE_HOME)."

section "Build the image"
t=$(now_ms)
run "$DI" image build -f "$BACKUP/image.yaml"
BUILD_TIME=$(seconds_since "$t")

section "Three clones"
declare -A CONN CREATE_TIME
for c in "${CLONES[@]}"; do
	t=$(now_ms)
	printf '%s$ %s%s\n' "$DIM" "dataimage clone create --image $IMAGE --name $c" "$RESET"
	CONN[$c]=$("$DI" clone create --image "$IMAGE" --name "$c")
	CREATE_TIME[$c]=$(seconds_since "$t")
	say "  ${CONN[$c]}"
done

# query runs the demo's query on a clone and prints "count | sum".
query() { psql "${CONN[$1]}" -AtF ' | ' -c "$QUERY"; }
show_all() {
	for c in "${CLONES[@]}"; do
		printf '  %-8s count | sum(abalance) = %s\n' "$c" "$(query "$c")"
	done
}

section "Each clone answers: $QUERY"
show_all
IMAGE_NUMBERS=$(query "${CLONES[0]}")

section "Different writes into each clone"
writes=(
	"UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid <= 1000"
	"UPDATE pgbench_accounts SET abalance = abalance - 7 WHERE aid BETWEEN 5001 AND 8000"
	"DELETE FROM pgbench_accounts WHERE aid BETWEEN 20001 AND 20500"
)
for i in "${!CLONES[@]}"; do
	c=${CLONES[$i]}
	printf '  %-8s %s: %s\n' "$c" "${writes[$i]}" "$(psql "${CONN[$c]}" -Atq -c "${writes[$i]}" -c "SELECT 'done'")"
done

section "They differ now"
show_all
distinct=$(for c in "${CLONES[@]}"; do query "$c"; done | sort -u | wc -l)
[[ $distinct -eq ${#CLONES[@]} ]] || die "the clones should differ, but only $distinct distinct answers"
say "${GREEN}Three clones, three different answers.${RESET}"

section "Reset ${CLONES[1]} to the image"
run "$DI" clone reset "${CLONES[1]}" --to image
show_all
after=$(query "${CLONES[1]}")
[[ $after == "$IMAGE_NUMBERS" ]] || die "${CLONES[1]} answers $after after its reset, the image $IMAGE_NUMBERS"
say "${GREEN}${CLONES[1]} is back to the image's numbers ($IMAGE_NUMBERS); the others kept their writes.${RESET}"

section "Images, clones and the pool"
run "$DI" image list
run "$DI" clone list
run "$DI" pool status

section "Summary"
printf '  %-28s %s\n' "image build ($IMAGE):" "$BUILD_TIME (the daemon's own count: $("$DI" image get "$IMAGE" | sed -n 's/^Build time: *//p'))"
for c in "${CLONES[@]}"; do
	printf '  %-28s %s\n' "clone $c created in:" "${CREATE_TIME[$c]}"
done
pool=$("$DI" pool status)
printf '  %-28s %s\n' "pool used:" "$(sed -n 's/^Used: *//p' <<<"$pool")"
printf '  %-28s %s\n' "images hold:" "$(sed -n 's/^Images: *[0-9]*, holding //p' <<<"$pool")"
printf '  %-28s %s\n' "clones added:" "$(sed -n 's/^Clones: *[0-9]*, adding //p' <<<"$pool")"
printf '  %-28s %s\n' "the whole demo took:" "$(seconds_since "$DEMO_START")"

section "The clones keep running"
say "Connect to them:"
for c in "${CLONES[@]}"; do
	say "  psql '${CONN[$c]}'"
done
say ""
say "Look around (the commands need the demo's data home):"
say "  export DATAIMAGE_HOME=$DATAIMAGE_HOME"
say "  $DI clone list"
say "  $DI image get $IMAGE"
say "  $DI --help"
say ""
say "Clean up:"
for c in "${CLONES[@]}"; do
	say "  $DI clone delete $c"
done
say "  $DI image delete $IMAGE"
say "  $DI daemon stop"
say "  rm -rf $DEMO_DIR    # the source instance, its backup and the pool"
