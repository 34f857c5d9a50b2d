# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source it
# lib.sh: what every phase of the e2e harness shares (sourced, not run). See docs/e2e.md.
#
# Directories (all overridable from the environment):
#   E2E_CACHE  /var/cache/dataimage-e2e  kept between runs: built binaries and their stamps, the
#                                        scratch modules, OCI archives, the debootstrap root file
#                                        system. The Go module and build caches are Go's own
#                                        (GOMODCACHE, GOCACHE), shared with `make test` and
#                                        hack/install-envtest.sh.
#   E2E_STATE  /var/lib/dataimage-e2e    one cluster's state: PKI, etcd data, containerd root,
#                                        kubelet root, the Dataimage pool file, logs. Made anew
#                                        by `up`, kept after `down` (logs) until the next `up`.
#   E2E_RUN    /run/dataimage-e2e        sockets and PID files of the running cluster.

E2E_CACHE="${E2E_CACHE:-/var/cache/dataimage-e2e}"
E2E_STATE="${E2E_STATE:-/var/lib/dataimage-e2e}"
E2E_RUN="${E2E_RUN:-/run/dataimage-e2e}"
GO="${GO:-go}"

# Versions. Changing one rebuilds what depends on it (stamp files in $E2E_CACHE/bin).
K8S_VERSION="${K8S_VERSION:-v1.36.1}"
PROVISIONER_VERSION="${PROVISIONER_VERSION:-v6.3.0}"
SNAPSHOTTER_VERSION="${SNAPSHOTTER_VERSION:-v8.7.0}"

# The cluster's addresses: a bridge of its own with a /32 for the node, a /24 for pods, a
# service range nothing routes (no kube-proxy: the tests reach pods by exec, not by service).
NODE_IP="${E2E_NODE_IP:-10.99.0.1}"
NODE_BRIDGE="${E2E_NODE_BRIDGE:-di-e2e0}"
POD_BRIDGE="${E2E_POD_BRIDGE:-di-e2e-pods}"
POD_CIDR="${E2E_POD_CIDR:-10.99.1.0/24}"
SERVICE_CIDR="${E2E_SERVICE_CIDR:-10.99.128.0/20}"
NODE_NAME="${E2E_NODE_NAME:-dataimage-e2e}"
APISERVER_PORT="${E2E_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${E2E_ETCD_PORT:-2479}"
ETCD_PEER_PORT="${E2E_ETCD_PEER_PORT:-2480}"

E2E_BIN="$E2E_CACHE/bin"
KUBECONFIG_ADMIN="$E2E_STATE/pki/admin.kubeconfig"
KUBELET_DIR="$E2E_STATE/kubelet"

# Dataimage in the cluster (chart.sh): its release, namespace, pool file and export state.
DATAIMAGE_RELEASE=dataimage
DATAIMAGE_NAMESPACE="${E2E_NAMESPACE:-dataimage-system}"
POOL_PATH="$E2E_STATE/dataimage/pool.img"
EXPORT_STATE_DIR="$E2E_RUN/export"

# Images the harness builds (phase images) and imports (phase up).
E2E_IMAGE_REGISTRY="localhost/dataimage-e2e"
PAUSE_IMAGE="$E2E_IMAGE_REGISTRY/pause:e2e"
BUSYBOX_IMAGE="$E2E_IMAGE_REGISTRY/busybox:e2e"
POSTGRES_IMAGE_REPO="$E2E_IMAGE_REGISTRY/postgres"
POSTGRES_VERSION=15

e2e_log() { printf '%s e2e: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
e2e_die() {
	e2e_log "FAILED: $*"
	exit 1
}

# e2e_phase NAME CMD...: runs CMD, then prints how long it took (also when it fails) and adds
# a line to E2E_TIMINGS.
E2E_TIMINGS=""
e2e_phase() {
	local name=$1 start=$SECONDS rc=0 line
	shift
	e2e_log "=== phase $name"
	"$@" || rc=$?
	if ((rc == 0)); then
		line="$(printf '%-8s %5d s  ok' "$name" $((SECONDS - start)))"
	else
		line="$(printf '%-8s %5d s  FAILED (exit %d)' "$name" $((SECONDS - start)) "$rc")"
	fi
	e2e_log "=== phase $line"
	E2E_TIMINGS+="$line"$'\n'
	return $rc
}

# e2e_quiet LOG CMD...: runs CMD with its output in LOG; on failure prints LOG's tail.
e2e_quiet() {
	local logf=$1
	shift
	if ! "$@" >"$logf" 2>&1; then
		tail -n 40 "$logf" >&2
		e2e_log "$* failed (log: $logf)"
		return 1
	fi
}

# e2e_wait SECONDS WHAT CMD...: retries CMD every half second until it succeeds or SECONDS pass.
e2e_wait() {
	local limit=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + limit))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			e2e_log "timed out after ${limit} s waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}

e2e_kubectl() { "$E2E_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

e2e_require_root() {
	[[ $(id -u) -eq 0 ]] || e2e_die "the e2e harness needs root (containerd, kubelet, mounts)"
}
