#!/usr/bin/env bash
# chart.sh: phase 4 of the e2e harness (docs/e2e.md). Installs Dataimage into the running e2e
# cluster with the project's own chart (charts/dataimage, through helm), with values for this
# cluster only: the images imported by `cluster.sh up` (pullPolicy Never), the kubelet's root
# directory and the pool under $E2E_STATE, the export state under $E2E_RUN, no livenessprobe
# sidecar (its module is not on the Go module proxy, so there is no image), the Debian
# PostgreSQL image of images.sh as the postgres engine's image (its postgres user is 999:999, the
# chart's default), the tests' backup directory as the one host path DataImages may use, and the
# cluster's S3 server as the registry (its keys in a Secret). Then waits until the node plugin
# has registered with every node's kubelet and the controller is available.
# helm, like kubectl, runs in the client's network namespace (lib.sh).
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

REPO="$(cd "$(dirname "$0")/../.." && pwd)"

write_values() {
	cat >"$E2E_STATE/values.yaml" <<EOF
# Values of the dataimage chart for the e2e cluster (hack/e2e/chart.sh).
images:
  plugin: {pullPolicy: Never}
  dataplane: {pullPolicy: Never}
  controller: {pullPolicy: Never}
  builder: {pullPolicy: Never}
  provisioner: {pullPolicy: Never}
  snapshotter: {pullPolicy: Never}
node:
  kubeletDir: $KUBELET_DIR
  pool:
    path: $POOL_PATH
    size: 20Gi
  exportStateDir: $EXPORT_STATE_DIR
  livenessProbe: {enabled: false}
  logLevel: 4
controller:
  logLevel: 2
  defaultVolumeSize: 1Gi
  engines:
    postgres:
      image: "$POSTGRES_IMAGE_REPO:{version}"
      versions: ["$POSTGRES_VERSION"]
  # The tests' backups are host directories under \$E2E_STATE/backups (e2e).
  allowedHostPaths: ["$E2E_STATE/backups"]
# The cluster's SeaweedFS (cluster.sh start_s3), the images' registry.
registry:
  url: s3://$S3_BUCKET/images
  endpoint: http://$S3_IP:$S3_PORT
  region: us-east-1
  pathStyle: true
  credentialsSecret: $REGISTRY_SECRET
  syncInterval: 5s
  gcInterval: 20s
EOF
}

REGISTRY_SECRET=dataimage-registry

# registry_secret: the S3 server's keys (cluster.sh start_s3) as the Secret the chart's registry
# names.
registry_secret() {
	e2e_kubectl create namespace "$DATAIMAGE_NAMESPACE" --dry-run=client -o yaml | e2e_kubectl apply -f - >/dev/null
	e2e_kubectl -n "$DATAIMAGE_NAMESPACE" create secret generic "$REGISTRY_SECRET" \
		--from-env-file="$E2E_STATE/s3/credentials.env" --dry-run=client -o yaml | e2e_kubectl apply -f - >/dev/null
}

# plugin_registered: whether the plugin registered with every node's kubelet.
plugin_registered() {
	local drivers n
	for ((n = 1; n <= E2E_NODES; n++)); do
		drivers="$(e2e_kubectl get csinode "$(node_name "$n")" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null)" || return 1
		grep -qw csi.dataimage.io <<<"$drivers" || return 1
	done
}

# capacity_published: whether the provisioner published the node's capacity for the chart's
# StorageClass (CSIStorageCapacity, from the plugin's GetCapacity): without it the scheduler
# places no pod that uses a Dataimage volume.
capacity_published() {
	local classes
	classes="$(e2e_kubectl -n "$DATAIMAGE_NAMESPACE" get csistoragecapacities -o jsonpath='{.items[*].storageClassName}' 2>/dev/null)" || return 1
	grep -qw dataimage <<<"$classes"
}

# show COMPONENT: the pods of a component, described, with their logs' tails.
show() {
	e2e_kubectl -n "$DATAIMAGE_NAMESPACE" get pods -o wide >&2 || true
	e2e_kubectl -n "$DATAIMAGE_NAMESPACE" describe pods -l "app.kubernetes.io/component=$1" >&2 || true
	e2e_kubectl -n "$DATAIMAGE_NAMESPACE" logs -l "app.kubernetes.io/component=$1" --all-containers --tail=30 >&2 || true
}

main() {
	e2e_require_root
	[[ -f $KUBECONFIG_ADMIN ]] || e2e_die "no cluster: run hack/e2e/cluster.sh up"
	GO="$GO" "$REPO/hack/install-k8s-tools.sh"
	local helm
	helm="$(command -v helm || true)"
	[[ -n $helm ]] || helm="$("$GO" env GOPATH)/bin/helm"
	[[ -x $helm ]] || e2e_die "helm is missing (hack/install-k8s-tools.sh)"
	write_values
	registry_secret
	e2e_log "helm upgrade --install $DATAIMAGE_RELEASE charts/dataimage -n $DATAIMAGE_NAMESPACE -f $E2E_STATE/values.yaml"
	e2e_quiet "$E2E_STATE/logs/helm.log" in_netns "$CLIENT_NS" "$helm" --kubeconfig "$KUBECONFIG_ADMIN" upgrade --install \
		"$DATAIMAGE_RELEASE" "$REPO/charts/dataimage" --namespace "$DATAIMAGE_NAMESPACE" --create-namespace \
		-f "$E2E_STATE/values.yaml"
	if ! e2e_kubectl -n "$DATAIMAGE_NAMESPACE" rollout status "daemonset/$DATAIMAGE_RELEASE-node" --timeout=120s >&2 ||
		! e2e_wait 90 "csi.dataimage.io to register with every node's kubelet (CSINode)" plugin_registered; then
		# The plugin waits for its data plane (DaemonSet $DATAIMAGE_RELEASE-dataplane, OnDelete:
		# no rollout status) before it serves.
		show dataplane
		show node
		e2e_die "the node plugin is not running or not registered with the kubelet"
	fi
	e2e_log "node plugin registered"
	if ! e2e_wait 60 "the node's capacity for StorageClass dataimage (CSIStorageCapacity)" capacity_published; then
		e2e_kubectl -n "$DATAIMAGE_NAMESPACE" logs -l app.kubernetes.io/component=node -c plugin --tail=200 2>/dev/null |
			grep GetCapacity | tail -n 3 >&2 || true
		e2e_die "no CSIStorageCapacity for StorageClass dataimage: no pod with a Dataimage volume can be scheduled (the plugin's GetCapacity calls above)"
	fi
	e2e_log "capacity published"
	if ! e2e_kubectl -n "$DATAIMAGE_NAMESPACE" rollout status "deployment/$DATAIMAGE_RELEASE-controller" --timeout=120s >&2; then
		show controller
		e2e_die "the DataImage controller is not available"
	fi
	e2e_log "controller available"
}

main "$@"
