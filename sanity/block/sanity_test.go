package block

import (
	"testing"

	"github.com/dataimage/dataimage/sanity"
)

// TestSanity runs every csi-sanity spec with block access.
func TestSanity(t *testing.T) {
	sanity.Run(t, sanity.Mode{AccessType: "block", FSType: "ext4"})
}
