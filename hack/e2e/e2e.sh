#!/usr/bin/env bash
# e2e.sh [PHASE...]: `make e2e`, a real single-node Kubernetes cluster built on this machine runs
# Dataimage's user story (docs/e2e.md). Phases, each timed:
#
#   install  apt packages; Kubernetes and the CSI sidecars built from the Go module proxy (install.sh)
#   images   OCI archives: pause, busybox, sidecars, Debian PostgreSQL, the project's (images.sh)
#   up       the cluster: PKI, etcd, control plane, containerd, kubelet, CNI, snapshot API (cluster.sh up)
#   chart    Dataimage from charts/dataimage with helm (chart.sh)
#   test     go test -tags e2e ./e2e/... against the cluster (the test binary in the
#            client's network namespace)
#   rootns   the host's network namespace compared with its snapshot (rootns.sh): identical
#   down     everything stopped by PID, mounts, loop devices, network namespaces, cgroups
#            released, then the host's network namespace compared again (cluster.sh down)
#
# Without arguments: a snapshot of the host's network namespace, then install, images, up,
# smoke, chart, test, and at the end whatever happened (also on failure or interrupt) rootns
# and down, unless E2E_KEEP=1 keeps the cluster for a look (then `hack/e2e/e2e.sh down`). With
# arguments: only those phases, in the order given, and nothing stopped unless `down` is one of
# them (the snapshot is then `up`'s). E2E_TEST_RUN is passed to go test -run.
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TEST_LOG="$E2E_STATE/logs/go-test.log"

run_tests() {
	local args=(-tags e2e -count=1 -v -timeout "${E2E_TEST_TIMEOUT:-45m}")
	if [[ -n ${E2E_TEST_RUN:-} ]]; then args+=(-run "$E2E_TEST_RUN"); fi
	# Built and run by go test here; the test binary (and the kubectl, psql... it starts) in the
	# client's network namespace.
	args+=(-exec "nsenter --net=$(netns_path "$CLIENT_NS") --")
	(cd "$REPO" && env KUBECONFIG="$E2E_RUN/kubeconfig" \
		E2E_KUBECTL="$E2E_BIN/kubectl" E2E_NODE_NAME="$NODE_NAME" \
		E2E_NAMESPACE="$DATAIMAGE_NAMESPACE" E2E_RELEASE="$DATAIMAGE_RELEASE" \
		E2E_POSTGRES_IMAGE="$POSTGRES_IMAGE_REPO:$POSTGRES_VERSION" E2E_POSTGRES_VERSION="$POSTGRES_VERSION" \
		E2E_BUSYBOX_IMAGE="$BUSYBOX_IMAGE" E2E_STATE="$E2E_STATE" E2E_RUN="$E2E_RUN" \
		E2E_KUBELET_DIR="$KUBELET_DIR" E2E_POOL_PATH="$POOL_PATH" E2E_EXPORT_STATE_DIR="$EXPORT_STATE_DIR" \
		E2E_NODES="$(other_nodes)" E2E_REGISTRY_URL="s3://$S3_BUCKET/images" \
		E2E_REGISTRY_ENDPOINT="http://$S3_IP:$S3_PORT" E2E_REGISTRY_CREDENTIALS="$E2E_STATE/s3/credentials.env" \
		E2E_HELM="$(command -v helm || echo "$("$GO" env GOPATH)/bin/helm")" E2E_CHART="$REPO/charts/dataimage" \
		"$GO" test "${args[@]}" ./e2e/... 2>&1) | tee "$TEST_LOG"
}

# other_nodes: the nodes besides the first, for the tests: NAME=POOL=MOUNTINFO,... (the pool
# file as the host sees it, and /proc/PID/mountinfo of a process in the node's mount namespace).
other_nodes() {
	local n pid list=()
	for ((n = 2; n <= E2E_NODES; n++)); do
		read -r pid _ <"$E2E_RUN/pids/mntns-node$n.pid" || e2e_die "node $n: no mount namespace (cluster.sh up)"
		list+=("$(node_name "$n")=$(node_pool "$n")=/proc/$pid/mountinfo")
	done
	(
		IFS=,
		echo "${list[*]}"
	)
}

# test_counts: "N passed, N failed" of the last test phase's top-level tests (and skips).
test_counts() {
	[[ -f $TEST_LOG ]] || return 0
	local passed failed skipped
	passed=$(grep -c '^--- PASS' "$TEST_LOG" || true)
	failed=$(grep -c '^--- FAIL' "$TEST_LOG" || true)
	skipped=$(grep -c '^--- SKIP' "$TEST_LOG" || true)
	if ((skipped > 0)); then
		echo "e2e: $passed passed, $failed failed, $skipped skipped"
	else
		echo "e2e: $passed passed, $failed failed"
	fi
}

