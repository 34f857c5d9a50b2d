#!/usr/bin/env bash
# install-seaweedfs.sh builds SeaweedFS's server, weed, into
# /usr/local/lib/dataimage/seaweedfs/weed: the real S3 server that the export
# set tests run against (internal/s3test starts it on loopback). It is
# idempotent: when the pinned version is there it does nothing and prints
# nothing.
#
# Why built from source: SeaweedFS is a Go module, so the Go module proxy
# brings its source and every dependency, pinned by its go.sum; no prebuilt
# binary is downloaded. `go install module@version` refuses it (its go.mod has
# replace directives), so the module is copied out of the module cache and
# built there. The build takes several minutes; its result is kept, and
# rebuilt only when SEAWEEDFS_VERSION changes.
set -euo pipefail

# SEAWEEDFS_VERSION is the pinned module version of github.com/seaweedfs/seaweedfs
# (SeaweedFS 4.53, checked to build with Go 1.26 and to pass internal/s3test).
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
DEST="${SEAWEEDFS_DIR:-/usr/local/lib/dataimage/seaweedfs}"
GO="${GO:-go}"

log() { echo "install-seaweedfs: $*" >&2; }

if [[ -x "$DEST/weed" && "$(cat "$DEST/version" 2>/dev/null)" == "$SEAWEEDFS_VERSION" ]]; then
	exit 0
fi
if ! mkdir -p "$DEST" 2>/dev/null || [[ ! -w "$DEST" ]]; then
	log "cannot write $DEST (not root?); the S3 tests will be skipped"
	exit 0
fi

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
log "building SeaweedFS $SEAWEEDFS_VERSION into $DEST/weed (several minutes)"
moddir="$(cd "$work" && GOFLAGS=-mod=mod "$GO" mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$moddir" || ! -d "$moddir" ]]; then
	log "go mod download github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION failed"
	exit 1
fi
cp -r "$moddir" "$work/src"
chmod -R u+w "$work/src"
build_log="$work/build.log"
if ! (cd "$work/src" && GOFLAGS=-mod=mod "$GO" build -o "$work/weed" ./weed) >"$build_log" 2>&1; then
	tail -50 "$build_log" >&2
	log "go build of weed failed"
	exit 1
fi
# Replace atomically: a test that starts weed meanwhile finds the old binary or the new one.
install -m 0755 "$work/weed" "$DEST/.weed.new"
mv -f "$DEST/.weed.new" "$DEST/weed"
echo "$SEAWEEDFS_VERSION" >"$DEST/.version.new"
mv -f "$DEST/.version.new" "$DEST/version"
log "installed $("$DEST/weed" version 2>/dev/null | head -1)"
