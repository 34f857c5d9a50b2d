// Package kernel tests the plugin through the kernel, over gRPC: file systems on volumes,
// snapshots and clones read back through mounts and block devices, and a plugin killed with
// volumes staged, restarted and cleaned up. The tests need root, /dev/fuse, loop devices,
// mkfs.ext4 and mkfs.xfs; there is no code here besides them.
package kernel