# Each phase runs as a background job in its own process group (job control is on), waited
# for: a signal then reaches this script at once (bash runs traps only between foreground
# commands), and stopping the phase stops all of it (go test and its test binary, kubectl...).
set -m
phase_pid=""
background() {
	"$@" &
	phase_pid=$!
	local rc=0
	wait "$phase_pid" || rc=$?
	phase_pid=""
	return $rc
}

# stop_phase: the running phase's process group, SIGTERM then SIGKILL.
stop_phase() {
	[[ -n $phase_pid ]] || return 0
	e2e_log "stopping the running phase (process group $phase_pid)"
	kill -TERM -- "-$phase_pid" 2>/dev/null || true
	local i
	for ((i = 0; i < 20; i++)); do
		kill -0 -- "-$phase_pid" 2>/dev/null || break
		sleep 0.5
	done
	kill -KILL -- "-$phase_pid" 2>/dev/null || true
	wait "$phase_pid" 2>/dev/null || true
	phase_pid=""
}

phase() {
	case $1 in
	install) e2e_phase install background "$HERE/install.sh" ;;
	images) e2e_phase images background "$HERE/images.sh" ;;
	up) e2e_phase up background "$HERE/cluster.sh" up ;;
	smoke) e2e_phase smoke background "$HERE/cluster.sh" smoke ;;
	chart) e2e_phase chart background "$HERE/chart.sh" ;;
	test)
		mkdir -p "$(dirname "$TEST_LOG")"
		rm -f "$TEST_LOG"
		e2e_phase test background run_tests
		;;
	rootns) e2e_phase rootns background "$HERE/rootns.sh" compare "$ROOTNS_BEFORE" "with the cluster up" "$ROOTNS_REPORT" ;;
	down) e2e_phase down background "$HERE/cluster.sh" down ;;
	*) e2e_die "unknown phase $1 (install images up smoke chart test rootns down)" ;;
	esac
}

summary() {
	e2e_log "timings:"
	printf '%s' "$E2E_TIMINGS" >&2
	# The comparisons of this invocation (phases rootns, down).
	local t=$'\n'$E2E_TIMINGS
	if [[ -s $ROOTNS_REPORT && ($t == *$'\n'"rootns "* || $t == *$'\n'"down "*) ]]; then
		e2e_log "the host's network namespace (hack/e2e/rootns.sh):"
		cat "$ROOTNS_REPORT" >&2
	fi
}

# closing: the test counts as the output's last line, when tests ran.
closing() {
	if [[ $E2E_TIMINGS == *$'\n'"test "* || $E2E_TIMINGS == "test "* ]]; then test_counts; fi
}

e2e_require_root
# (Not `start`: finish may run inside e2e_phase, whose local `start` would shadow it.)
e2e_start=$SECONDS
if [[ $# -gt 0 ]]; then
	trap 'stop_phase; exit 130' INT TERM
	rc=0
	for p in "$@"; do
		phase "$p" || {
			rc=$?
			break
		}
	done
	summary
	closing
	exit $rc
fi

finish() {
	local rc=$?
	trap - EXIT INT TERM
	stop_phase
	if [[ -d $ROOTNS_BEFORE ]]; then phase rootns || rc=1; fi
	if [[ ${E2E_KEEP:-0} == 1 ]]; then
		e2e_log "E2E_KEEP=1: the cluster stays up; kubectl: hack/e2e/ns.sh client kubectl get pods -A; stop it with hack/e2e/e2e.sh down"
	else
		phase down || rc=1
	fi
	summary
	e2e_log "total $((SECONDS - e2e_start)) s"
	if ((rc == 0)); then e2e_log "make e2e: PASS"; else e2e_log "make e2e: FAIL"; fi
	closing
	exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

# The host's network namespace before anything: up, rootns and down compare with it. rootns.sh
# needs jq, which a fresh machine gets here rather than in phase install (too late).
if ! command -v jq >/dev/null 2>&1; then
	e2e_log "apt-get install jq (hack/e2e/rootns.sh)"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null
fi
mkdir -p "$E2E_RUN" "$E2E_STATE"
rm -rf "$ROOTNS_BEFORE" "$ROOTNS_REPORT"
"$HERE/rootns.sh" snapshot "$ROOTNS_BEFORE" "before make e2e" ||
	e2e_die "no snapshot of the host's network namespace (hack/e2e/rootns.sh snapshot)"
export E2E_ROOTNS_TAKEN=1

phase install
phase images
phase up
phase smoke
phase chart
phase test
