//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// pgbenchBalanced is true when pgbench's balance invariant holds: every delta went to an
// account, a branch and a teller.
const pgbenchBalanced = `SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
	AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
	AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)`

// TestRestartsUnderPgbench: a StatefulSet of two PostgreSQL clones of a data image runs pgbench
// while `helm upgrade` rolls the plugin's DaemonSet (a new plugin pod replaces the old one) and
// the node's data plane is killed (SIGKILL; the kubelet restarts its container, which adopts the
// exports the FUSE holder kept). pgbench exits 0 with no failed transaction on both, the
// balance invariant holds, and no database pod restarted or was replaced. The chart is then
// upgraded back to its values.
func TestRestartsUnderPgbench(t *testing.T) {
	needCluster(t)
	helm, chart := os.Getenv("E2E_HELM"), os.Getenv("E2E_CHART")
	if helm == "" || chart == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("E2E_HELM and E2E_CHART are not set (hack/e2e/e2e.sh sets them)")
		}
		t.Skip("E2E_HELM and E2E_CHART are not set (hack/e2e/e2e.sh sets them)")
	}
	ns := newNamespace(t, "restart")
	create(t, dataImage(ns, "bench", makeBackup(t, "bench"), "0"))
	img, _ := waitImageReady(t, ns, "bench")
	const replicas = 2
	create(t, postgresStatefulSet(ns, replicas, img.Status.NodeName, img.Status.VolumeSnapshotName))
	pods := make([]string, replicas)
	uids := map[string]types.UID{}
	for i := range pods {
		pods[i] = fmt.Sprintf("pg-%d", i)
		p := waitPodReady(t, ns, pods[i])
		uids[pods[i]] = p.UID
		execIn(t, ns, pods[i], postgresContainer, "pgbench", "-h", postgresSocketDir, "-U", "postgres", "-i", "-s", "2", "-q", "postgres")
	}

	// pgbench on both, long enough for the upgrade and the kill to happen while it runs.
	const runtime = 150 * time.Second
	type run struct {
		out  bytes.Buffer
		done chan error
	}
	runs := map[string]*run{}
	for _, p := range pods {
		r := &run{done: make(chan error, 1)}
		cmd := exec.Command(cfg.kubectl, "-n", ns, "exec", p, "-c", postgresContainer, "--",
			"pgbench", "-h", postgresSocketDir, "-U", "postgres", "-n", "-c", "4", "-T", strconv.Itoa(int(runtime.Seconds())), "postgres")
		cmd.Stdout, cmd.Stderr = &r.out, &r.out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { r.done <- cmd.Wait() }()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		runs[p] = r
	}
	start := time.Now()
	time.Sleep(10 * time.Second)

	// helm upgrade: a new plugin log level changes the plugin DaemonSet's template, which rolls.
	upgrade := func(extra ...string) {
		t.Helper()
		args := append([]string{"--kubeconfig", cfg.kubeconfig, "upgrade", cfg.release, chart, "--namespace", cfg.namespace,
			"-f", cfg.state + "/values.yaml"}, extra...)
		out, err := exec.Command(helm, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if out, err := kubectl(t, "-n", cfg.namespace, "rollout", "status", "daemonset/"+cfg.release+"-node", "--timeout=180s"); err != nil {
			t.Fatalf("the plugin's DaemonSet does not roll out: %v\n%s", err, out)
		}
	}
	node := img.Status.NodeName
	oldPlugin := componentPod(t, "node", node)
	upgrade("--set", "node.logLevel=5")
	t.Cleanup(func() { upgrade() })
	newPlugin := componentPod(t, "node", node)
	if newPlugin.UID == oldPlugin.UID {
		t.Fatalf("helm upgrade did not replace the plugin pod %s", oldPlugin.Name)
	}
	t.Logf("helm upgrade replaced the plugin pod %s by %s at %v", oldPlugin.Name, newPlugin.Name, time.Since(start).Round(time.Second))

	// Kill the data plane: its container restarts in the same pod.
	dp := componentPod(t, "dataplane", node)
	restarts := dp.Status.ContainerStatuses[0].RestartCount
	pid := podProcess(t, dp, "^/usr/local/bin/dataimage-dataplane( |$)") // the image's entrypoint
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "the data plane's container to restart and be ready", func(c context.Context) (bool, string, error) {
		var p corev1.Pod
		if err := kube.Get(c, client.ObjectKeyFromObject(dp), &p); err != nil {
			return false, "", err
		}
		if len(p.Status.ContainerStatuses) == 0 {
			return false, "no container status", nil
		}
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount > restarts && cs.Ready, podState(&p), nil
	})
	t.Logf("the data plane was killed and its container restarted at %v", time.Since(start).Round(time.Second))
	if elapsed := time.Since(start); elapsed > runtime-10*time.Second {
		t.Fatalf("the upgrade and the kill took %v: pgbench (%v) ended before them", elapsed, runtime)
	}

	for _, p := range pods {
		r := runs[p]
		var err error
		select {
		case err = <-r.done:
		case <-time.After(runtime + 3*time.Minute):
			t.Fatalf("pgbench in %s did not finish", p)
		}
		if err != nil {
			t.Fatalf("pgbench in %s: %v\n%s", p, err, r.out.String())
		}
		if !strings.Contains(r.out.String(), "number of failed transactions: 0 ") {
			t.Errorf("pgbench in %s failed transactions:\n%s", p, r.out.String())
		}
		t.Logf("pgbench in %s across the plugin's upgrade and the data plane's kill:\n%s", p, r.out.String())
		if got := psql(t, ns, p, pgbenchBalanced); got != "t" {
			t.Errorf("%s: pgbench's balance invariant: %q", p, got)
		}
		var pod corev1.Pod
		if err := kube.Get(ctx(t), client.ObjectKey{Namespace: ns, Name: p}, &pod); err != nil {
			t.Fatal(err)
		}
		if pod.UID != uids[p] {
			t.Errorf("%s was replaced", p)
		}
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.RestartCount != 0 || !cs.Ready {
				t.Errorf("%s: container %s restarted %d times, ready %v", p, cs.Name, cs.RestartCount, cs.Ready)
			}
		}
	}
}

// podProcess returns the one process of pod whose command line matches pattern (pgrep -f):
// the one of those whose cgroup is the pod's (every node's processes are this machine's).
func podProcess(t *testing.T, pod *corev1.Pod, pattern string) int {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	if err != nil {
		t.Fatalf("no process matches %q: %v", pattern, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		cg, err := os.ReadFile("/proc/" + f + "/cgroup")
		if err != nil {
			continue // gone meanwhile
		}
		// cgroupfs: .../pod<uid>/<container>; the systemd driver writes the UID with _.
		uid := string(pod.UID)
		if strings.Contains(string(cg), "pod"+uid) || strings.Contains(string(cg), "pod"+strings.ReplaceAll(uid, "-", "_")) {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("processes of pod %s matching %q: %v, want one", pod.Name, pattern, pids)
	}
	return pids[0]
}

// componentPod returns the pod of a Dataimage component (node, dataplane, ...) in the chart's
// namespace on node.
func componentPod(t *testing.T, component, node string) *corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := kube.List(ctx(t), &pods, client.InNamespace(cfg.namespace), client.MatchingLabels{"app.kubernetes.io/component": component}); err != nil {
		t.Fatal(err)
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Spec.NodeName == node {
			live = append(live, p)
		}
	}
	if len(live) != 1 {
		t.Fatalf("%d live pods of component %s on %s, want 1", len(live), component, node)
	}
	return &live[0]
}
