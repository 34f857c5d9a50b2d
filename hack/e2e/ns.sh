#!/usr/bin/env bash
# ns.sh NS [CMD...]: CMD (a shell without one) in one of the e2e cluster's network namespaces,
# entering only that one (nsenter --net: the mount namespace stays the host's), with KUBECONFIG
# set to the cluster's admin and the cluster's binaries first on PATH. NS is a role (net, cp,
# client, node1), a namespace's full name, or a pod's (cni-..., `ip netns list`). Examples:
#
#   hack/e2e/ns.sh client kubectl get pods -A -o wide
#   hack/e2e/ns.sh node1 ip addr          # the node: eth0 on the bridge, cni0 with the pods
#   hack/e2e/ns.sh cp ss -ltnp            # etcd, kube-apiserver
#   hack/e2e/ns.sh net bridge link        # the bridge's ports
#
# `down` ends every process left in these namespaces, shells opened here included.
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

[[ $# -ge 1 ]] || {
	echo "usage: $0 NS [CMD...]   (NS: net cp client node1, or a name of \`ip netns list\`)" >&2
	exit 2
}
e2e_require_root
ns=$1
shift
if [[ ! -e "$(netns_path "$ns")" ]]; then ns="$E2E_NETNS_PREFIX-$ns"; fi
[[ -e "$(netns_path "$ns")" ]] || e2e_die "no network namespace $1 (is the cluster up? ip netns list)"
(($# > 0)) || set -- "${SHELL:-/bin/bash}"
export KUBECONFIG="$E2E_RUN/kubeconfig" PATH="$E2E_BIN:$PATH"
exec nsenter --net="$(netns_path "$ns")" -- "$@"
