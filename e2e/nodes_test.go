//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	dataimagev1 "github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/cluster"
	"github.com/dataimage/dataimage/exportset/remote"
)

// cloningNodeLabel selects the nodes the chart's DaemonSets run on.
const cloningNodeLabel = "dataimage.io/cloning-node"

// TestImageOnEveryNode is the multi-node story (docs/kubernetes.md, "Images on every node"): a
// DataImage is built on node A and pushed to the cluster's registry (the S3 server); a
// StatefulSet of three PostgreSQL clones spread over both nodes, so that node B must pull the
// image before its clones; every replica answers the image's query and writes on its own.
// Then node A is lost: its clones go, its pool is wiped (the node's Dataimage pods stopped, the
// pool file removed, the pods started again on an empty pool) and a new clone on A pulls the
// image again and answers. The time from that claim's creation to its pod's readiness is
// logged with its split (pull, then the clone and its mount, then PostgreSQL's start).
func TestImageOnEveryNode(t *testing.T) {
	needCluster(t)
	if len(cfg.others) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("one node: E2E_NODES names no other (hack/e2e/e2e.sh starts two)")
		}
		t.Skip("one node: E2E_NODES names no other")
	}
	reg := openRegistry(t)
	nodeA, nodeB := cfg.node, cfg.others[0].name
	ns := newNamespace(t, "nodes")
	// An image of about 1 GiB of data (the sales table and about 1000 MiB besides), on 2Gi
	// volumes.
	const fillMiB, size = 1000, "2Gi"
	di := dataImage(ns, "sales", makeFilledBackup(t, "sales", fillMiB), "0")
	di.Spec.VolumeSize = ptr.To(resource.MustParse(size))
	create(t, di)
	img, _ := waitImageReady(t, ns, "sales")
	if img.Status.NodeName != nodeA {
		t.Fatalf("the image was built on %s, want %s (its backup's node)", img.Status.NodeName, nodeA)
	}
	img = waitImagePushed(t, ns, "sales")
	t.Logf("image %s pushed from %s: %s", img.Name, nodeA, img.Status.Digest)
	digest, err := exportset.ParseDigest(img.Status.Digest)
	if err != nil {
		t.Fatalf("status.digest: %v", err)
	}
	manifest, _, err := reg.Manifest(ctx(t), digest)
	if err != nil {
		t.Fatalf("the image's manifest in the registry: %v", err)
	}

	// Three replicas, spread over both nodes: B has to pull the image first.
	const replicas = 3
	sts := postgresStatefulSet(ns, replicas, "", img.Status.VolumeSnapshotName)
	sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse(size)
	sts.Spec.Template.Spec.NodeSelector = nil
	sts.Spec.Template.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
		MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
		LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "pg"}},
	}}
	create(t, sts)
	perNode := map[string][]string{}
	for i := range replicas {
		p := waitPodReady(t, ns, fmt.Sprintf("pg-%d", i))
		perNode[p.Spec.NodeName] = append(perNode[p.Spec.NodeName], p.Name)
	}
	t.Logf("replicas per node: %v", perNode)
	if len(perNode[nodeA]) == 0 || len(perNode[nodeB]) == 0 {
		t.Fatalf("replicas per node %v: want some on both %s and %s", perNode, nodeA, nodeB)
	}
	const fillerQuery = "SELECT count(*) FROM filler WHERE length(pad) = 256"
	fillerWant := fmt.Sprint(fillMiB * fillerRowsPerMiB)
	for i := range replicas {
		p := fmt.Sprintf("pg-%d", i)
		if got := psql(t, ns, p, salesQuery); got != salesWant {
			t.Errorf("%s: the image's data reads %q, want %q", p, got, salesWant)
		}
		if got := psql(t, ns, p, fillerQuery); got != fillerWant {
			t.Errorf("%s: the image's filler rows: %q, want %q", p, got, fillerWant)
		}
		psql(t, ns, p, fmt.Sprintf("INSERT INTO sales VALUES (%d, 'only-in-%s')", 2000000+i, p))
	}
	for i := range replicas {
		p := fmt.Sprintf("pg-%d", i)
		want := fmt.Sprintf("%d|%d", salesRows+1, 500500+2000000+i)
		if got := psql(t, ns, p, salesQuery); got != want {
			t.Errorf("%s after every replica wrote a row: %q, want %q (its own row only)", p, got, want)
		}
	}
	waitFor(t, defaultWait, "status.nodes to list both nodes", func(c context.Context) (bool, string, error) {
		var di dataimagev1.DataImage
		if err := kube.Get(c, client.ObjectKey{Namespace: ns, Name: "sales"}, &di); err != nil {
			return false, "", err
		}
		return slices.Contains(di.Status.Nodes, nodeA) && slices.Contains(di.Status.Nodes, nodeB),
			fmt.Sprint(di.Status.Nodes), nil
	})

	// Node A is lost: its clones with it (here: the whole StatefulSet and its claims), then its
	// pool.
	deleteAndWait(t, sts)
	for i := range replicas {
		deleteAndWait(t, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("data-pg-%d", i)}})
	}
	waitFor(t, defaultWait, "the StatefulSet's volumes to be deleted", func(c context.Context) (bool, string, error) {
		var pvs corev1.PersistentVolumeList
		if err := kube.List(c, &pvs); err != nil {
			return false, "", err
		}
		var left []string
		for _, pv := range pvs.Items {
			if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns {
				left = append(left, pv.Name)
			}
		}
		return len(left) == 0, strings.Join(left, ", "), nil
	})
	// The kubelet unstages a volume after its pod is gone, and DeleteVolume does not wait for
	// that (no attach step orders them; the node's status.volumesInUse does not list volumes
	// of a driver without attach): wait until A has no CSI mount, export or loop device left,
	// or the wipe would pull the exports from under an unmount in flight.
	waitFor(t, defaultWait, "node "+nodeA+" to have no volume staged", func(c context.Context) (bool, string, error) {
		left := leftoverMounts(t, "/proc/self/mountinfo") // node A is the first node: the host's mounts
		return len(left) == 0, strings.Join(left, "; "), nil
	})
	wipeNode(t, nodeA)

	// A new clone on A: the image is only in the registry (and on B).
	start := time.Now()
	create(t, claim(ns, "again", size, img.Status.VolumeSnapshotName, false))
	create(t, postgresPod(ns, "again", "again", nodeA))
	pod := waitPodReady(t, ns, "again")
	total := time.Since(start)
	if got := psql(t, ns, "again", salesQuery); got != salesWant {
		t.Fatalf("the clone on %s after its pool was wiped reads %q, want the image's %q", nodeA, got, salesWant)
	}
	if got := psql(t, ns, "again", fillerQuery); got != fillerWant {
		t.Errorf("the clone on %s after its pool was wiped: filler rows %q, want %q", nodeA, got, fillerWant)
	}
	var pvc corev1.PersistentVolumeClaim
	if err := kube.Get(ctx(t), client.ObjectKey{Namespace: ns, Name: "again"}, &pvc); err != nil {
		t.Fatal(err)
	}
	var pv corev1.PersistentVolume
	if err := kube.Get(ctx(t), client.ObjectKey{Name: pvc.Spec.VolumeName}, &pv); err != nil {
		t.Fatal(err)
	}
	pull := pulledSeconds(t, nodeA, img.Status.Digest)
	var stored int64
	for _, c := range manifest.Chunks {
		for _, o := range c.Objects {
			stored += o.Size
		}
	}
	provisioned := pv.CreationTimestamp.Sub(start)
	var ready time.Time
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			ready = c.LastTransitionTime.Time
		}
	}
	t.Logf("first clone on %s, which lacked the image (%d MiB, %d chunks of %d MiB holding data, %d MiB stored): claim created -> pod Ready %v; "+
		"pull %.1f s (the plugin's log), claim -> volume provisioned %v (pull and clone), volume -> pod Ready %v (attach, mount, PostgreSQL's start)",
		nodeA, manifest.Size>>20, len(manifest.Chunks), manifest.ChunkSize>>20, stored>>20, total.Round(100*time.Millisecond), pull,
		provisioned.Round(time.Second), ready.Sub(pv.CreationTimestamp.Time).Round(time.Second))
}

