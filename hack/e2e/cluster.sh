#!/usr/bin/env bash
# cluster.sh up|down|smoke: phase 3 (and 6) of the e2e harness (docs/e2e.md). `up` starts a
# Kubernetes cluster of $E2E_NODES nodes on this machine from the binaries of install.sh and the images
# of images.sh; `down` stops everything that `up` started, by PID, and releases what it left
# (mounts, loop devices, FUSE mounts, network namespaces, cgroups), whatever state it is in, and
# checks that the host's network namespace is as it was before (rootns.sh); `smoke` runs a
# busybox pod to completion. Both up and down are idempotent: `up` runs `down` first.
#
# Network: nothing in the host's network namespace. The bridge, the control plane, the node and
# the client (kubectl, helm, the tests) each have a network namespace of their own, made here and
# deleted by `down` (the layout is in lib.sh and docs/e2e.md). Processes enter only the network
# namespace (nsenter --net): they share the host's mount namespace, so that the CSI plugin's
# Bidirectional mounts reach the kubelet and the tests. Node N >= 2 has a mount namespace of its
# own besides (lib.sh, node_state): its processes enter both.
#
# The S3 server of the chart's registry (SeaweedFS) runs in a network namespace of its own.
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PKI="$E2E_STATE/pki"
LOGS="$E2E_STATE/logs"
PIDS="$E2E_RUN/pids"
CGROUP_NAME="dataimage-e2e"
S3_STATE="$E2E_STATE/s3"
# SeaweedFS's ports in its namespace: master, volume, filer, S3 (each with its gRPC port).
S3_MASTER_PORT=9333 S3_VOLUME_PORT=8080 S3_FILER_PORT=8888

# Node N's component names, cgroup (the kubelet's root in every hierarchy) and containerd socket.
node_comp() { if (($2 == 1)); then echo "$1"; else echo "$1-node$2"; fi; }
node_cgroup() { node_comp "$CGROUP_NAME" "$1"; }
node_sock() { echo "$(node_run "$1")/containerd/containerd.sock"; }
# node_mntns N: the mount namespace file of node N >= 2 (its keeper process's).
node_mntns() {
	local pid
	read -r pid _ <"$PIDS/$(node_comp mntns "$1").pid"
	echo "/proc/$pid/ns/mnt"
}

# Components in start order; `down` stops them in the reverse order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler s3)
for ((n = 1; n <= E2E_NODES; n++)); do COMPONENTS+=("$(node_comp containerd "$n")" "$(node_comp kubelet "$n")"); done
COMPONENTS+=(snapshot-controller)
unset n

# ---------------------------------------------------------------- processes

