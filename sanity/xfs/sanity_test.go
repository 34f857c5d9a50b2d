// Package xfs runs the CSI conformance suite (package sanity) with mount access and xfs, chosen
// through StorageClass-like CreateVolume parameters as a CO other than Kubernetes passes them. It
// is a package of its own so that `go test` runs it as its own process, in parallel with the
// other modes.
package xfs

import (
	"testing"

	"github.com/dataimage/dataimage/sanity"
)

// TestSanity runs every csi-sanity spec with mount access and xfs file systems, chosen the way
// a CO other than Kubernetes chooses them: the node's default is ext4, and every CreateVolume
// carries StorageClass-like parameters as given — csi.storage.k8s.io/fstype xfs, the PV/PVC
// metadata keys and secret references (csi-sanity's --csi.testvolumeparameters). Every volume
// the run stages must be xfs: the file system reaches NodeStageVolume through the volume
// context CreateVolume returns.
func TestSanity(t *testing.T) {
	sanity.Run(t, sanity.Mode{
		AccessType: "mount",
		FSType:     "ext4",
		Parameters: map[string]string{
			"csi.storage.k8s.io/fstype":                       "xfs",
			"csi.storage.k8s.io/pvc/name":                     "sanity",
			"csi.storage.k8s.io/pvc/namespace":                "default",
			"csi.storage.k8s.io/pv/name":                      "pvc-sanity",
			"csi.storage.k8s.io/provisioner-secret-name":      "sanity-secret",
			"csi.storage.k8s.io/provisioner-secret-namespace": "default",
			"csi.storage.k8s.io/node-stage-secret-name":       "sanity-secret",
			"csi.storage.k8s.io/node-stage-secret-namespace":  "default",
		},
		WantFSType: "xfs",
	})
}
