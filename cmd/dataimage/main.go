// Command dataimage builds data images (frozen snapshots of whole database instances) from
// backups and serves writable clones of them on this machine. See `dataimage --help`.
package main

import (
	"os"

	"github.com/dataimage/dataimage/cmd/dataimage/app"
)

func main() { os.Exit(app.Execute(os.Args[1:], os.Stdout, os.Stderr)) }
