#!/usr/bin/env bash
# install-deps.sh installs what the tests and linters need on a Debian/Ubuntu
# machine. It is idempotent: when everything is present it does nothing and
# prints nothing.
#
#   system tools (apt, root only): mkfs.ext4 mkfs.xfs fusermount3 losetup
#                                  qemu-img fio, and gcc for `go test -race`
#   Go tools (go install):         staticcheck, pinned below
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# STATICCHECK_VERSION is the pinned staticcheck release (module version of
# honnef.co/go/tools). v0.8.2 is staticcheck 2026.2.2, checked to build and run
# with Go 1.26. The fallback is v0.6.1 (staticcheck 2025.1.1); note that the go
# command only takes the module version (v0.6.1), not the release name.
STATICCHECK_VERSION="${STATICCHECK_VERSION:-v0.8.2}"
STATICCHECK_FALLBACK="v0.6.1"

# apt_packages maps each required command to the Debian package providing it.
declare -A apt_packages=(
	[mkfs.ext4]=e2fsprogs
	[mkfs.xfs]=xfsprogs
	[fusermount3]=fuse3
	[losetup]=util-linux
	[qemu-img]=qemu-utils
	[fio]=fio
	[gcc]="gcc libc6-dev" # go test -race needs cgo
)

log() { echo "install-deps: $*" >&2; }

# System packages. Collect only the packages whose command is missing, then
# run apt-get update and install once.
missing=()
for cmd in "${!apt_packages[@]}"; do
	# sbin is not always on a non-login PATH; look there too.
	if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
		# shellcheck disable=SC2206 # one entry may name several packages
		missing+=(${apt_packages[$cmd]})
	fi
done
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		log "not root, skipping apt; missing packages: ${missing[*]}"
	elif ! command -v apt-get >/dev/null 2>&1; then
		log "no apt-get, install these yourself: ${missing[*]}"
	else
		log "installing ${missing[*]}"
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
fi

# Go tools go to GOBIN, or GOPATH/bin when GOBIN is unset; the Makefile puts
# both on PATH.
GO="${GO:-go}"
gobin="$("$GO" env GOBIN)"
if [[ -z "$gobin" ]]; then
	gobin="$("$GO" env GOPATH)/bin"
fi
if ! command -v staticcheck >/dev/null 2>&1 && [[ ! -x "$gobin/staticcheck" ]]; then
	log "installing staticcheck@$STATICCHECK_VERSION into $gobin"
	if ! "$GO" install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"; then
		log "staticcheck@$STATICCHECK_VERSION failed, trying @$STATICCHECK_FALLBACK"
		"$GO" install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_FALLBACK"
	fi
fi
