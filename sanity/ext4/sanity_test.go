// Package ext4 runs the CSI conformance suite (package sanity) with mount access and the node's
// default file system, ext4. It is a package of its own so that `go test` runs it as its own
// process, in parallel with the other modes.
package ext4

import (
	"testing"

	"github.com/dataimage/dataimage/sanity"
)

// TestSanity runs every csi-sanity spec with mount access and ext4 file systems, the node's
// default: capabilities name no file system and CreateVolume has no parameters. Every volume
// the run stages must be ext4.
func TestSanity(t *testing.T) {
	sanity.Run(t, sanity.Mode{AccessType: "mount", FSType: "ext4", WantFSType: "ext4"})
}
