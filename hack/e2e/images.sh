#!/usr/bin/env bash
# images.sh: phase 2 of the e2e harness (docs/e2e.md). Builds, without a container engine, the
# OCI image archives the cluster runs, into $E2E_CACHE/images (`cluster.sh up` imports them):
#
#   pause       $PAUSE_IMAGE: hack/e2e/pause, static; containerd's sandbox image
#   busybox     $BUSYBOX_IMAGE: Debian's busybox-static with its applets as links
#   sidecars    registry.k8s.io/sig-storage/csi-provisioner:$PROVISIONER_VERSION and
#               csi-snapshotter:$SNAPSHOTTER_VERSION, the static binaries of install.sh, named
#               exactly as the chart's defaults name them (so the chart needs no image override,
#               only pullPolicy Never)
#   postgres    $POSTGRES_IMAGE_REPO:$POSTGRES_VERSION: a Debian bookworm root file system with
#               postgresql-$POSTGRES_VERSION, made by debootstrap (kept in $E2E_CACHE/rootfs);
#               the engine image of build Jobs and the image of the tests' StatefulSets. Its
#               postgres user is uid 999, gid 999, as in the official image: build Jobs run as
#               the uid the chart gives the engine (controller.engines.postgres.runAsUser)
#   project     `make images` (bin/images: dataimage-csi, -dataplane, -builder, -controller)
#
# Idempotent: an archive is rebuilt only when it is older than what it is made of.
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
IMAGES="$E2E_CACHE/images"
TOOLS="$E2E_CACHE/build/tools"
LOGS="$E2E_CACHE/logs"

# stale OUT IN...: whether OUT is missing or older than one of IN.
stale() {
	local out=$1 in
	shift
	[[ -f $out ]] || return 0
	for in in "$@"; do [[ $in -nt $out ]] && return 0; done
	return 1
}

build_tools() {
	mkdir -p "$TOOLS"
	(cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath -o "$TOOLS/" ./hack/ociimage ./hack/e2e/rootfsimage ./hack/e2e/pause)
}

image_pause() {
	stale "$IMAGES/pause.tar" "$TOOLS/pause" || return 0
	"$TOOLS/ociimage" -o "$IMAGES/pause.tar" -name "$PAUSE_IMAGE" -file "$TOOLS/pause=/pause" \
		-user 65535:65535 -entrypoint /pause
	e2e_log "image $PAUSE_IMAGE"
}

image_busybox() {
	stale "$IMAGES/busybox.tar" /bin/busybox "$HERE/images.sh" || return 0
	local args=() a
	for a in sh ash blockdev cat cmp cp df dd echo env grep head hostname id ls md5sum mkdir mount mv od ps rm sed \
		sleep stat sync tail tee test touch tr true false umount uname wc; do
		args+=(-symlink "/bin/$a=busybox")
	done
	"$TOOLS/ociimage" -o "$IMAGES/busybox.tar" -name "$BUSYBOX_IMAGE" -file /bin/busybox=/bin/busybox \
		-dir /tmp:1777 -env PATH=/bin "${args[@]}" -entrypoint /bin/sh
	e2e_log "image $BUSYBOX_IMAGE"
}

# image_sidecar BINARY VERSION: registry.k8s.io/sig-storage/BINARY:VERSION, entrypoint
# /BINARY as upstream's.
image_sidecar() {
	local bin=$1 version=$2
	[[ -x $E2E_BIN/$bin ]] || e2e_die "$E2E_BIN/$bin is missing: run hack/e2e/install.sh"
	stale "$IMAGES/$bin.tar" "$E2E_BIN/$bin" || return 0
	"$TOOLS/ociimage" -o "$IMAGES/$bin.tar" -name "registry.k8s.io/sig-storage/$bin:$version" \
		-file "$E2E_BIN/$bin=/$bin" -entrypoint "/$bin"
	e2e_log "image registry.k8s.io/sig-storage/$bin:$version"
}

# debian_mirror: the first Debian mirror of this machine's apt sources.
debian_mirror() {
	local m
	m="$(sed -n 's/^URIs: *\(http[^ ]*\/debian\) *$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
	[[ -n $m ]] || m="$(sed -n 's/^deb  *\(http[^ ]*\/debian\)  *bookworm .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)"
	echo "${m:-http://deb.debian.org/debian}"
}

