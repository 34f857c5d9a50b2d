//go:build e2e

// Package e2e holds the end-to-end tests of Dataimage on a real Kubernetes cluster: the one
// that `make e2e` (hack/e2e) builds on this machine, with Dataimage installed from its chart.
// The harness passes the cluster through the environment (KUBECONFIG, E2E_*); run them with
//
//	hack/e2e/e2e.sh test                  # or: make e2e E2E_PHASES=test
//	E2E_TEST_RUN=TestVolume hack/e2e/e2e.sh test
//
// Without a cluster they skip, except under CI=true, where they fail (CI builds the cluster;
// a skip there would hide a broken harness). The tests share the cluster's one node and pool;
// they run one after another, and the last one (TestZZLeavesNothing, in zz_cleanup_test.go)
// checks that deleting everything left the pool clean and nothing mounted.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	dataimagev1 "github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
)

// config is the cluster the harness started, from the environment.
type config struct {
	kubeconfig      string // KUBECONFIG: the admin's
	kubectl         string // E2E_KUBECTL: the kubectl binary (exec, logs)
	node            string // E2E_NODE_NAME: the first cloning node, where the tests make backups
	namespace       string // E2E_NAMESPACE: where the chart installed Dataimage
	release         string // E2E_RELEASE: the chart's release name
	postgresImage   string // E2E_POSTGRES_IMAGE: Debian with PostgreSQL, the engine image
	postgresVersion string // E2E_POSTGRES_VERSION: its major version
	busyboxImage    string // E2E_BUSYBOX_IMAGE
	state           string // E2E_STATE: the cluster's state directory (backups go there)
	kubeletDir      string // E2E_KUBELET_DIR
	poolPath        string // E2E_POOL_PATH: the node plugin's pool file
	exportDir       string // E2E_EXPORT_STATE_DIR: the plugin's FUSE exports
	// others are the cluster's other cloning nodes (E2E_NODES: NAME=POOL=MOUNTINFO, comma
	// separated); each sees the paths above in a mount namespace of its own.
	others []otherNode
}

// otherNode is a cloning node besides the first.
type otherNode struct {
	name string
	// pool is its pool file as this process sees it.
	pool string
	// mountinfo is /proc/PID/mountinfo of a process in its mount namespace.
	mountinfo string
}

// parseNodes parses E2E_NODES.
func parseNodes(s string) ([]otherNode, error) {
	var nodes []otherNode
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			continue
		}
		f := strings.Split(item, "=")
		if len(f) != 3 || f[0] == "" || !filepath.IsAbs(f[1]) || !filepath.IsAbs(f[2]) {
			return nil, fmt.Errorf("E2E_NODES item %q: want NAME=POOL=MOUNTINFO, both paths absolute", item)
		}
		nodes = append(nodes, otherNode{name: f[0], pool: f[1], mountinfo: f[2]})
	}
	return nodes, nil
}

var (
	cfg     config
	kube    client.Client
	noSetup string // why there is no cluster to test, when there is none
)

func TestMain(m *testing.M) {
	noSetup = setup()
	recordLoops()
	os.Exit(m.Run())
}

func setup() string {
	cfg = config{
		kubeconfig:      os.Getenv("KUBECONFIG"),
		kubectl:         os.Getenv("E2E_KUBECTL"),
		node:            os.Getenv("E2E_NODE_NAME"),
		namespace:       os.Getenv("E2E_NAMESPACE"),
		release:         os.Getenv("E2E_RELEASE"),
		postgresImage:   os.Getenv("E2E_POSTGRES_IMAGE"),
		postgresVersion: os.Getenv("E2E_POSTGRES_VERSION"),
		busyboxImage:    os.Getenv("E2E_BUSYBOX_IMAGE"),
		state:           os.Getenv("E2E_STATE"),
		kubeletDir:      os.Getenv("E2E_KUBELET_DIR"),
		poolPath:        os.Getenv("E2E_POOL_PATH"),
		exportDir:       os.Getenv("E2E_EXPORT_STATE_DIR"),
	}
	for _, v := range []struct{ name, value string }{
		{"KUBECONFIG", cfg.kubeconfig}, {"E2E_KUBECTL", cfg.kubectl}, {"E2E_NODE_NAME", cfg.node},
		{"E2E_NAMESPACE", cfg.namespace}, {"E2E_RELEASE", cfg.release}, {"E2E_POSTGRES_IMAGE", cfg.postgresImage},
		{"E2E_POSTGRES_VERSION", cfg.postgresVersion}, {"E2E_BUSYBOX_IMAGE", cfg.busyboxImage},
		{"E2E_STATE", cfg.state}, {"E2E_KUBELET_DIR", cfg.kubeletDir}, {"E2E_POOL_PATH", cfg.poolPath},
		{"E2E_EXPORT_STATE_DIR", cfg.exportDir},
	} {
		if v.value == "" {
			return fmt.Sprintf("%s is not set: these tests run against the cluster of `make e2e` (hack/e2e/e2e.sh test)", v.name)
		}
	}
	if os.Geteuid() != 0 {
		return "the e2e tests run as root (they make backups with the node's PostgreSQL and look at its mounts)"
	}
	if _, err := exec.LookPath(cfg.kubectl); err != nil {
		return fmt.Sprintf("kubectl %s: %v", cfg.kubectl, err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Sprintf("kubeconfig %s: %v", cfg.kubeconfig, err)
	}
	rc.QPS, rc.Burst = 50, 100
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, snapshotv1.AddToScheme, dataimagev1.AddToScheme} {
		if err := add(scheme); err != nil {
			return fmt.Sprintf("scheme: %v", err)
		}
	}
	if kube, err = client.New(rc, client.Options{Scheme: scheme}); err != nil {
		return fmt.Sprintf("client for %s: %v", cfg.kubeconfig, err)
	}
	if cfg.others, err = parseNodes(os.Getenv("E2E_NODES")); err != nil {
		return err.Error()
	}
	if !filepath.IsAbs(cfg.state) {
		return fmt.Sprintf("E2E_STATE %q: want an absolute path", cfg.state)
	}
	return ""
}

// needCluster skips t when there is no cluster, or fails it under CI=true.
func needCluster(t *testing.T) {
	t.Helper()
	if noSetup == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no e2e cluster under CI=true: %s", noSetup)
	}
	t.Skip(noSetup)
}
