#!/usr/bin/env bash
# cluster.sh up|down|smoke: phase 3 (and 6) of the e2e harness (docs/e2e.md). `up` starts a
# single-node Kubernetes cluster on this machine from the binaries of install.sh and the images
# of images.sh; `down` stops everything that `up` started, by PID, and releases what it left
# (mounts, loop devices, FUSE mounts, network namespaces, links, cgroups), whatever state it is
# in; `smoke` runs a busybox pod to completion. Both up and down are idempotent: `up` runs `down`
# first.
#
# Layout: the node has a bridge of its own ($NODE_BRIDGE) with $NODE_IP/32, on which the
# apiserver and the kubelet listen; pods get addresses of $POD_CIDR on a second bridge
# ($POD_BRIDGE, through the CNI bridge plugin). No kube-proxy and no DNS: pods reach the
# apiserver through the `kubernetes` Service's address, which the node also holds, and a socat
# process there forwards it to the apiserver.
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PKI="$E2E_STATE/pki"
LOGS="$E2E_STATE/logs"
PIDS="$E2E_RUN/pids"
CGROUP_NAME="dataimage-e2e"
CONTAINERD_SOCK="$E2E_RUN/containerd/containerd.sock"
# The first address of the service range (given by its network address): the `kubernetes`
# Service's.
SERVICE_NET="${SERVICE_CIDR%/*}"
SERVICE_IP="${SERVICE_NET%.*}.$((${SERVICE_NET##*.} + 1))"

# Components in start order; `down` stops them in the reverse order.
COMPONENTS=(etcd kube-apiserver apiserver-proxy kube-controller-manager kube-scheduler containerd kubelet snapshot-controller)

# ---------------------------------------------------------------- processes

# start NAME CMD...: starts CMD in its own session, output in $LOGS/NAME.log, PID and
# executable in $PIDS/NAME.pid.
start() {
	local name=$1
	shift
	setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
	local pid=$!
	echo "$pid $(readlink -f "$(command -v "$1")")" >"$PIDS/$name.pid"
	e2e_log "started $name (pid $pid, log $LOGS/$name.log)"
}

# alive NAME: whether the process of $PIDS/NAME.pid runs, and is still the program it was.
alive() {
	local f="$PIDS/$1.pid" pid exe
	[[ -f $f ]] || return 1
	read -r pid exe <"$f"
	[[ -n $pid && "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]
}

# stop NAME: SIGTERM, up to 20 s, then SIGKILL.
stop() {
	local name=$1 f="$PIDS/$1.pid" pid exe i
	[[ -f $f ]] || return 0
	read -r pid exe <"$f"
	if alive "$name"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 40; i++)); do
			alive "$name" || break
			sleep 0.5
		done
		if alive "$name"; then
			e2e_log "$name (pid $pid) still runs after 20 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.5
		fi
		e2e_log "stopped $name (pid $pid)"
	fi
	rm -f "$f"
}

# expect_alive NAME: fails, with the log's tail, when NAME has exited.
expect_alive() {
	alive "$1" && return 0
	tail -n 30 "$LOGS/$1.log" >&2 || true
	e2e_die "$1 exited (log: $LOGS/$1.log)"
}

# ---------------------------------------------------------------- PKI

# cert NAME CN O EKU [SAN]: a key (EC P-256) and a certificate signed by the cluster's CA.
cert() {
	local name=$1 cn=$2 o=$3 eku=$4 san=${5:-}
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "${o:+/O=$o}/CN=$cn" -out "$PKI/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
	} >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
		-days 30 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig NAME: $PKI/NAME.kubeconfig with NAME's certificate, for the apiserver on the node IP.
kubeconfig() {
	local name=$1
	cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dataimage-e2e
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: dataimage-e2e
  context: {cluster: dataimage-e2e, user: $name}
current-context: dataimage-e2e
EOF
	chmod 0600 "$PKI/$name.kubeconfig"
}

