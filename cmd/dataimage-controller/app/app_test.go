package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dataimage/dataimage/controllers/dataimage"
	"github.com/dataimage/dataimage/deploy/manifest"
	"github.com/dataimage/dataimage/internal/kubetest"
)

// env is the test binary's API server (internal/kubetest: the CRDs and the chart's RBAC of the
// controller installed).
var env kubetest.Env

func TestMain(m *testing.M) {
	scheme, err := dataimage.NewScheme()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(kubetest.Main(m, "../../..", scheme, &env))
}

// chartArgs returns the controller container's arguments in deploy/ (the chart with its
// defaults).
func chartArgs(t *testing.T) []string {
	t.Helper()
	docs, err := manifest.ReadFile("../../../deploy/controller-deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.DecodeAll(manifest.Scheme(), docs)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if d, ok := o.Value.(*appsv1.Deployment); ok {
			for _, c := range d.Spec.Template.Spec.Containers {
				if c.Name == "controller" {
					return append(c.Command, c.Args...)
				}
			}
		}
	}
	t.Fatal("no controller container in deploy/controller-deployment.yaml")
	return nil
}

// chartConfig returns the ControllerConfig file of deploy/'s ConfigMap.
func chartConfig(t *testing.T) string {
	t.Helper()
	docs, err := manifest.ReadFile("../../../deploy/controller-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.DecodeAll(manifest.Scheme(), docs)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if cm, ok := o.Value.(*corev1.ConfigMap); ok && cm.Data["config.yaml"] != "" {
			return cm.Data["config.yaml"]
		}
	}
	t.Fatal("no config.yaml in deploy/controller-config.yaml")
	return ""
}

func TestChartArgs(t *testing.T) {
	args := chartArgs(t)
	c, err := parse(args, io.Discard)
	if err != nil {
		t.Fatalf("the chart's arguments %q: %v", args, err)
	}
	want := Config{ConfigFile: "/etc/dataimage/config.yaml", LeaderElect: true, MetricsAddr: ":8080", ProbeAddr: ":8081",
		ProgressInterval: 3 * time.Second, Verbosity: 0, LogFormat: "json", RegistryGCInterval: time.Hour}
	if c != want {
		t.Errorf("the chart's arguments give %+v, want %+v", c, want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--config is required"},
		{[]string{"--config=c", "--log-format=xml"}, "--log-format must be text or json"},
		{[]string{"--config=c", "--v=-1"}, "--v must not be negative"},
		{[]string{"--config=c", "--progress-interval=0s"}, "--progress-interval must be positive"},
		{[]string{"--config=c", "--registry-gc-interval=-1m"}, "--registry-gc-interval must not be negative"},
		{[]string{"--config=c", "extra"}, "unexpected arguments: extra"},
		{[]string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
	} {
		_, err := parse(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse(%q) = %v, want %q", tc.args, err, tc.want)
		}
	}
	var out bytes.Buffer
	if code := Main([]string{"--log-format=xml", "--config=c"}, &out); code != 2 || !strings.Contains(out.String(), "dataimage-controller: --log-format") {
		t.Errorf("Main with a bad flag: code %d, output %q", code, out.String())
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := Main([]string{"--help"}, &out); code != 0 {
		t.Errorf("--help exits %d", code)
	}
	for _, want := range []string{"Usage: dataimage-controller --config FILE", "VolumeSnapshot", "-config", "-leader-elect",
		"-metrics-bind-address", "-health-probe-bind-address", "-v ", "-log-format", "-kubeconfig"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRunBadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: dataimage.io/v1alpha1\nkind: ControllerConfig\nengines: {}\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Run(t.Context(), Config{ConfigFile: path}, NewLogger(Config{}, io.Discard))
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("Run with a bad configuration: %v", err)
	}
	err = Run(t.Context(), Config{ConfigFile: filepath.Join(dir, "missing.yaml")}, NewLogger(Config{}, io.Discard))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Run without a configuration file: %v", err)
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRun(t *testing.T) {
	// The whole command against a real API server, as the chart runs it: the chart's
	// configuration, and only the chart's RBAC (the command impersonates the controller's
	// ServiceAccount), with leader election in the chart's namespace; probes and metrics.
	env.Need(t)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	config := filepath.Join(dir, "config.yaml")
	asController, namespace := env.ControllerKubeconfig, env.ControllerNamespace
	if err := os.WriteFile(kubeconfig, asController, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(config, []byte(chartConfig(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics, probes := freePort(t), freePort(t)
	args := []string{"--config=" + config, "--kubeconfig=" + kubeconfig, "--leader-elect", "--leader-election-namespace=" + namespace,
		"--metrics-bind-address=" + metrics, "--health-probe-bind-address=" + probes, "--v=1", "--log-format=json"}
	c, err := parse(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, c, NewLogger(c, &logs)) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	defer stop()

	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, path := range []string{"/healthz", "/readyz"} {
		for {
			code, body := get("http://" + probes + path)
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d %s\nlogs:\n%s", path, code, body, logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	admin := env.Admin
	lease := &coordinationv1.Lease{}
	for {
		err := admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: LeaderElectionID}, lease)
		if err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader: %v\nlogs:\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The leader election's Event about the Lease (core Events, in the controller's namespace:
	// the Role grants them there).
	for {
		var events corev1.EventList
		err := admin.List(ctx, &events, client.InNamespace(namespace))
		if err == nil && slices.ContainsFunc(events.Items, func(e corev1.Event) bool {
			return e.Reason == "LeaderElection" && e.InvolvedObject.Name == LeaderElectionID
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no LeaderElection Event in %s (%v)\nlogs:\n%s", namespace, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := logs.String(); strings.Contains(out, "forbidden") {
		t.Errorf("the controller was refused something under the chart's RBAC:\n%s", out)
	}
	code, body := get("http://" + metrics + "/metrics")
	for _, want := range []string{`dataimage_controller_images{phase="Ready"} 0`, `dataimage_controller_builds_started_total{engine="postgres"} 0`,
		`dataimage_controller_images_expired_total 0`, `controller_runtime_reconcile_total{controller="dataimage"`,
		// Both reconcilers run: the resizer's counter and its controller-runtime series.
		`dataimage_controller_volume_expansions_total 0`, `controller_runtime_reconcile_total{controller="volume-expansion"`} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
	stop()
	if out := logs.String(); !strings.Contains(out, `"msg":"dataimage-controller starting"`) || !strings.Contains(out, `"leaderElection":true`) {
		t.Errorf("logs are not JSON with the start message:\n%s", out)
	}
}
