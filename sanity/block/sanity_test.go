// Package block runs the CSI conformance suite (package sanity) with block access: volumes
// published as raw block devices. It is a package of its own so that `go test` runs it as its own
// process, in parallel with the other modes.
package block

import (
	"testing"

	"github.com/dataimage/dataimage/sanity"
)

// TestSanity runs every csi-sanity spec with block access.
func TestSanity(t *testing.T) {
	sanity.Run(t, sanity.Mode{AccessType: "block", FSType: "ext4"})
}
