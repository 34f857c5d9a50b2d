// Package dataplane is a node's data plane: the process that owns the block store pool and
// serves its volumes' I/O to the kernel (the exports), apart from the control planes that
// decide what to create, export and mount — the CSI plugin (package driver) and the local daemon
// (package local). A control plane can crash, restart or be upgraded without touching I/O:
// the exports' servers live here, not there.
//
// What it holds:
//
//   - Store: the data plane's API as the control planes use it — the pool's volumes and
//     snapshots (create, clone, grow, delete, revert, look up, list, diff, stats, health,
//     check) and exports by id (export a volume as a block device, unexport, resize, list,
//     leftovers of an earlier process). *Local implements it in this process over a
//     *blockstore.Pool and an export.Exporter; *Client implements it over the data plane's
//     unix socket, with the same errors (errors.Is matches the blockstore, export and
//     dataplane sentinels across the socket: errors.go).
//   - Server: the API on a unix socket (mode 0600), JSON over HTTP, versioned by path
//     (/v1/), tolerant of fields it does not know (wire.go).
//   - Run: the data plane process (cmd/dataimage-dataplane, and `dataimage dataplane` for the
//     local daemon): a lock per socket, the kernel checks (kernel.go: FUSE request timeouts
//     refused, PR_SET_IO_FLUSHER), the pool recovered, the exports an earlier process left
//     served again where the FUSE holder kept them, with their records (records.go: each
//     export's volume and attrs, kept beside the socket), the API served, and at the end the
//     exports handed over to the next data plane (or, with no holder, their I/O drained) and
//     the pool closed (drain.go).
//
// What it must not know: CSI, Kubernetes, mounts and file systems (mkfs, mount and bind mounts
// stay with the control plane, in its mount namespace: package nodevolume), images, clones and
// database engines. The block devices it makes are global (/dev/loopN): any mount namespace
// that has /dev reaches them.
//
// What survives what: a control plane's death changes nothing here. With a FUSE holder
// (Config.Holder), neither does this process's death: the holder keeps each export's connection,
// the kernel queues its I/O, and the next data plane serves it again (startExports). Without
// one, or once the holder is gone too, this process's death ends its exports' FUSE connections
// (their I/O fails with EIO until the volumes are detached and attached again).
package dataplane
