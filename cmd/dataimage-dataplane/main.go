// Command dataimage-dataplane is the Dataimage data plane: the process that owns this node's
// block store pool and serves its volumes' I/O to the kernel, apart from the CSI plugin and the
// local daemon, which reach it over a unix socket. See `dataimage-dataplane --help`.
package main

import (
	"os"

	"github.com/dataimage/dataimage/cmd/dataimage-dataplane/app"
)

func main() { os.Exit(app.Main(os.Args[1:], os.Stderr)) }