make_pki() {
	mkdir -p "$PKI"
	chmod 0700 "$PKI"
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=dataimage-e2e-ca" -days 30 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "$PKI/ca.crt" 2>/dev/null
	cert apiserver kube-apiserver "" serverAuth \
		"IP:$NODE_IP,IP:$SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
	cert admin dataimage-e2e-admin system:masters clientAuth
	cert controller-manager system:kube-controller-manager "" clientAuth
	cert scheduler system:kube-scheduler "" clientAuth
	cert kubelet "system:node:$NODE_NAME" system:nodes clientAuth
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
	openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	local n
	for n in admin controller-manager scheduler kubelet; do kubeconfig "$n"; done
}

# ---------------------------------------------------------------- host setup

# shared_bind DIR: DIR bind-mounted on itself and made a shared mount, so that the
# Bidirectional mounts of the CSI plugin (kubelet dir, export state) propagate (/ is private here).
shared_bind() {
	mkdir -p "$1"
	if ! mountpoint -q "$1"; then
		mount --bind "$1" "$1"
	fi
	mount --make-rshared "$1"
}

setup_network() {
	if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
		ip link add "$NODE_BRIDGE" type bridge
	fi
	ip addr replace "$NODE_IP/32" dev "$NODE_BRIDGE"
	ip addr replace "$SERVICE_IP/32" dev "$NODE_BRIDGE"
	ip link set "$NODE_BRIDGE" up
	# Network namespaces present before the cluster: `down` removes only the others.
	local n
	for n in /run/netns/*; do
		if [[ -e $n ]]; then basename "$n"; fi
	done >"$E2E_RUN/netns.before"
}

# setup_cgroups: the kubelet's cgroup root in every v1 hierarchy (cpuset needs its cpus and
# mems filled in before anything can join it).
setup_cgroups() {
	local h
	for h in /sys/fs/cgroup/*/; do
		h=${h%/}
		[[ -f "$h/cgroup.procs" ]] || continue
		[[ "$(basename "$h")" == unified ]] && continue
		mkdir -p "$h/$CGROUP_NAME"
	done
	if [[ -d /sys/fs/cgroup/cpuset/$CGROUP_NAME ]]; then
		cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_NAME/cpuset.cpus"
		cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_NAME/cpuset.mems"
	fi
}

# ---------------------------------------------------------------- components

start_etcd() {
	start etcd /usr/bin/etcd --name e2e --data-dir "$E2E_STATE/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--listen-metrics-urls "" --log-level warn
	e2e_wait 30 "etcd" curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" || expect_alive etcd
	expect_alive etcd
}

start_apiserver() {
	start kube-apiserver "$E2E_BIN/kube-apiserver" \
		--advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
		--etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--allow-privileged=true --profiling=false --cert-dir="$E2E_STATE/apiserver"
	e2e_wait 60 "kube-apiserver /readyz" e2e_kubectl get --raw /readyz || expect_alive kube-apiserver
	expect_alive kube-apiserver
	# Pods reach the apiserver at the `kubernetes` Service's address (in-cluster config), which
	# nothing routes without kube-proxy: the node holds that address and forwards its port 443.
	start apiserver-proxy socat "TCP-LISTEN:443,bind=$SERVICE_IP,fork,reuseaddr" "TCP:$NODE_IP:$APISERVER_PORT"
}

start_controllers() {
	start kube-controller-manager "$E2E_BIN/kube-controller-manager" \
		--kubeconfig="$PKI/controller-manager.kubeconfig" --secure-port=0 --leader-elect=false \
		--use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
		--root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" \
		--cluster-signing-key-file="$PKI/ca.key" --service-cluster-ip-range="$SERVICE_CIDR"
	start kube-scheduler "$E2E_BIN/kube-scheduler" \
		--kubeconfig="$PKI/scheduler.kubeconfig" --secure-port=0 --leader-elect=false
}