# start NS NAME CMD...: starts CMD in network namespace NS (nsenter execs it: the PID is CMD's)
# and its own session, output in $LOGS/NAME.log, PID and executable in $PIDS/NAME.pid. With
# START_MNT set (a mount namespace file), in that mount namespace too.
start() {
	local ns=$1 name=$2 mnt=()
	shift 2
	if [[ -n ${START_MNT:-} ]]; then mnt=(--mount="$START_MNT"); fi
	setsid nsenter --net="$(netns_path "$ns")" "${mnt[@]}" -- "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
	local pid=$!
	echo "$pid $(readlink -f "$(command -v "$1")")" >"$PIDS/$name.pid"
	e2e_log "started $name in $ns (pid $pid, log $LOGS/$name.log)"
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
	local i
	# Until nsenter has exec'ed the command, the PID's executable is nsenter.
	for ((i = 0; i < 10; i++)); do
		alive "$1" && return 0
		[[ -f $PIDS/$1.pid && "$(readlink -f "/proc/$(cut -d' ' -f1 "$PIDS/$1.pid")/exe" 2>/dev/null)" == */nsenter ]] || break
		sleep 0.2
	done
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

# kubeconfig NAME: $PKI/NAME.kubeconfig with NAME's certificate, for the apiserver at $CP_IP.
kubeconfig() {
	local name=$1
	cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dataimage-e2e
  cluster:
    server: $APISERVER_URL
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
		"IP:$CP_IP,IP:$SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
	cert admin dataimage-e2e-admin system:masters clientAuth
	cert controller-manager system:kube-controller-manager "" clientAuth
	cert scheduler system:kube-scheduler "" clientAuth
	local n
	for ((n = 1; n <= E2E_NODES; n++)); do
		cert "$(node_comp kubelet "$n")" "system:node:$(node_name "$n")" system:nodes clientAuth
	done
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
	openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	for n in admin controller-manager scheduler; do kubeconfig "$n"; done
	for ((n = 1; n <= E2E_NODES; n++)); do kubeconfig "$(node_comp kubelet "$n")"; done
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

# netns_add NS: a new network namespace, kept by a bind mount on /run/netns/NS (so `ip -n NS`
# and `ip netns` know it), its loopback up. Made with unshare, not `ip netns add`, which would
# also turn /run/netns into a shared bind mount of its own and leave that behind.
netns_add() {
	local p
	p="$(netns_path "$1")"
	[[ ! -e $p ]] || e2e_die "network namespace $1 exists already ($p): run hack/e2e/cluster.sh down"
	touch "$p"
	unshare --net="$p" true
	ip -n "$1" link set lo up
}

# attach NS IP: a new network namespace NS, plugged into the bridge by a veth pair (eth0 in NS
# with IP/$NET_CIDR_PREFIXLEN; the bridge's port is named after NS's role), made in those
# namespaces directly: neither end ever exists in the host's.
attach() {
	local ns=$1 ip=$2 port=${1#"$E2E_NETNS_PREFIX"-}
	netns_add "$ns"
	ip -n "$NET_NS" link add "$port" type veth peer name eth0 netns "$ns"
	ip -n "$NET_NS" link set "$port" master "$NET_BRIDGE" up
	ip -n "$ns" addr add "$ip/$NET_CIDR_PREFIXLEN" dev eth0
	ip -n "$ns" link set eth0 up
}

setup_network() {
	# /run/netns, when this makes it, goes again with the cluster (down).
	if [[ ! -d /run/netns ]]; then
		mkdir -p /run/netns
		touch "$E2E_RUN/netns-dir.made"
	fi
	# Network namespaces present before the cluster: `down` removes only the others (the pods').
	local n
	for n in /run/netns/*; do
		if [[ -e $n ]]; then basename "$n"; fi
	done >"$E2E_RUN/netns.before"
	netns_add "$NET_NS"
	ip -n "$NET_NS" link add "$NET_BRIDGE" type bridge
	ip -n "$NET_NS" link set "$NET_BRIDGE" up
	attach "$CP_NS" "$CP_IP"
	attach "$CLIENT_NS" "$CLIENT_IP"
	attach "$S3_NS" "$S3_IP"
	# The control plane holds the `kubernetes` Service's address (there is no kube-proxy).
	ip -n "$CP_NS" addr add "$SERVICE_IP/32" dev lo
	local n m nodes=""
	for ((n = 1; n <= E2E_NODES; n++)); do attach "$(node_ns "$n")" "$(node_ip "$n")"; done
	for ((n = 1; n <= E2E_NODES; n++)); do
		# The control plane, the client and the S3 server route each node's pods to their node;
		# so does every other node.
		ip -n "$CP_NS" route add "$(pod_cidr "$n")" via "$(node_ip "$n")"
		ip -n "$CLIENT_NS" route add "$(pod_cidr "$n")" via "$(node_ip "$n")"
		ip -n "$S3_NS" route add "$(pod_cidr "$n")" via "$(node_ip "$n")"
		for ((m = 1; m <= E2E_NODES; m++)); do
			((m == n)) || ip -n "$(node_ns "$m")" route add "$(pod_cidr "$n")" via "$(node_ip "$n")"
		done
		# The node routes between its pods and the bridge (also set by the CNI bridge plugin:
		# both in the node's namespace, where the sysctl is the namespace's own), and sends the
		# service range to the control plane.
		in_netns "$(node_ns "$n")" sysctl -qw net.ipv4.ip_forward=1
		ip -n "$(node_ns "$n")" route add "$SERVICE_CIDR" via "$CP_IP"
		nodes+=", $(node_ns "$n") $(node_ip "$n") (pods $(pod_cidr "$n"))"
	done
	e2e_log "network: bridge $NET_BRIDGE in $NET_NS; $CP_NS $CP_IP (+ $SERVICE_IP), $CLIENT_NS $CLIENT_IP, $S3_NS $S3_IP$nodes"
}

# start_mntns N: node N's (>= 2) mount namespace, kept by a sleeping process (component
# mntns-nodeN): a copy of the host's in which $E2E_STATE and $E2E_RUN receive the host's mounts
# but send none back, and the kubelet's root, the pool's directory and the export state are
# node N's own directories, shared mounts (the plugin's Bidirectional mounts reach node N's
# kubelet, and only it).
start_mntns() {
	local n=$1 name st rn i pid
	name="$(node_comp mntns "$n")" st="$(node_state "$n")" rn="$(node_run "$n")"
	mkdir -p "$st/kubelet" "$st/dataimage" "$rn/export" "$KUBELET_DIR" "$(dirname "$POOL_PATH")" "$EXPORT_STATE_DIR"
	# shellcheck disable=SC2016 # expanded by the inner shell
	setsid unshare --mount --propagation unchanged -- bash -c '
		set -e
		mount --make-rslave "$1"
		mount --make-rslave "$2"
		shift 2
		while (($# > 0)); do
			mount --bind "$1" "$2"
			mount --make-rshared "$2"
			shift 2
		done
		exec sleep infinity' mntns "$E2E_STATE" "$E2E_RUN" \
		"$st/kubelet" "$KUBELET_DIR" "$st/dataimage" "$(dirname "$POOL_PATH")" "$rn/export" "$EXPORT_STATE_DIR" \
		</dev/null >>"$LOGS/$name.log" 2>&1 &
	pid=$!
	echo "$pid $(readlink -f "$(command -v sleep)")" >"$PIDS/$name.pid"
	for ((i = 0; i < 50; i++)); do
		alive "$name" && break
		sleep 0.1
	done
	alive "$name" || {
		cat "$LOGS/$name.log" >&2
		e2e_die "node $n's mount namespace: setup failed"
	}
	e2e_log "node $n: mount namespace of pid $pid ($KUBELET_DIR, $(dirname "$POOL_PATH"), $EXPORT_STATE_DIR its own)"
}

# start_s3: SeaweedFS (weed server -s3) in $S3_NS with one identity, whose keys go to
# $S3_STATE/credentials.env for chart.sh's Secret, and the bucket $S3_BUCKET.
start_s3() {
	[[ -x $WEED ]] || e2e_die "no SeaweedFS at $WEED: run hack/install-seaweedfs.sh"
	mkdir -p "$S3_STATE/data"
	local ak sk
	ak="e2e$(openssl rand -hex 8)" sk="$(openssl rand -hex 20)"
	printf '{"identities":[{"name":"dataimage","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}\n' \
		"$ak" "$sk" >"$S3_STATE/s3.json"
	printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$ak" "$sk" >"$S3_STATE/credentials.env"
	chmod 0600 "$S3_STATE/s3.json" "$S3_STATE/credentials.env"
	# weed reads master.toml from its working directory: one volume per new collection.
	printf '[master.volume_growth]\ncopy_1 = 1\n' >"$S3_STATE/master.toml"
	(cd "$S3_STATE" && start "$S3_NS" s3 "$WEED" -logdir="$S3_STATE" server \
		-ip="$S3_IP" -ip.bind="$S3_IP" -dir="$S3_STATE/data" -volume.max=100 \
		-master.port=$S3_MASTER_PORT -master.port.grpc=$((S3_MASTER_PORT + 10000)) \
		-master.volumeSizeLimitMB=256 -master.telemetry=false \
		-volume.port=$S3_VOLUME_PORT -volume.port.grpc=$((S3_VOLUME_PORT + 10000)) -volume.preStopSeconds=0 \
		-filer.port=$S3_FILER_PORT -filer.port.grpc=$((S3_FILER_PORT + 10000)) -filer.localSocket="$S3_STATE/filer.sock" \
		-s3 -s3.port=$S3_PORT -s3.port.grpc=$((S3_PORT + 10000)) -s3.port.iceberg=0 -s3.port.lance=0 \
		-s3.config="$S3_STATE/s3.json")
	e2e_wait 90 "SeaweedFS to make bucket $S3_BUCKET" make_bucket || {
		expect_alive s3
		e2e_die "SeaweedFS did not make bucket $S3_BUCKET (log: $LOGS/s3.log)"
	}
	expect_alive s3
	e2e_log "S3: http://$S3_IP:$S3_PORT, bucket $S3_BUCKET"
}

make_bucket() {
	local out
	out="$(echo "s3.bucket.create -name $S3_BUCKET" | in_netns "$S3_NS" timeout 20 "$WEED" shell -master="$S3_IP:$S3_MASTER_PORT" 2>&1)" || return 1
	grep -q "created bucket $S3_BUCKET\|already exists" <<<"$out"
}

# remove_s3_sockets: the unix sockets weed makes in /tmp for its gRPC ports.
remove_s3_sockets() {
	local p
	for p in $((S3_MASTER_PORT + 10000)) $((S3_VOLUME_PORT + 10000)) $((S3_FILER_PORT + 10000)) $((S3_PORT + 10000)) $S3_FILER_PORT; do
		rm -f /tmp/seaweedfs-*-"$p".sock
	done
}

# setup_cgroups: each kubelet's cgroup root in every v1 hierarchy (cpuset needs its cpus and
# mems filled in before anything can join it).
setup_cgroups() {
	local h n cg
	for ((n = 1; n <= E2E_NODES; n++)); do
		cg="$(node_cgroup "$n")"
		for h in /sys/fs/cgroup/*/; do
			h=${h%/}
			[[ -f "$h/cgroup.procs" ]] || continue
			[[ "$(basename "$h")" == unified ]] && continue
			mkdir -p "$h/$cg"
		done
		if [[ -d /sys/fs/cgroup/cpuset/$cg ]]; then
			cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$cg/cpuset.cpus"
			cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$cg/cpuset.mems"
		fi
	done
}

# ---------------------------------------------------------------- components

start_etcd() {
	start "$CP_NS" etcd /usr/bin/etcd --name e2e --data-dir "$E2E_STATE/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--listen-metrics-urls "" --log-level warn
	e2e_wait 30 "etcd" in_netns "$CP_NS" curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" || expect_alive etcd
	expect_alive etcd
}

start_apiserver() {
	# On every address of its namespace: $CP_IP and the `kubernetes` Service's $SERVICE_IP, both
	# on the Service's port, so that pods reach it without a proxy.
	start "$CP_NS" kube-apiserver "$E2E_BIN/kube-apiserver" \
		--advertise-address="$CP_IP" --bind-address=0.0.0.0 --secure-port="$APISERVER_PORT" \
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
}

start_controllers() {
	start "$CP_NS" kube-controller-manager "$E2E_BIN/kube-controller-manager" \
		--kubeconfig="$PKI/controller-manager.kubeconfig" --secure-port=0 --leader-elect=false \
		--use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
		--root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" \
		--cluster-signing-key-file="$PKI/ca.key" --service-cluster-ip-range="$SERVICE_CIDR"
	start "$CP_NS" kube-scheduler "$E2E_BIN/kube-scheduler" \
		--kubeconfig="$PKI/scheduler.kubeconfig" --secure-port=0 --leader-elect=false
}

# node_start N NAME CMD...: start, in node N's network namespace (and mount namespace, N >= 2).
node_start() {
	local n=$1
	shift
	if ((n == 1)); then
		start "$(node_ns "$n")" "$@"
	else
		START_MNT="$(node_mntns "$n")" start "$(node_ns "$n")" "$@"
	fi
}

# start_containerd N: node N's containerd.
start_containerd() {
	local n=$1 st rn sock name
	st="$(node_state "$n")" rn="$(node_run "$n")" sock="$(node_sock "$n")" name="$(node_comp containerd "$n")"
	mkdir -p "$st/containerd" "$rn/containerd" "$st/cni/net.d" "$st/cni/ipam"
	cat >"$st/containerd.toml" <<EOF
# containerd of node $n of the dataimage e2e cluster (hack/e2e/cluster.sh)
version = 2
root = "$st/containerd"
state = "$rn/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$st/containerd-opt"

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
    conf_dir = "$st/cni/net.d"
EOF
	cat >"$st/cni/net.d/10-dataimage-e2e.conflist" <<EOF
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
        "ranges": [[{"subnet": "$(pod_cidr "$n")"}]],
        "routes": [{"dst": "$CLUSTER_CIDR"}],
        "dataDir": "$st/cni/ipam"
      }
    }
  ]
}
EOF
	node_start "$n" "$name" /usr/bin/containerd --config "$st/containerd.toml"
	e2e_wait 30 "$name" ctr --address "$sock" version || expect_alive "$name"
	expect_alive "$name"
}

