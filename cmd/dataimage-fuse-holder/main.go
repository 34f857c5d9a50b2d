// Command dataimage-fuse-holder keeps the FUSE connections of the node's exports open while the
// process that serves them restarts. See `dataimage-fuse-holder --help`.
package main

import (
	"os"

	"github.com/dataimage/dataimage/cmd/dataimage-fuse-holder/app"
)

func main() { os.Exit(app.Main(os.Args[1:], os.Stderr)) }