start_containerd() {
	mkdir -p "$E2E_STATE/containerd" "$E2E_RUN/containerd" "$E2E_STATE/cni/net.d" "$E2E_STATE/cni/ipam"
	cat >"$E2E_STATE/containerd.toml" <<EOF
# containerd of the dataimage e2e cluster (hack/e2e/cluster.sh)
version = 2
root = "$E2E_STATE/containerd"
state = "$E2E_RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$E2E_STATE/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc cannot raise a container's oom_score_adj here (no CAP_SYS_RESOURCE in the VM).
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$E2E_STATE/cni/net.d"
EOF
	cat >"$E2E_STATE/cni/net.d/10-dataimage-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "dataimage-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$NODE_IP/32"}],
        "dataDir": "$E2E_STATE/cni/ipam"
      }
    }
  ]
}
EOF
	start containerd /usr/bin/containerd --config "$E2E_STATE/containerd.toml"
	e2e_wait 30 "containerd" ctr --address "$CONTAINERD_SOCK" version || expect_alive containerd
	expect_alive containerd
}

# import_images: every OCI archive of $E2E_CACHE/images and the project's bin/images.
import_images() {
	local f n=0
	for f in "$E2E_CACHE"/images/*.tar "$REPO"/bin/images/*.tar; do
		[[ -f $f ]] || continue
		e2e_quiet "$LOGS/ctr-import.log" ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$f"
		n=$((n + 1))
	done
	e2e_log "imported $n image archives"
	# (grep -q on a pipe would end ctr with SIGPIPE: under pipefail that fails at random.)
	local images
	images="$(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q)"
	grep -qxF "$PAUSE_IMAGE" <<<"$images" || e2e_die "no $PAUSE_IMAGE in containerd: run hack/e2e/images.sh"
}

start_kubelet() {
	mkdir -p "$KUBELET_DIR"
	cat >"$E2E_STATE/kubelet.yaml" <<EOF
# kubelet of the dataimage e2e cluster (hack/e2e/cluster.sh)
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_NAME
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
volumePluginDir: $E2E_STATE/kubelet-plugins
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 50
EOF
	start kubelet "$E2E_BIN/kubelet" --config="$E2E_STATE/kubelet.yaml" \
		--kubeconfig="$PKI/kubelet.kubeconfig" --root-dir="$KUBELET_DIR" \
		--cert-dir="$E2E_STATE/kubelet-pki" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" --v=2
}

node_ready() {
	[[ "$(e2e_kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# install_snapshot_api: the six snapshot CRDs the chart ships (external-snapshotter client/v8,
# copied by make manifests) and snapshot-controller as a host process.
install_snapshot_api() {
	e2e_quiet "$LOGS/snapshot-crds.log" e2e_kubectl apply --server-side --force-conflicts \
		-f "$REPO/charts/dataimage/files/snapshot-crds/"
	e2e_quiet "$LOGS/snapshot-crds.log" e2e_kubectl wait --for condition=established --timeout=60s \
		-f "$REPO/charts/dataimage/files/snapshot-crds/"
	start snapshot-controller "$E2E_BIN/snapshot-controller" --kubeconfig="$PKI/admin.kubeconfig" \
		--leader-election=false --enable-distributed-snapshotting --v=2
}

up() {
	e2e_require_root
	local b
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl snapshot-controller; do
		[[ -x "$E2E_BIN/$b" ]] || e2e_die "$E2E_BIN/$b is missing: run hack/e2e/install.sh"
	done
	down
	local t0=$SECONDS left
	# Never remove through a mount that `down` could not release (a bind mount of a host path
	# would have its files deleted).
	left="$(our_mounts)"
	[[ -z $left ]] || e2e_die "still mounted after down, not removing $E2E_STATE: $left"
	rm -rf --one-file-system "$E2E_STATE"
	mkdir -p "$E2E_STATE" "$E2E_RUN"
	shared_bind "$E2E_STATE"
	shared_bind "$E2E_RUN"
	mkdir -p "$LOGS" "$PIDS"
	make_pki
	setup_network
	setup_cgroups
	start_etcd
	start_apiserver
	e2e_log "apiserver ready ($((SECONDS - t0)) s)"
	start_controllers
	start_containerd
	import_images
	start_kubelet
	install_snapshot_api
	e2e_wait 120 "node $NODE_NAME Ready" node_ready || {
		expect_alive kubelet
		tail -n 30 "$LOGS/kubelet.log" >&2
		e2e_die "node $NODE_NAME not Ready"
	}
	e2e_kubectl label node "$NODE_NAME" dataimage.io/cloning-node=true --overwrite >/dev/null
	for b in "${COMPONENTS[@]}"; do expect_alive "$b"; done
	cp "$KUBECONFIG_ADMIN" "$E2E_RUN/kubeconfig"
	e2e_log "cluster up in $((SECONDS - t0)) s: KUBECONFIG=$E2E_RUN/kubeconfig"
}

# ---------------------------------------------------------------- teardown

# drain_pods: while the cluster still runs, deletes every pod so that the kubelet unmounts and
# unpublishes their volumes through the CSI plugin, which goes last. Best effort, bounded.
drain_pods() {
	alive kube-apiserver && alive kubelet || return 0
	e2e_kubectl get --raw /readyz >/dev/null 2>&1 || return 0
	stop kube-controller-manager
	stop kube-scheduler
	# Pods that do not run the CSI plugin first, then the rest.
	e2e_kubectl delete pods -A -l 'app.kubernetes.io/component!=node' --grace-period=2 --wait=false >/dev/null 2>&1 || true
	e2e_wait 90 "pods that use volumes to stop" no_pods -l 'app.kubernetes.io/component!=node' ||
		e2e_log "some pods are still there; going on"
	e2e_kubectl delete pods -A --all --grace-period=5 --wait=false >/dev/null 2>&1 || true
	e2e_wait 60 "every pod to stop" no_pods || e2e_log "some pods are still there; going on"
}

# no_pods [SELECTOR...]: whether no pod (matching) is left.
no_pods() {
	[[ -z "$(e2e_kubectl get pods -A -o name "$@" 2>/dev/null)" ]]
}

# kill_cgroup_procs: SIGKILL to every process left in the cluster's cgroups (containers whose
# shim was killed).
kill_cgroup_procs() {
	local pids
	[[ -d /sys/fs/cgroup/pids/$CGROUP_NAME ]] || return 0
	pids="$(find "/sys/fs/cgroup/pids/$CGROUP_NAME" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
	if [[ -n $pids ]]; then
		e2e_log "killing processes left in the cluster's cgroups: $(echo "$pids" | tr '\n' ' ')"
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 1
	fi
}

# kill_shims: the containerd shims of this cluster's containerd (their -address names its socket).
kill_shims() {
	local p cmd
	for p in /proc/[0-9]*; do
		cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
		if [[ $cmd == *containerd-shim*"-address $CONTAINERD_SOCK "* ]]; then
			e2e_log "killing containerd shim ${p#/proc/}"
			kill -KILL "${p#/proc/}" 2>/dev/null || true
		fi
	done
}

# our_mounts: mount points under the cluster's directories, deepest first.
our_mounts() {
	awk -v s="$E2E_STATE" -v r="$E2E_RUN" '{ m = $5; gsub(/\\040/, " ", m); if (index(m, s) == 1 || index(m, r) == 1) print m }' \
		/proc/self/mountinfo | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2- | uniq
}

release_mounts() {
	local m fuse
	# File systems on volumes first (they sit on loop devices over FUSE files), then the loop
	# devices, then the FUSE mounts, and the shared binds last.
	while read -r m; do
		[[ -z $m || $m == "$E2E_STATE" || $m == "$E2E_RUN" ]] && continue
		fuse="$(findmnt -n -o FSTYPE --mountpoint "$m" 2>/dev/null | head -1)"
		[[ $fuse == fuse* ]] && continue
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || e2e_log "cannot unmount $m"
	done < <(our_mounts)
	local dev back
	while read -r dev back; do
		[[ -z $dev ]] && continue
		if [[ $back == "$E2E_STATE"/* || $back == "$E2E_RUN"/* ]]; then
			e2e_log "detaching $dev ($back)"
			losetup -d "$dev" 2>/dev/null || e2e_log "cannot detach $dev"
		fi
	done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
	while read -r m; do
		[[ -z $m || $m == "$E2E_STATE" || $m == "$E2E_RUN" ]] && continue
		fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || e2e_log "cannot unmount $m"
	done < <(our_mounts)
	for m in "$E2E_STATE" "$E2E_RUN"; do
		while mountpoint -q "$m" 2>/dev/null; do umount "$m" 2>/dev/null || umount -l "$m" || break; done
	done
}

release_netns() {
	local p n
	for p in /run/netns/cni-*; do
		[[ -e $p ]] || continue
		n=$(basename "$p")
		if [[ -f $E2E_RUN/netns.before ]] && grep -qxF "$n" "$E2E_RUN/netns.before"; then
			continue
		fi
		e2e_log "removing network namespace $n"
		umount "/run/netns/$n" 2>/dev/null || umount -l "/run/netns/$n" 2>/dev/null || true
		rm -f "/run/netns/$n"
	done
}

# stop_test_servers: the PostgreSQL servers that tests run on the node to make backups (under
# $E2E_STATE/backups), when a test was stopped before it stopped them: pg_ctl detaches them, so
# they outlive the test's process group.
stop_test_servers() {
	local f pid i
	for f in "$E2E_STATE"/backups/*/*/postmaster.pid; do
		[[ -f $f ]] || continue
		pid="$(head -n 1 "$f")"
		[[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == */postgres ]] || continue
		e2e_log "stopping the test's PostgreSQL server (pid $pid, $(dirname "$f"))"
		kill -INT "$pid" 2>/dev/null || true
		for ((i = 0; i < 20; i++)); do
			[[ -e /proc/$pid ]] || break
			sleep 0.5
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
}

