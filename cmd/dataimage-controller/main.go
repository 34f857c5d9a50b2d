// Command dataimage-controller is the DataImage controller: it builds data images declared as
// DataImage resources and publishes them as VolumeSnapshots. See `dataimage-controller --help`.
package main

import (
	"os"

	"github.com/dataimage/dataimage/cmd/dataimage-controller/app"
)

func main() { os.Exit(app.Main(os.Args[1:], os.Stderr)) }
