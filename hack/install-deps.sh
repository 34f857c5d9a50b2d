#!/usr/bin/env bash
# install-deps.sh installs what the tests and linters need on a Debian/Ubuntu
# machine. It is idempotent: when everything is present it does nothing and
# prints nothing.
#
#   system tools (apt, root only): mkfs.ext4 mkfs.xfs fusermount3 losetup
#                                  blkid wipefs sfdisk qemu-img fio, and gcc
#                                  for `go test -race`
#   database engines (apt):        PostgreSQL (Debian's default, 15) and
#                                  MariaDB (Debian's default, 10.11): server,
#                                  client tools and mariadb-backup (mariabackup,
#                                  mbstream), for the image builder
#   Go tools (go install):         staticcheck, pinned below
#   Kubernetes tools:              hack/install-k8s-tools.sh (skipped with
#                                  DATAIMAGE_DEPS=local, as make demo does)
#   S3 server for the tests:       hack/install-seaweedfs.sh (SeaweedFS built
#                                  from its Go module; skipped with
#                                  DATAIMAGE_DEPS=local too)
#
# The project runs its own database servers, on its own data directories,
# sockets and ports. The packages' own services (Debian's "main" PostgreSQL
# cluster, the system MariaDB on /var/lib/mysql) are kept out of the way: no
# main cluster is created, and no service is started during the install (a
# policy-rc.d refuses every start while apt runs, which also keeps the install
# from failing where no init system runs, as in CI containers). Servers that
# were already running before are left alone.
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
	[blkid]=util-linux  # provision's blank check of pool devices (blkid -p)
	[wipefs]=util-linux # provision's tests: a mounted device with its signature wiped
	[sfdisk]=fdisk      # provision's tests: devices with a partition table
	[qemu-img]=qemu-utils
	[fio]=fio
	[gcc]="gcc libc6-dev" # go test -race needs cgo
)

# db_packages are the database engines' packages, checked by package rather
# than by command: the server binaries are not on PATH.
db_packages=(postgresql postgresql-contrib postgresql-client mariadb-server mariadb-client mariadb-backup)

log() { echo "install-deps: $*" >&2; }

installed() {
	[[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# no_service_starts keeps the packages' services from starting while apt runs:
# postgresql-common reads createcluster.d, and every maintainer script starts
# services through invoke-rc.d (or deb-systemd-invoke), which ask policy-rc.d.
# An existing policy-rc.d (Docker images ship one) is left as it is.
no_service_starts() {
	mkdir -p /etc/postgresql-common/createcluster.d
	printf '# written by dataimage hack/install-deps.sh: the project runs its own servers\ncreate_main_cluster = false\n' \
		>/etc/postgresql-common/createcluster.d/dataimage.conf
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\n# dataimage hack/install-deps.sh: no service starts while it installs\nexit 101\n' \
			>/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
		trap 'exit 130' INT TERM
	fi
}

# disable_services keeps freshly installed services from starting at the next
# boot where systemd runs (without systemd, nothing starts them).
disable_services() {
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now --quiet mariadb.service postgresql.service >/dev/null 2>&1 || true
	fi
}

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
missing_db=()
if command -v dpkg-query >/dev/null 2>&1; then
	for pkg in "${db_packages[@]}"; do
		if ! installed "$pkg"; then
			missing_db+=("$pkg")
		fi
	done
elif ! PATH="$PATH:/usr/sbin:/sbin" command -v mariadbd >/dev/null 2>&1; then
	missing_db=("${db_packages[@]}")
fi
missing+=("${missing_db[@]}")
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		log "not root, skipping apt; missing packages: ${missing[*]}"
	elif ! command -v apt-get >/dev/null 2>&1; then
		log "no apt-get, install these yourself: ${missing[*]}"
	else
		log "installing ${missing[*]}"
		if ((${#missing_db[@]} > 0)); then
			no_service_starts
		fi
		# The maintainer scripts talk a lot (locales, certificates, services not started):
		# their output is shown only when the install fails.
		apt_log="$(mktemp)"
		if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
			cat "$apt_log" >&2
			rm -f "$apt_log"
			log "apt-get install failed"
			exit 1
		fi
		rm -f "$apt_log"
		if ((${#missing_db[@]} > 0)); then
			disable_services
		fi
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

# The Kubernetes packaging's tools (helm, controller-gen, kustomize, and the
# envtest API server), which the deploy/, charts/ and controller tests run.
# `make demo` needs none of them: it runs with DATAIMAGE_DEPS=local.
if [[ "${DATAIMAGE_DEPS:-all}" != local ]]; then
	"$(dirname "$0")/install-k8s-tools.sh"
	# The real S3 server of the export set tests (internal/s3test).
	"$(dirname "$0")/install-seaweedfs.sh"
fi
