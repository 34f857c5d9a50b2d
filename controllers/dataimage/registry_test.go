package dataimage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/cluster"
	"github.com/dataimage/dataimage/exportset/remote"
)

// withRegistry runs the controller with the registry t.
func withRegistry(t exportset.Target) harnessOption {
	return func(h *harness, _ *corev1.Namespace) { h.registry = t }
}

// node creates a cloning node with labels (cluster-scoped: named after the test's namespace),
// deleted at cleanup.
func (h *harness) node(name string, labels map[string]string) string {
	h.t.Helper()
	l := map[string]string{"dataimage.io/cloning-node": "true"}
	for k, v := range labels {
		l[k] = v
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.ns + "-" + name, Labels: l}}
	h.create(n)
	h.t.Cleanup(func() { _ = h.admin.Delete(context.Background(), n) })
	return n.Name
}

// boundContent plays the snapshot-controller and the node's snapshotter: the image's
// VolumeSnapshotContent, with the CSI snapshot handle.
func (h *harness) boundContent(name, handle string) {
	h.t.Helper()
	vs := h.snapshot(name)
	content := &snapshotv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: "snapcontent-" + string(vs.UID)},
		Spec: snapshotv1.VolumeSnapshotContentSpec{
			Driver: "csi.dataimage.io", DeletionPolicy: snapshotv1.VolumeSnapshotContentDelete,
			Source:            snapshotv1.VolumeSnapshotContentSource{VolumeHandle: ptr.To("dv-00000000-0000000000000001")},
			VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", Namespace: h.ns, Name: name, UID: vs.UID},
		},
	}
	h.create(content)
	h.t.Cleanup(func() { _ = h.admin.Delete(context.Background(), content) })
	content.Status = &snapshotv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(handle), ReadyToUse: ptr.To(true)}
	if err := h.admin.Status().Update(h.ctx, content); err != nil {
		h.t.Fatalf("content status: %v", err)
	}
}

// report plays a node's plugin: its report on the image of handle.
func report(t *testing.T, tg exportset.Target, node string, s cluster.ImageState) {
	t.Helper()
	if err := cluster.PutReport(context.Background(), tg, cluster.NodeReport{Node: node, Updated: time.Now().UTC(), Images: []cluster.ImageState{s}}); err != nil {
		t.Fatal(err)
	}
}

