// Command dataimage-csi is the Dataimage CSI plugin: Identity, Controller and Node services for
// this node's block store pool. See `dataimage-csi --help`.
package main

import (
	"os"

	"github.com/dataimage/dataimage/cmd/dataimage-csi/app"
)

func main() { os.Exit(app.Main(os.Args[1:], os.Stderr)) }
