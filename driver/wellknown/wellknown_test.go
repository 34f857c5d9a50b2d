package wellknown_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLeaf: the package imports nothing, not even the standard library, so that whoever needs
// the driver's names (the controllers) gets nothing else with them.
func TestLeaf(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if imports := strings.TrimSpace(string(out)); imports != "" {
		t.Errorf("driver/wellknown imports %s; it must import nothing", imports)
	}
}
