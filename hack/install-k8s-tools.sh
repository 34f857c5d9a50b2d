#!/usr/bin/env bash
# install-k8s-tools.sh installs the Go tools that the Kubernetes packaging needs, with
# `go install` through the Go module proxy (no binary downloads). It is idempotent: a tool
# already installed at its pinned version is left alone, and then it prints nothing.
#
#   helm            helm.sh/helm/v3/cmd/helm        `helm lint` and `helm template` in the chart
#                                                    tests and `make manifests`
#   controller-gen  sigs.k8s.io/controller-tools    the DataImage CRD and deepcopy (`make manifests`)
#   kustomize       sigs.k8s.io/kustomize/kustomize `kustomize build deploy` in the deploy tests
#
# Tools go to GOBIN, or GOPATH/bin when GOBIN is unset; the Makefile puts both on PATH.
set -euo pipefail

# Pinned versions, checked to build with Go 1.26 through the module proxy. kustomize v5.8.3
# needs Go 1.27; v5.8.1 is the newest that builds here.
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CONTROLLER_GEN_VERSION="${CONTROLLER_GEN_VERSION:-v0.23.0}"
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.1}"
# The Kubernetes version helm reports by default (`helm template` without --kube-version,
# `helm lint`): its client-go's, as helm's own Makefile sets it. helm v3.22 uses client-go v0.37.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37

GO="${GO:-go}"
gobin="$("$GO" env GOBIN)"
if [[ -z "$gobin" ]]; then
	gobin="$("$GO" env GOPATH)/bin"
fi

log() { echo "install-k8s-tools: $*" >&2; }

# has TOOL WANT CMD...: whether $gobin/TOOL exists and CMD's output contains WANT.
has() {
	local tool=$1 want=$2
	shift 2
	[[ -x "$gobin/$tool" ]] && "$gobin/$tool" "$@" 2>/dev/null | grep -qF -- "$want"
}

if ! has helm "$HELM_VERSION" version --template '{{.Version}}'; then
	log "installing helm $HELM_VERSION into $gobin"
	ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
	for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
		ldflags+=" -X $pkg.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
	done
	GOBIN="$gobin" "$GO" install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

if ! has controller-gen "Version: $CONTROLLER_GEN_VERSION" --version; then
	log "installing controller-gen $CONTROLLER_GEN_VERSION into $gobin"
	GOBIN="$gobin" "$GO" install "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_GEN_VERSION"
fi

if ! has kustomize "$KUSTOMIZE_VERSION" version; then
	log "installing kustomize $KUSTOMIZE_VERSION into $gobin"
	GOBIN="$gobin" "$GO" install -ldflags "-X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION" \
		"sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
"$(dirname "$0")/install-envtest.sh"
