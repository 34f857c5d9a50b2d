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

# The cluster's network (docs/e2e.md, "Network"): nothing of it is in the host's root network
# namespace. Every component runs in a network namespace the run creates (/run/netns/NAME,
# entered with `nsenter --net` only: the mount namespace stays the host's, for mount
# propagation), each attached by a veth pair to a bridge that lives in a namespace of its own:
#
#   $NET_NS     the bridge $NET_BRIDGE (no address: a switch), one port per namespace below
#   $CP_NS      etcd (127.0.0.1), kube-apiserver ($CP_IP:443 and the `kubernetes` Service's
#               $SERVICE_IP:443), controller-manager, scheduler, snapshot-controller
#   node_ns N   node N: containerd and its shims, the kubelet ($(node_ip N)), the CNI bridge
#               $POD_BRIDGE with the pods of $(pod_cidr N); hostNetwork pods
#   $CLIENT_NS  the tests (go test -exec), kubectl, helm: a workstation
#
# Addresses: $E2E_SUBNET.0.0/16, private, and routed nowhere outside those namespaces. Node N's
# pods route the whole /16 to their node; the nodes route the service range to the control plane,
# which routes each node's pod range back to it. No kube-proxy, no NAT, no DNS.
E2E_SUBNET="${E2E_SUBNET:-10.99}"
E2E_NETNS_PREFIX="${E2E_NETNS_PREFIX:-dataimage-e2e}"
CLUSTER_CIDR="$E2E_SUBNET.0.0/16"
NET_CIDR_PREFIXLEN=24 # the bridge's network: $E2E_SUBNET.0.0/24
NET_NS="$E2E_NETNS_PREFIX-net"
NET_BRIDGE=br0
CP_NS="$E2E_NETNS_PREFIX-cp"
CP_IP="$E2E_SUBNET.0.2"
CLIENT_NS="$E2E_NETNS_PREFIX-client"
CLIENT_IP="$E2E_SUBNET.0.3"
SERVICE_CIDR="$E2E_SUBNET.128.0/20"
SERVICE_IP="$E2E_SUBNET.128.1" # the `kubernetes` Service's, held by $CP_NS
POD_BRIDGE=cni0
APISERVER_PORT=443 # the Service's port: in-cluster clients reach the apiserver without a proxy
APISERVER_URL="https://$CP_IP:$APISERVER_PORT"
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380

# Node N (1, 2, ...): its network namespace, address on the bridge, and pod range.
node_ns() { echo "$E2E_NETNS_PREFIX-node$1"; }
node_ip() { echo "$E2E_SUBNET.0.$((10 + $1))"; }
pod_cidr() { echo "$E2E_SUBNET.$1.0/24"; }

# The cluster's nodes: E2E_NODES of them (2: the multi-node tests need two). Node 1 is the one
# the single-node tests use ($NODE_NAME, its directories the ones below); node N >= 2 is named
# $NODE_NAME-N.
E2E_NODES="${E2E_NODES:-2}"
NODE_NS="$(node_ns 1)"
NODE_IP="$(node_ip 1)"
POD_CIDR="$(pod_cidr 1)"
NODE_NAME="${E2E_NODE_NAME:-dataimage-e2e}"
node_name() { if (($1 == 1)); then echo "$NODE_NAME"; else echo "$NODE_NAME-$1"; fi; }

# The S3 server the chart's registry points at (SeaweedFS, hack/install-seaweedfs.sh): its own
# network namespace on the bridge, reached by every node; one bucket, made by `up`.
S3_NS="$E2E_NETNS_PREFIX-s3"
S3_IP="$E2E_SUBNET.0.4"
S3_PORT=8333
S3_BUCKET=dataimage-e2e
WEED="${WEED:-/usr/local/lib/dataimage/seaweedfs/weed}"

# Every network namespace of the run, in the order they are made (the bridge's first).
E2E_NETNS=("$NET_NS" "$CP_NS" "$CLIENT_NS" "$S3_NS")
for ((n = 1; n <= E2E_NODES; n++)); do E2E_NETNS+=("$(node_ns "$n")"); done
unset n

netns_path() { echo "/run/netns/$1"; }

# in_netns NS CMD...: CMD in network namespace NS, and nothing else of it changed (the mount
# namespace stays the host's: `ip netns exec` would also unshare it and remount /sys).
in_netns() {
	local ns=$1
	shift
	nsenter --net="$(netns_path "$ns")" -- "$@"
}

# The host's network namespace before the cluster (rootns.sh snapshot), and what each comparison
# with it found (printed in e2e.sh's summary).
ROOTNS_BEFORE="$E2E_RUN/rootns.before"
ROOTNS_REPORT="$E2E_STATE/rootns.txt"

E2E_BIN="$E2E_CACHE/bin"
KUBECONFIG_ADMIN="$E2E_STATE/pki/admin.kubeconfig"
KUBELET_DIR="$E2E_STATE/kubelet"

# Dataimage in the cluster (chart.sh): its release, namespace, pool file and export state.
DATAIMAGE_RELEASE=dataimage
DATAIMAGE_NAMESPACE="${E2E_NAMESPACE:-dataimage-system}"
POOL_PATH="$E2E_STATE/dataimage/pool.img"
EXPORT_STATE_DIR="$E2E_RUN/export"

# Node N >= 2 sees the same host, but through a mount namespace of its own in which the paths
# the chart knows (the kubelet's root, the pool's directory, the export state) are bind mounts
# of node N's own directories below: every node runs the same chart with the same values, as
# on real machines, and none sees another's pool or mounts. Node 1 uses the host's paths.
# node_state N, node_run N: node N's directories ($E2E_STATE, $E2E_RUN for node 1).
node_state() { if (($1 == 1)); then echo "$E2E_STATE"; else echo "$E2E_STATE/node$1"; fi; }
node_run() { if (($1 == 1)); then echo "$E2E_RUN"; else echo "$E2E_RUN/node$1"; fi; }
# node_pool N: node N's pool file as the host (and the tests) see it.
node_pool() { echo "$(node_state "$1")/dataimage/pool.img"; }

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

# e2e_kubectl: kubectl as the cluster's admin, from the client's network namespace.
e2e_kubectl() { in_netns "$CLIENT_NS" "$E2E_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

e2e_require_root() {
	[[ $(id -u) -eq 0 ]] || e2e_die "the e2e harness needs root (containerd, kubelet, mounts)"
}