// openRegistry opens the cluster's registry as the chart's values configure it (E2E_REGISTRY_*).
func openRegistry(t *testing.T) *exportset.Registry {
	t.Helper()
	url, endpoint, keys := os.Getenv("E2E_REGISTRY_URL"), os.Getenv("E2E_REGISTRY_ENDPOINT"), os.Getenv("E2E_REGISTRY_CREDENTIALS")
	if url == "" || endpoint == "" || keys == "" {
		t.Fatal("E2E_REGISTRY_URL, E2E_REGISTRY_ENDPOINT and E2E_REGISTRY_CREDENTIALS must be set (hack/e2e/e2e.sh sets them)")
	}
	loc, err := remote.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(keys)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var creds remote.Credentials
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "AWS_ACCESS_KEY_ID":
			creds.AccessKeyID = v
		case "AWS_SECRET_ACCESS_KEY":
			creds.SecretAccessKey = v
		}
	}
	target, err := remote.Open(loc, remote.S3Config{Endpoint: endpoint, Region: "us-east-1", PathStyle: true, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	return exportset.New(target, exportset.Options{})
}

// waitImagePushed waits until a DataImage's condition Pushed is True and its digest is set.
func waitImagePushed(t *testing.T, ns, name string) *dataimagev1.DataImage {
	t.Helper()
	var di dataimagev1.DataImage
	waitFor(t, defaultWait, "DataImage "+name+" pushed", func(c context.Context) (bool, string, error) {
		if err := kube.Get(c, client.ObjectKey{Namespace: ns, Name: name}, &di); err != nil {
			return false, "", err
		}
		cond := meta.FindStatusCondition(di.Status.Conditions, dataimagev1.ConditionPushed)
		if cond == nil {
			return false, "no Pushed condition", nil
		}
		return cond.Status == metav1.ConditionTrue && di.Status.Digest != "", cond.Reason + ": " + cond.Message, nil
	})
	return &di
}

// wipeNode loses node's pool: the chart's pods leave the node (its cloning-node label off),
// the pool file is removed, and the pods come back (label on) to an empty pool.
func wipeNode(t *testing.T, node string) {
	t.Helper()
	pool := cfg.poolPath
	for _, o := range cfg.others {
		if o.name == node {
			pool = o.pool
		}
	}
	label := func(v string) {
		t.Helper()
		if out, err := kubectl(t, "label", "node", node, cloningNodeLabel+"="+v, "--overwrite"); err != nil {
			t.Fatalf("label node %s: %v\n%s", node, err, out)
		}
	}
	label("false")
	t.Cleanup(func() { label("true") })
	waitFor(t, defaultWait, "Dataimage's pods to leave "+node, func(c context.Context) (bool, string, error) {
		var pods corev1.PodList
		if err := kube.List(c, &pods, client.InNamespace(cfg.namespace)); err != nil {
			return false, "", err
		}
		var left []string
		for _, p := range pods.Items {
			if p.Spec.NodeName == node && p.Labels["app.kubernetes.io/component"] != "controller" {
				left = append(left, p.Name)
			}
		}
		return len(left) == 0, strings.Join(left, ", "), nil
	})
	if err := os.Remove(pool); err != nil {
		t.Fatalf("wipe node %s's pool: %v", node, err)
	}
	label("true")
	waitFor(t, defaultWait, "the plugin to register again on "+node, func(c context.Context) (bool, string, error) {
		var csinode storagev1.CSINode
		if err := kube.Get(c, client.ObjectKey{Name: node}, &csinode); err != nil {
			return false, "", err
		}
		for _, d := range csinode.Spec.Drivers {
			if d.Name == driverName {
				return true, "", nil
			}
		}
		return false, "not registered", nil
	})
	var ds appsv1.DaemonSet
	waitFor(t, defaultWait, "the chart's DaemonSets ready on every node", func(c context.Context) (bool, string, error) {
		for _, name := range []string{"fuse-holder", "dataplane", "node"} {
			if err := kube.Get(c, client.ObjectKey{Namespace: cfg.namespace, Name: cfg.release + "-" + name}, &ds); err != nil {
				return false, "", err
			}
			if ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
				return false, fmt.Sprintf("%s: %d of %d ready", ds.Name, ds.Status.NumberReady, ds.Status.DesiredNumberScheduled), nil
			}
		}
		return true, "", nil
	})
}

