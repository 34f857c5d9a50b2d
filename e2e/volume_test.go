//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// TestVolumeSnapshotClone: the CSI path without the DataImage controller. A blank volume of the
// dataimage class mounted in a pod (provisioner, kubelet staging and publishing, the plugin's
// export and mkfs), a VolumeSnapshot of it (snapshot-controller and the node's snapshotter), a
// claim cloned from the snapshot: the clone has the data written before the snapshot, not the
// data written after it, and its own writes do not reach the source.
func TestVolumeSnapshotClone(t *testing.T) {
	needCluster(t)
	ns := newNamespace(t, "volume")

	create(t, claim(ns, "source", "256Mi", "", false))
	create(t, busyboxPod(ns, "source", "source", false))
	waitPodReady(t, ns, "source")
	execIn(t, ns, "source", busyboxContainer, "sh", "-c",
		"echo before-snapshot > /data/file && sync /data/file")

	snapshotOf(t, ns, "snap", "source")
	execIn(t, ns, "source", busyboxContainer, "sh", "-c", "echo after-snapshot > /data/file && sync /data/file")

	create(t, claim(ns, "clone", "256Mi", "snap", false))
	create(t, busyboxPod(ns, "clone", "clone", false))
	waitPodReady(t, ns, "clone")
	if got := execIn(t, ns, "clone", busyboxContainer, "cat", "/data/file"); got != "before-snapshot" {
		t.Errorf("the clone reads %q, want the data of the snapshot, %q", got, "before-snapshot")
	}
	execIn(t, ns, "clone", busyboxContainer, "sh", "-c", "echo written-in-clone > /data/file && sync /data/file")
	if got := execIn(t, ns, "source", busyboxContainer, "cat", "/data/file"); got != "after-snapshot" {
		t.Errorf("the source reads %q after a write in its clone, want %q", got, "after-snapshot")
	}
}

// TestRawBlock: a raw block claim (volumeMode Block) attached to a pod as a device: its size is
// the claim's, data written through the device reads back, and a second pod of a clone of its
// snapshot reads the same bytes.
func TestRawBlock(t *testing.T) {
	needCluster(t)
	ns := newNamespace(t, "block")

	create(t, claim(ns, "raw", "64Mi", "", true))
	create(t, busyboxPod(ns, "raw", "raw", true))
	waitPodReady(t, ns, "raw")
	if got := execIn(t, ns, "raw", busyboxContainer, "blockdev", "--getsize64", blockDevicePath); got != "67108864" {
		t.Errorf("block device size %s, want 67108864 (64Mi)", got)
	}
	// 1 MiB of a known pattern at offset 3 MiB, written through the device and read back.
	const pattern = "dd if=/dev/zero bs=1048576 count=1 2>/dev/null | tr '\\000' 'D'"
	execIn(t, ns, "raw", busyboxContainer, "sh", "-c",
		pattern+" | dd of="+blockDevicePath+" bs=1048576 seek=3 conv=fsync 2>/dev/null")
	want := execIn(t, ns, "raw", busyboxContainer, "sh", "-c", pattern+" | md5sum")
	read := "dd if=" + blockDevicePath + " bs=1048576 skip=3 count=1 2>/dev/null | md5sum"
	if got := execIn(t, ns, "raw", busyboxContainer, "sh", "-c", read); got != want {
		t.Errorf("read back %q, want %q", got, want)
	}
	// Unwritten blocks read as zeros.
	zeros := execIn(t, ns, "raw", busyboxContainer, "sh", "-c", "dd if=/dev/zero bs=1048576 count=1 2>/dev/null | md5sum")
	unwritten := "dd if=" + blockDevicePath + " bs=1048576 skip=10 count=1 2>/dev/null | md5sum"
	if got := execIn(t, ns, "raw", busyboxContainer, "sh", "-c", unwritten); got != zeros {
		t.Errorf("an unwritten MiB reads %q, want zeros %q", got, zeros)
	}

	snapshotOf(t, ns, "raw-snap", "raw")
	create(t, claim(ns, "raw-clone", "64Mi", "raw-snap", true))
	create(t, busyboxPod(ns, "raw-clone", "raw-clone", true))
	waitPodReady(t, ns, "raw-clone")
	if got := execIn(t, ns, "raw-clone", busyboxContainer, "sh", "-c", read); got != want {
		t.Errorf("the clone reads %q at 3 MiB, want the source's %q", got, want)
	}
	if out := execIn(t, ns, "raw-clone", busyboxContainer, "sh", "-c", "mount | grep "+blockDevicePath+" || true"); strings.TrimSpace(out) != "" {
		t.Errorf("the raw block device is mounted in the pod: %s", out)
	}
}