# rootfs_postgres: $E2E_CACHE/rootfs/postgres-$POSTGRES_VERSION.tar, a bookworm minbase with
# PostgreSQL (no cluster created, no service started), as an uncompressed tar with numeric owners.
ROOTFS_RECIPE="bookworm minbase postgres=999:999 postgresql-$POSTGRES_VERSION postgresql-client-$POSTGRES_VERSION v2"
rootfs_postgres() {
	local out="$E2E_CACHE/rootfs/postgres-$POSTGRES_VERSION.tar"
	if [[ -f $out && -f $out.stamp && "$(cat "$out.stamp")" == "$ROOTFS_RECIPE" ]]; then
		return 0
	fi
	local mirror dir="$E2E_CACHE/rootfs/postgres-$POSTGRES_VERSION.tree"
	mirror="$(debian_mirror)"
	rm -rf "$dir"
	mkdir -p "$dir"
	e2e_log "debootstrap bookworm from $mirror (a few minutes, once)"
	e2e_quiet "$LOGS/debootstrap.log" debootstrap --variant=minbase bookworm "$dir" "$mirror"
	printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
	chmod 755 "$dir/usr/sbin/policy-rc.d"
	mkdir -p "$dir/etc/postgresql-common/createcluster.d"
	echo "create_main_cluster = false" >"$dir/etc/postgresql-common/createcluster.d/e2e.conf"
	cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
	cp /etc/resolv.conf "$dir/etc/resolv.conf"
	# The postgres user before the package makes one (its postinst keeps an existing system
	# user): uid and gid 999, as the official image has them and the chart's default says.
	chroot "$dir" groupadd --system --gid 999 postgres
	chroot "$dir" useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --no-create-home \
		--shell /bin/bash --comment "PostgreSQL administrator" postgres
	mount -t proc proc "$dir/proc"
	local rc=0
	{ e2e_quiet "$LOGS/debootstrap-apt.log" chroot "$dir" apt-get update -qq &&
		e2e_quiet "$LOGS/debootstrap-apt.log" chroot "$dir" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends \
			"postgresql-$POSTGRES_VERSION" "postgresql-client-$POSTGRES_VERSION"; } || rc=$?
	umount "$dir/proc"
	((rc == 0)) || e2e_die "apt-get install postgresql-$POSTGRES_VERSION in the debootstrap tree"
	chroot "$dir" apt-get clean
	rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir/etc/resolv.conf"
	: >"$dir/etc/resolv.conf"
	tar --numeric-owner --xattrs -C "$dir" -cf "$out.tmp" .
	mv "$out.tmp" "$out"
	echo "$ROOTFS_RECIPE" >"$out.stamp"
	rm -rf "$dir"
	e2e_log "root file system $out ($(du -h "$out" | cut -f1))"
}

image_postgres() {
	rootfs_postgres
	local rootfs="$E2E_CACHE/rootfs/postgres-$POSTGRES_VERSION.tar"
	stale "$IMAGES/postgres.tar" "$rootfs" || return 0
	"$TOOLS/rootfsimage" -o "$IMAGES/postgres.tar" -name "$POSTGRES_IMAGE_REPO:$POSTGRES_VERSION" \
		-layer "$rootfs" \
		-env "PATH=/usr/lib/postgresql/$POSTGRES_VERSION/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		-env LANG=C.UTF-8 -cmd /bin/bash
	e2e_log "image $POSTGRES_IMAGE_REPO:$POSTGRES_VERSION ($(du -h "$IMAGES/postgres.tar" | cut -f1))"
}

image_project() {
	e2e_quiet "$LOGS/make-images.log" make -C "$REPO" images
	grep '^==>' "$LOGS/make-images.log" >&2 || true
}

main() {
	e2e_require_root
	mkdir -p "$IMAGES" "$LOGS" "$E2E_CACHE/rootfs"
	local t=$SECONDS
	build_tools
	image_pause
	image_busybox
	image_sidecar csi-provisioner "$PROVISIONER_VERSION"
	image_sidecar csi-snapshotter "$SNAPSHOTTER_VERSION"
	e2e_log "pause, busybox, sidecars: $((SECONDS - t)) s"
	t=$SECONDS
	image_postgres
	e2e_log "postgres: $((SECONDS - t)) s"
	t=$SECONDS
	image_project
	e2e_log "project images: $((SECONDS - t)) s"
}

if [[ $# -eq 0 ]]; then
	main
else
	# images.sh NAME...: only those (pause busybox sidecars postgres project).
	e2e_require_root
	mkdir -p "$IMAGES" "$LOGS" "$E2E_CACHE/rootfs"
	build_tools
	for what in "$@"; do
		case $what in
		pause) image_pause ;;
		busybox) image_busybox ;;
		sidecars)
			image_sidecar csi-provisioner "$PROVISIONER_VERSION"
			image_sidecar csi-snapshotter "$SNAPSHOTTER_VERSION"
			;;
		postgres) image_postgres ;;
		project) image_project ;;
		*) e2e_die "unknown image set $what (pause busybox sidecars postgres project)" ;;
		esac
	done
fi