// pulledSeconds is how long node's plugin took to pull image digest, from its log (JSON, one
// object a line: msg "image pulled", digest, seconds).
func pulledSeconds(t *testing.T, node, digest string) float64 {
	t.Helper()
	var pods corev1.PodList
	if err := kube.List(ctx(t), &pods, client.InNamespace(cfg.namespace), client.MatchingLabels{"app.kubernetes.io/component": "node"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName != node || p.DeletionTimestamp != nil {
			continue
		}
		out, err := kubectl(t, "-n", cfg.namespace, "logs", p.Name, "-c", "plugin")
		if err != nil {
			t.Fatalf("logs of %s: %v", p.Name, err)
		}
		for _, line := range strings.Split(out, "\n") {
			var rec struct {
				Msg     string   `json:"msg"`
				Digest  string   `json:"digest"`
				Seconds *float64 `json:"seconds"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "image pulled" && rec.Digest == digest && rec.Seconds != nil {
				return *rec.Seconds
			}
		}
		t.Fatalf("no 'image pulled' line for %s in the log of %s", digest, p.Name)
	}
	t.Fatalf("no plugin pod on %s", node)
	return 0
}

// nodeReportsAfter waits until every cloning node has written two registry reports after
// since: the second one's sync began after since.
func nodeReportsAfter(t *testing.T, reg *exportset.Registry, since time.Time, nodes []string) {
	t.Helper()
	first := map[string]time.Time{}
	waitFor(t, defaultWait, "every node to sync with the registry twice", func(c context.Context) (bool, string, error) {
		reports, _, err := cluster.Reports(c, reg.Target())
		if err != nil {
			return false, "", err
		}
		var waiting []string
		for _, n := range nodes {
			i := slices.IndexFunc(reports, func(r cluster.NodeReport) bool { return r.Node == n })
			switch {
			case i < 0 || !reports[i].Updated.After(since):
				waiting = append(waiting, n)
			case first[n].IsZero():
				first[n] = reports[i].Updated
				waiting = append(waiting, n)
			case !reports[i].Updated.After(first[n]):
				waiting = append(waiting, n)
			}
		}
		return len(waiting) == 0, "waiting for " + strings.Join(waiting, ", "), nil
	})
}
