// Package nodevolume makes a block store volume usable on this node — a mounted file system or
// a bare block device — and undoes it. It is the one place that does so: the CSI node service
// (package driver: NodeStageVolume, NodeUnstageVolume, NodePublishVolume, NodeExpandVolume)
// and the local daemon (package local: builds, clones) both call it.
//
// What it owns:
//
//   - Attach: have the node's data plane export the volume as a kernel block device
//     (dataplane.Exports: the export lives in the data plane process, not in the caller), then,
//     for a file system, make the mount point, make the file system if the device is blank
//     (when asked), and mount it (xfs with nouuid: clones of one image share the file system's
//     UUID), in the caller's mount namespace. A failed Attach leaves nothing it made behind.
//   - Detach: unmount the file system and remove the mount point, then tear the export down.
//     Detach never tears down a device that is still mounted, or whose device node is still
//     bind-mounted (a published block volume), in this mount namespace: ErrBusy.
//   - Adoption: the exports outlive the caller (the data plane serves them), and so do the
//     mounts on their devices. New adopts every export the data plane serves as an attachment
//     of this process, with the mount point and file system the attaching process recorded in
//     the export's attrs: a restarted CSI plugin or local daemon carries on with the volumes
//     its predecessor attached, and their I/O never stopped.
//   - Leftovers: what an earlier data plane left on this node (exports whose server died with
//     it, and where their devices are still mounted). New finds them; Attach and Detach of
//     their id tear them down, under the same rule as Detach. What to do with a leftover is the
//     caller's policy, see below.
//   - The other mounts of an attached volume and its file system: bind mounts (publishing),
//     growth (device, then ext4 or xfs, online), freeze and thaw.
//   - Per-id locks (package internal/keylock): Attach, Detach and Resize of one id are
//     serialized; different ids proceed in parallel.
//
// It uses one k8s.io/mount-utils mounter for everything, made without systemd detection
// (mount.NewWithoutSystemd). mount-utils' default mounter detects systemd on its first mount and
// records the answer in a field without a lock, so concurrent mounts race on it; the mounter
// without systemd never detects, so one mounter serves concurrent calls. Nothing here needs a
// systemd scope: ext4 and xfs on a block device have no helper process that must outlive the
// caller, and the plugin's container has no systemd-run anyway.
//
// Leftovers: the policy is the caller's, because only the caller knows who owns the mount
// points. The CSI node service keeps them (reported INACCESSIBLE by NodeGetVolumeHealth) until
// the kubelet unpublishes and unstages the volume: the staging and target paths are the
// kubelet's, pods may still hold them, and unmounting them behind the kubelet's back would let a
// pod write into the node's root file system. The local daemon owns its mount points and the
// servers that use them: at start it kills the servers on dead exports, unmounts, and detaches
// every leftover (and every adopted attachment of a clone it does not carry on with). The data
// plane can restart under a running Attacher: Leftover asks the data plane, and Attach and
// Detach find an attachment whose export the data plane no longer serves and treat what is left
// of it as a leftover. A data plane that keeps its exports across its own restart (a holder of
// the FUSE connections) will turn leftovers into exports it serves again, which New then
// adopts.
//
// What it must not know: CSI, gRPC, Kubernetes (requests, capabilities, access modes, which path
// is a staging or a target path, error codes), database engines, images and clones, the catalog.
// It knows blockstore volume IDs, the data plane's exports, block devices, mounts and file
// systems.
package nodevolume