release_cgroups() {
	local h
	for h in /sys/fs/cgroup/*/"$CGROUP_NAME"; do
		[[ -d $h ]] || continue
		find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $h ]] && e2e_log "cannot remove cgroup $h"
	done
	return 0
}

down() {
	e2e_require_root
	[[ -d $E2E_RUN ]] || [[ -d $E2E_STATE ]] || return 0
	mkdir -p "$PIDS"
	drain_pods
	local i
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		case ${COMPONENTS[i]} in
		# The shims outlive containerd: kill what runs in containers before containerd goes.
		containerd) kill_cgroup_procs ;;
		esac
		stop "${COMPONENTS[i]}"
	done
	kill_shims
	kill_cgroup_procs
	stop_test_servers
	release_mounts
	release_netns
	local l
	for l in "$POD_BRIDGE" "$NODE_BRIDGE"; do
		if ip link show "$l" >/dev/null 2>&1; then ip link del "$l"; fi
	done
	release_cgroups
	rm -rf "$PIDS" "$E2E_RUN/containerd" "$E2E_RUN/kubeconfig" "$E2E_RUN/netns.before"
	e2e_log "cluster down"
}

# smoke: a busybox pod runs to completion and its log comes back.
smoke() {
	local ns=e2e-smoke
	e2e_kubectl create namespace "$ns" --dry-run=client -o yaml | e2e_kubectl apply -f - >/dev/null
	e2e_kubectl -n "$ns" delete pod busybox --ignore-not-found --wait=true >/dev/null
	cat <<EOF | e2e_kubectl -n "$ns" apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: busybox}
spec:
  restartPolicy: Never
  containers:
  - name: busybox
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo hello from \$(hostname)']
EOF
	e2e_wait 60 "pod busybox to succeed" pod_succeeded "$ns" busybox || {
		e2e_kubectl -n "$ns" describe pod busybox >&2 || true
		return 1
	}
	local out
	out="$(e2e_kubectl -n "$ns" logs busybox)"
	[[ $out == "hello from busybox" ]] || e2e_die "busybox said '$out', want 'hello from busybox'"
	e2e_kubectl delete namespace "$ns" --wait=true >/dev/null
	e2e_log "smoke: a busybox pod ran ($out)"
}

pod_succeeded() {
	[[ "$(e2e_kubectl -n "$1" get pod "$2" -o jsonpath='{.status.phase}')" == Succeeded ]]
}

case "${1:-}" in
up) up ;;
down) down ;;
smoke) smoke ;;
*)
	echo "usage: $0 up|down|smoke" >&2
	exit 2
	;;
esac
