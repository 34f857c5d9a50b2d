// Package kubetest runs tests against a real Kubernetes API server: envtest's kube-apiserver
// and etcd (installed by hack/install-envtest.sh), with the project's CRDs (deploy/crd and the
// snapshot API's) and the chart's RBAC of the controller (deploy/controller-rbac.yaml). A
// controller under test impersonates the controller's ServiceAccount, so a permission the chart
// does not grant fails the test. There is no kube-controller-manager, kubelet or scheduler:
// tests play their parts on the objects, as the admin.
//
// For tests only.
//
// It must not know the product's controllers: tests bring their own.
package kubetest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/dataimage/dataimage/deploy/manifest"
)

// Assets is where hack/install-envtest.sh installs kube-apiserver and etcd; Main uses it when
// KUBEBUILDER_ASSETS is unset.
const Assets = "/usr/local/lib/dataimage/envtest/v1.36.1"

// Env is the API server of a test binary.
type Env struct {
	// Skip says why the API server is not running (Need skips); empty when it runs.
	Skip string
	// Admin is a direct client with every right, with the scheme given to Main.
	Admin client.Client
	// AdminConfig is the admin's configuration; ControllerConfig impersonates the chart's
	// ServiceAccount of the controller.
	AdminConfig, ControllerConfig *rest.Config
	// ControllerKubeconfig is ControllerConfig as a kubeconfig file's content, for a command's
	// --kubeconfig; ControllerNamespace is the ServiceAccount's namespace.
	ControllerKubeconfig []byte
	ControllerNamespace  string
}

// Main starts the API server, runs the tests, stops the server and returns the exit code, for
// TestMain: os.Exit(kubetest.Main(m, "../..", scheme, &env)). root is the repository's root
// relative to the test's package. When the server cannot start, env.Skip says why, and the
// run fails under CI=true (where the binaries must be installed). While fuzzing nothing is
// started.
func Main(m *testing.M, root string, scheme *runtime.Scheme, env *Env) int {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// The fuzzing coordinator and each worker run TestMain: no API server needed.
		env.Skip = "not started while fuzzing"
		return m.Run()
	}
	stop, err := start(root, scheme, env)
	if err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "envtest: %v (CI=true: the envtest binaries must be installed, hack/install-envtest.sh)\n", err)
			if stop != nil {
				_ = stop()
			}
			return 1
		}
		env.Skip = err.Error()
	}
	code := m.Run()
	if stop != nil {
		if err := stop(); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: stop: %v\n", err)
		}
	}
	return code
}

// Need skips t when the API server is not running.
func (e *Env) Need(t testing.TB) {
	t.Helper()
	if e.Skip != "" {
		t.Skipf("envtest: %s (run hack/install-envtest.sh)", e.Skip)
	}
}

func start(root string, scheme *runtime.Scheme, env *Env) (func() error, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		os.Setenv("KUBEBUILDER_ASSETS", Assets)
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("no %s in KUBEBUILDER_ASSETS=%s", bin, assets)
		}
	}
	te := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "deploy/crd"), filepath.Join(root, "charts/dataimage/files/snapshot-crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := te.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", assets, err)
	}
	if err := setup(root, scheme, cfg, te.KubeConfig, env); err != nil {
		return te.Stop, err
	}
	return te.Stop, nil
}

// setup makes the admin client and installs the chart's RBAC of the controller; kubeconfig is
// the admin's.
func setup(root string, scheme *runtime.Scheme, cfg *rest.Config, kubeconfig []byte, env *Env) error {
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	docs, err := manifest.ReadFile(filepath.Join(root, "deploy/controller-rbac.yaml"))
	if err != nil {
		return err
	}
	objs, err := manifest.DecodeAll(manifest.Scheme(), docs)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var sa *corev1.ServiceAccount
	for _, o := range objs {
		obj := o.Value.(client.Object)
		if s, ok := obj.(*corev1.ServiceAccount); ok {
			sa = s
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.Namespace}}
			if err := admin.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create namespace %s: %w", s.Namespace, err)
			}
		}
		if err := admin.Create(ctx, obj); err != nil {
			return fmt.Errorf("create %s: %w", o, err)
		}
	}
	if sa == nil {
		return errors.New("deploy/controller-rbac.yaml has no ServiceAccount")
	}
	user := fmt.Sprintf("system:serviceaccount:%s:%s", sa.Namespace, sa.Name)
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.Namespace, "system:authenticated"}
	ctrlCfg := rest.CopyConfig(cfg)
	ctrlCfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	kc, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return fmt.Errorf("envtest's kubeconfig: %w", err)
	}
	for _, ai := range kc.AuthInfos {
		ai.Impersonate, ai.ImpersonateGroups = user, groups
	}
	ctrlKubeconfig, err := clientcmd.Write(*kc)
	if err != nil {
		return fmt.Errorf("the controller's kubeconfig: %w", err)
	}
	env.Admin, env.AdminConfig, env.ControllerConfig = admin, cfg, ctrlCfg
	env.ControllerKubeconfig, env.ControllerNamespace = ctrlKubeconfig, sa.Namespace
	return nil
}

// Start runs mgr until t ends or the returned stop is called; stop waits for the manager to
// end and fails t if it ended with an error.
func Start(t testing.TB, mgr manager.Manager) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Namespace makes a namespace for t (named di-test-<random>, with labels), deleted when t ends,
// and returns its name.
func (e *Env) Namespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "di-test-", Labels: labels}}
	if err := e.Admin.Create(t.Context(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Admin.Delete(context.Background(), ns) })
	return ns.Name
}

// Eventually polls cond until it holds, or fails t after timeout with what cond last said.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// HasEvent waits up to timeout for an Event in namespace ns with reason about the object named
// name, and returns its note.
func (e *Env) HasEvent(t testing.TB, ns, name, reason string, timeout time.Duration) string {
	t.Helper()
	var note string
	Eventually(t, fmt.Sprintf("event %s about %s", reason, name), timeout, func() (bool, string) {
		var list eventsv1.EventList
		if err := e.Admin.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, ev := range list.Items {
			if ev.Regarding.Name == name && ev.Reason == reason {
				note = ev.Note
				return true, ""
			}
			seen = append(seen, ev.Regarding.Name+":"+ev.Reason)
		}
		return false, fmt.Sprintf("events: %v", seen)
	})
	return note
}
