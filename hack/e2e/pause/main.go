// Command pause is the sandbox ("pause") container of the e2e cluster (hack/e2e): it holds a
// pod's namespaces, reaps the zombies re-parented to it, and exits on SIGINT or SIGTERM. The
// harness builds it static and wraps it in an OCI image with hack/ociimage, because no pause
// image can be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap waits for every child that has exited, without blocking.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
