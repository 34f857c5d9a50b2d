package xfs

import (
	"testing"

	"github.com/dataimage/dataimage/sanity"
)

// TestSanity runs every csi-sanity spec with mount access and xfs file systems.
func TestSanity(t *testing.T) {
	sanity.Run(t, sanity.Mode{AccessType: "mount", FSType: "xfs"})
}
