// Command gen writes deploy/ from the chart: `make manifests` runs it as
//
//	go run ./deploy/gen -chart charts/dataimage -out deploy
//
// It renders the chart with its default values (helm template, release dataimage, namespace
// dataimage-system), writes one file per template, namespace.yaml and kustomization.yaml, and
// removes the files it wrote before that it no longer writes. deploy/crd/ is controller-gen's.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dataimage/dataimage/deploy/manifest"
	"github.com/dataimage/dataimage/internal/atomicfile"
)

func main() {
	chart := flag.String("chart", "charts/dataimage", "the chart's directory")
	out := flag.String("out", "deploy", "the directory to write")
	helm := flag.String("helm", "", "the helm binary (default: found on PATH, GOBIN or GOPATH/bin)")
	flag.Parse()
	if err := run(*chart, *out, *helm); err != nil {
		fmt.Fprintf(os.Stderr, "deploy/gen: %v\n", err)
		os.Exit(1)
	}
}

func run(chart, out, helm string) error {
	if helm == "" {
		helm = manifest.FindTool("helm")
	}
	if helm == "" {
		return fmt.Errorf("helm not found: run hack/install-k8s-tools.sh")
	}
	files, err := manifest.GenerateDeploy(context.Background(), manifest.Render{
		Helm: helm, Chart: chart, Release: manifest.DefaultRelease,
		Namespace: manifest.DefaultNamespace, KubeVersion: manifest.DefaultKubeVersion,
	})
	if err != nil {
		return err
	}
	old, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil {
		return err
	}
	for _, p := range old {
		if _, keep := files[filepath.Base(p)]; keep {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.HasPrefix(b, []byte(manifest.GeneratedHeader)) {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
	}
	for name, b := range files {
		if err := atomicfile.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