// TestRegistryPushAndPlacement: with a registry, a Ready image is placed there (its snapshot
// handle, its metadata, the cloning nodes its spec.placement selects); the nodes' reports
// show in status (push progress, a failed push with an Event, then the digest once the image's
// name is in the registry, and the nodes that hold it); a changed placement is written again;
// deleting the DataImage withdraws the placement and the image's name.
func TestRegistryPushAndPlacement(t *testing.T) {
	tg, err := remote.NewDir(filepath.Join(t.TempDir(), "registry"))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, withRegistry(tg))
	a := h.node("a", nil)
	b := h.node("b", map[string]string{"zone": "east"})
	c := h.node("c", map[string]string{"zone": "west"})
	h.node("d", map[string]string{"zone": "east", "dataimage.io/cloning-node": "false"}) // not a cloning node

	di := h.image("sales")
	di.Spec.Placement = &v1alpha1.Placement{NodeSelector: map[string]string{"zone": "east"}}
	h.create(di)
	const handle = "ds-1a2b3c4d-0000000000000007"
	h.built("sales", func() {})
	h.boundContent("sales", handle)

	var p cluster.Placement
	h.eventually("the image's placement in the registry", waitFor, func() (bool, string) {
		p, err = cluster.GetPlacement(h.ctx, tg, handle)
		return err == nil, fmt.Sprint(err)
	})
	if !slices.Equal(p.Nodes, []string{b}) {
		t.Errorf("placement nodes %v, want the cloning nodes of zone east: [%s]", p.Nodes, b)
	}
	if p.Image.Name != h.ns+"/sales" || p.Image.Engine != "postgres" || p.Image.Version != "16.4" || p.Image.Created.IsZero() ||
		!p.Image.DataState.Equal(time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)) {
		t.Errorf("placement image %+v", p.Image)
	}
	h.waitImage("sales", "waiting for the push", func(di *v1alpha1.DataImage) bool {
		c := meta.FindStatusCondition(di.Status.Conditions, v1alpha1.ConditionPushed)
		return di.Status.SnapshotHandle == handle && c != nil && c.Status == metav1.ConditionFalse && c.Reason == v1alpha1.ReasonPushing &&
			di.Status.Digest == "" && strings.Contains(di.Status.Message, "waiting for node")
	})

	report(t, tg, a, cluster.ImageState{Handle: handle, State: cluster.StatePushing, Done: 2, Total: 5})
	h.waitImage("sales", "push progress", func(di *v1alpha1.DataImage) bool {
		return strings.Contains(di.Status.Message, "pushing to "+tg.String()+": 2/5 chunks")
	})

	report(t, tg, a, cluster.ImageState{Handle: handle, State: cluster.StateFailed, Message: "registry unreachable: connection refused"})
	h.waitImage("sales", "push failed", func(di *v1alpha1.DataImage) bool {
		c := meta.FindStatusCondition(di.Status.Conditions, v1alpha1.ConditionPushed)
		return c != nil && c.Reason == v1alpha1.ReasonPushFailed && strings.Contains(c.Message, a+": registry unreachable")
	})
	if note := h.hasEvent("sales", v1alpha1.ReasonPushFailed); !strings.Contains(note, "connection refused") {
		t.Errorf("PushFailed event %q", note)
	}

	// The node pushes: the handle names the image in the registry; both nodes hold it.
	digest := exportset.DigestOf([]byte("a manifest"))
	if err := tg.Put(h.ctx, "refs/"+handle, []byte(string(digest)+"\n")); err != nil {
		t.Fatal(err)
	}
	report(t, tg, a, cluster.ImageState{Handle: handle, Digest: digest, State: cluster.StateHeld, Pushed: true})
	report(t, tg, b, cluster.ImageState{Handle: handle, Digest: digest, State: cluster.StatePulling, Done: 1, Total: 3})
	h.waitImage("sales", "pushed, pulled on b", func(di *v1alpha1.DataImage) bool {
		c := meta.FindStatusCondition(di.Status.Conditions, v1alpha1.ConditionPushed)
		return di.Status.Digest == string(digest) && c != nil && c.Status == metav1.ConditionTrue &&
			slices.Equal(di.Status.Nodes, []string{a}) && strings.Contains(di.Status.Message, b+" pulls it (1/3 chunks)")
	})
	h.hasEvent("sales", v1alpha1.ReasonPushed)
	report(t, tg, b, cluster.ImageState{Handle: handle, Digest: digest, State: cluster.StateHeld})
	// A stale report (its node is down) does not count.
	if err := cluster.PutReport(h.ctx, tg, cluster.NodeReport{Node: c, Updated: time.Now().Add(-time.Hour).UTC(),
		Images: []cluster.ImageState{{Handle: handle, State: cluster.StateHeld}}}); err != nil {
		t.Fatal(err)
	}
	h.waitImage("sales", "on a and b", func(di *v1alpha1.DataImage) bool {
		return slices.Equal(di.Status.Nodes, []string{a, b})
	})

	// Every cloning node: the placement grows.
	cur := &v1alpha1.DataImage{}
	if err := h.admin.Get(h.ctx, h.key("sales"), cur); err != nil {
		t.Fatal(err)
	}
	cur.Spec.Placement = &v1alpha1.Placement{AllNodes: true}
	if err := h.admin.Update(h.ctx, cur); err != nil {
		t.Fatal(err)
	}
	h.eventually("placement on every cloning node", waitFor, func() (bool, string) {
		p, err = cluster.GetPlacement(h.ctx, tg, handle)
		var mine []string
		for _, n := range p.Nodes {
			if strings.HasPrefix(n, h.ns+"-") {
				mine = append(mine, n)
			}
		}
		return err == nil && slices.Equal(mine, []string{a, b, c}), fmt.Sprintf("%v %v", p.Nodes, err)
	})

	if err := h.admin.Delete(h.ctx, cur); err != nil {
		t.Fatal(err)
	}
	h.eventually("placement and name withdrawn", waitFor, func() (bool, string) {
		_, perr := cluster.GetPlacement(h.ctx, tg, handle)
		_, rerr := tg.Get(h.ctx, "refs/"+handle, 1024)
		return errors.Is(perr, exportset.ErrNotFound) && errors.Is(rerr, exportset.ErrNotFound), fmt.Sprintf("%v / %v", perr, rerr)
	})
}

// TestNoRegistryNoPushCondition: without a registry a Ready image has no Pushed condition and
// no digest (images stay on their node, as before).
func TestNoRegistryNoPushCondition(t *testing.T) {
	h := newHarness(t)
	h.create(h.image("plain"))
	h.built("plain", func() {})
	di := h.waitImage("plain", "ready", phaseIs(v1alpha1.PhaseReady))
	if c := meta.FindStatusCondition(di.Status.Conditions, v1alpha1.ConditionPushed); c != nil || di.Status.Digest != "" || di.Status.SnapshotHandle != "" {
		t.Errorf("without a registry: condition %v, digest %q, handle %q", c, di.Status.Digest, di.Status.SnapshotHandle)
	}
}
