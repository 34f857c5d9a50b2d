// Command dataimage-builder is the image-builder Job's binary: it builds one data image's
// content (a database instance made from an image definition) into a mounted volume, reports
// progress on its output and writes the result to the container's termination message. See
// `dataimage-builder --help`.
package main

import (
	"os"

	"github.com/dataimage/dataimage/cmd/dataimage-builder/app"
)

func main() { os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr)) }