# import_images N: every OCI archive of $E2E_CACHE/images and the project's bin/images, into
# node N's containerd.
import_images() {
	local f i=0 sock
	sock="$(node_sock "$1")"
	for f in "$E2E_CACHE"/images/*.tar "$REPO"/bin/images/*.tar; do
		[[ -f $f ]] || continue
		e2e_quiet "$LOGS/ctr-import.log" ctr --address "$sock" -n k8s.io images import "$f"
		i=$((i + 1))
	done
	e2e_log "node $1: imported $i image archives"
	# (grep -q on a pipe would end ctr with SIGPIPE: under pipefail that fails at random.)
	local images
	images="$(ctr --address "$sock" -n k8s.io images ls -q)"
	grep -qxF "$PAUSE_IMAGE" <<<"$images" || e2e_die "no $PAUSE_IMAGE in containerd: run hack/e2e/images.sh"
}

# start_kubelet N: node N's kubelet, its root $KUBELET_DIR as node N sees it.
start_kubelet() {
	local n=$1 st
	st="$(node_state "$n")"
	mkdir -p "$KUBELET_DIR" "$st/pod-logs"
	cat >"$st/kubelet.yaml" <<EOF
# kubelet of node $n of the dataimage e2e cluster (hack/e2e/cluster.sh)
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$n")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$(node_sock "$n")
cgroupDriver: cgroupfs
cgroupRoot: /$(node_cgroup "$n")
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
volumePluginDir: $st/kubelet-plugins
# Each node's pod logs apart: a kubelet deletes the log directories of pods it does not run, so
# two kubelets sharing /var/log/pods would delete each other's.
podLogsDir: $st/pod-logs
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
	node_start "$n" "$(node_comp kubelet "$n")" "$E2E_BIN/kubelet" --config="$st/kubelet.yaml" \
		--kubeconfig="$PKI/$(node_comp kubelet "$n").kubeconfig" --root-dir="$KUBELET_DIR" \
		--cert-dir="$st/kubelet-pki" --node-ip="$(node_ip "$n")" --hostname-override="$(node_name "$n")" --v=2
}

# The host-wide kernel settings the kubelet sets at its start (setupKernelTunables in
# pkg/kubelet/cm/container_manager_linux.go): not per namespace, so `down` puts back the values
# saved here before the kubelet starts.
KUBELET_TUNABLES=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
TUNABLES_BEFORE="$E2E_RUN/kernel-tunables.before"

save_tunables() {
	local k
	for k in "${KUBELET_TUNABLES[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$TUNABLES_BEFORE.tmp"
	mv "$TUNABLES_BEFORE.tmp" "$TUNABLES_BEFORE"
}

# restore_tunables: the kernel settings of save_tunables, once the kubelet is stopped; fails
# when one cannot be put back.
restore_tunables() {
	[[ -f $TUNABLES_BEFORE ]] || return 0
	local kv k v changed=()
	while IFS= read -r kv; do
		k=${kv%%=*} v=${kv#*=}
		if [[ "$(sysctl -n "$k")" != "$v" ]]; then
			sysctl -qw "$k=$v" || e2e_die "cannot put back $k=$v"
			changed+=("$k=$v")
		fi
	done <"$TUNABLES_BEFORE"
	rm -f "$TUNABLES_BEFORE"
	if ((${#changed[@]} > 0)); then e2e_log "put back the kernel settings the kubelet changed: ${changed[*]}"; fi
}

# node_ready NAME: whether node NAME is Ready.
node_ready() {
	[[ "$(e2e_kubectl get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# install_snapshot_api: the six snapshot CRDs the chart ships (external-snapshotter client/v8,
# copied by make manifests) and snapshot-controller as a host process.
install_snapshot_api() {
	e2e_quiet "$LOGS/snapshot-crds.log" e2e_kubectl apply --server-side --force-conflicts \
		-f "$REPO/charts/dataimage/files/snapshot-crds/"
	e2e_quiet "$LOGS/snapshot-crds.log" e2e_kubectl wait --for condition=established --timeout=60s \
		-f "$REPO/charts/dataimage/files/snapshot-crds/"
	start "$CP_NS" snapshot-controller "$E2E_BIN/snapshot-controller" --kubeconfig="$PKI/admin.kubeconfig" \
		--leader-election=false --enable-distributed-snapshotting --v=2
}

up() {
	e2e_require_root
	local b
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl snapshot-controller; do
		[[ -x "$E2E_BIN/$b" ]] || e2e_die "$E2E_BIN/$b is missing: run hack/e2e/install.sh"
	done
	down cleanup
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
	# The host's network namespace as it is before the cluster, for `down` to compare with
	# (e2e.sh takes it before its first phase instead, and says so).
	if [[ ${E2E_ROOTNS_TAKEN:-0} != 1 || ! -d $ROOTNS_BEFORE ]]; then
		rm -rf "$ROOTNS_BEFORE"
		"$HERE/rootns.sh" snapshot "$ROOTNS_BEFORE" "before up" ||
			e2e_die "no snapshot of the host's network namespace (hack/e2e/rootns.sh snapshot)"
	fi
	make_pki
	setup_network
	setup_cgroups
	start_etcd
	start_apiserver
	e2e_log "apiserver ready ($((SECONDS - t0)) s)"
	start_controllers
	start_s3
	save_tunables
	local n
	for ((n = 1; n <= E2E_NODES; n++)); do
		((n == 1)) || start_mntns "$n"
		start_containerd "$n"
		import_images "$n"
		start_kubelet "$n"
	done
	install_snapshot_api
	for ((n = 1; n <= E2E_NODES; n++)); do
		e2e_wait 120 "node $(node_name "$n") Ready" node_ready "$(node_name "$n")" || {
			expect_alive "$(node_comp kubelet "$n")"
			tail -n 30 "$LOGS/$(node_comp kubelet "$n").log" >&2
			e2e_die "node $(node_name "$n") not Ready"
		}
		e2e_kubectl label node "$(node_name "$n")" dataimage.io/cloning-node=true --overwrite >/dev/null
	done
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
	local pids="" n cg
	for ((n = 1; n <= E2E_NODES; n++)); do
		cg="/sys/fs/cgroup/pids/$(node_cgroup "$n")"
		[[ -d $cg ]] || continue
		pids+="$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"$'\n'
	done
	pids="$(sed '/^$/d' <<<"$pids")"
	if [[ -n $pids ]]; then
		e2e_log "killing processes left in the cluster's cgroups: $(echo "$pids" | tr '\n' ' ')"
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 1
	fi
}

# kill_shims: the containerd shims of this cluster's containerds (their -address names its
# socket).
kill_shims() {
	local p cmd n
	for p in /proc/[0-9]*; do
		cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
		for ((n = 1; n <= E2E_NODES; n++)); do
			if [[ $cmd == *containerd-shim*"-address $(node_sock "$n") "* ]]; then
				e2e_log "killing containerd shim ${p#/proc/} (node $n)"
				kill -KILL "${p#/proc/}" 2>/dev/null || true
			fi
		done
	done
}

# release_node_mounts: for each node N >= 2 whose mount namespace is still there, what it holds
# released from inside it (release_mounts), then its keeper stopped: the namespace goes with it.
release_node_mounts() {
	local n name
	for ((n = 2; n <= E2E_NODES; n++)); do
		name="$(node_comp mntns "$n")"
		if alive "$name"; then
			nsenter --mount="$(node_mntns "$n")" -- "$HERE/cluster.sh" release-mounts ||
				e2e_log "node $n: cannot release every mount"
		fi
		stop "$name"
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

# netns_inode NS: the inode of network namespace NS (the same for every process in it).
netns_inode() { stat -L -c %i "$(netns_path "$1")" 2>/dev/null; }

# cluster_netns: the network namespaces of this cluster that exist: the run's own and the pods'
# (cni-*, made by containerd since `up`).
cluster_netns() {
	local ns p n
	for ns in "${E2E_NETNS[@]}"; do
		if [[ -e "$(netns_path "$ns")" ]]; then echo "$ns"; fi
	done
	for p in /run/netns/cni-*; do
		[[ -e $p ]] || continue
		n=$(basename "$p")
		if [[ -f $E2E_RUN/netns.before ]] && grep -qxF "$n" "$E2E_RUN/netns.before"; then
			continue
		fi
		echo "$n"
	done
}

# kill_netns_procs: SIGKILL to every process still in one of the cluster's network namespaces
# once its components are stopped (a shell opened with ns.sh included): then nothing holds a
# namespace once its mount is gone.
kill_netns_procs() {
	local inodes=() ns i p pid found
	while read -r ns; do
		[[ -n $ns ]] && inodes+=("net:[$(netns_inode "$ns")]")
	done < <(cluster_netns)
	((${#inodes[@]} > 0)) || return 0
	for ((i = 0; i < 10; i++)); do
		found=""
		for p in /proc/[0-9]*; do
			pid=${p#/proc/}
			[[ $pid != "$$" && $pid != "$BASHPID" ]] || continue
			ns="$(readlink "$p/ns/net" 2>/dev/null)" || continue
			if [[ " ${inodes[*]} " == *" $ns "* ]]; then
				e2e_log "killing pid $pid ($(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-100)), left in the cluster's network namespace $ns"
				kill -KILL "$pid" 2>/dev/null || true
				found=1
			fi
		done
		[[ -n $found ]] || return 0
		sleep 0.5
	done
	e2e_log "processes are still in the cluster's network namespaces"
}

# release_netns: every network namespace of the cluster unmounted and removed (veths go with
# them), the node's first, the bridge's last; /run/netns too when `up` made it and it is empty.
release_netns() {
	local ns p
	while read -r ns; do
		[[ -n $ns ]] || continue
		p="$(netns_path "$ns")"
		e2e_log "removing network namespace $ns"
		umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true
		rm -f "$p"
	done < <(cluster_netns | tac)
	if [[ -f $E2E_RUN/netns-dir.made ]]; then
		rmdir /run/netns 2>/dev/null || true
		rm -f "$E2E_RUN/netns-dir.made"
	fi
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
	for h in /sys/fs/cgroup/*/"$CGROUP_NAME" /sys/fs/cgroup/*/"$CGROUP_NAME"-node*; do
		[[ -d $h ]] || continue
		find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $h ]] && e2e_log "cannot remove cgroup $h"
	done
	return 0
}

# down [cleanup]: stops the cluster and releases everything it held. Then, when `up` took a
# snapshot of the host's network namespace, compares the namespace with it (rootns.sh; the
# result also in $ROOTNS_REPORT) and fails when they differ. `down cleanup`, which `up` runs
# first, only stops and releases: it leaves the snapshot alone.
down() {
	e2e_require_root
	local mode=${1:-}
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
	release_node_mounts
	kill_netns_procs
	restore_tunables
	remove_s3_sockets
	release_mounts
	release_netns
	release_cgroups
	rm -rf "$PIDS" "$E2E_RUN/containerd" "$E2E_RUN/kubeconfig" "$E2E_RUN/netns.before"
	e2e_log "cluster down"
	[[ $mode != cleanup && -d $ROOTNS_BEFORE ]] || return 0
	local rc=0
	mkdir -p "$(dirname "$ROOTNS_REPORT")"
	"$HERE/rootns.sh" compare "$ROOTNS_BEFORE" "after down" "$ROOTNS_REPORT" >&2 || rc=$?
	rm -rf "$ROOTNS_BEFORE"
	return $rc
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
# (down, in a node's mount namespace)
release-mounts) release_mounts ;;
*)
	echo "usage: $0 up|down|smoke" >&2
	exit 2
	;;
esac
