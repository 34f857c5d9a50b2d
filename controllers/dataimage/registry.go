package dataimage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/cluster"
)

// Images on every node (docs/kubernetes.md): with a registry, a Ready image gets a placement
// there (package cluster), named by its snapshot handle, which asks the node that holds the
// snapshot to push it and the nodes of spec.placement to pull it. The nodes' plugins report
// what they hold; this file reads their reports into status (digest, nodes, the Pushed
// condition, progress and failures in the message) and withdraws the placement and the image's
// name from the registry when the image's snapshot goes.

const (
	// staleReport: a node report older than this is not believed (the node is down or gone): its
	// node is not listed in status.nodes.
	staleReport = 5 * time.Minute
	// settledInterval is how often a pushed and placed image is looked at again (nodes that
	// join, nodes that are lost).
	settledInterval = time.Minute
	// minRegistryInterval bounds how often an image in motion reads the registry.
	minRegistryInterval = 5 * time.Second
)

const (
	reasonPushed     = v1alpha1.ReasonPushed
	reasonPushFailed = v1alpha1.ReasonPushFailed
	reasonPullFailed = "PullFailed"
)

// distribute places a Ready image in the registry and records where it is; it returns when to
// look again (0: not needed).
func (r *reconciler) distribute(ctx context.Context, st *state, snap *snapshotv1.VolumeSnapshot) (time.Duration, string, error) {
	di := st.di
	if r.registry == nil {
		return 0, "", nil
	}
	if di.Status.SnapshotHandle == "" {
		handle, err := r.snapshotHandle(ctx, snap)
		if err != nil || handle == "" {
			return minRegistryInterval, "", err
		}
		di.Status.SnapshotHandle = handle
	}
	handle := di.Status.SnapshotHandle
	want, err := r.placementNodes(ctx, di)
	if err != nil {
		return 0, "", err
	}
	p := cluster.Placement{Handle: handle, Nodes: want, Image: exportset.Image{
		Name: di.Namespace + "/" + di.Name, Engine: string(di.Spec.NormalizedEngine()), Version: di.Status.EngineVersion,
		SourceType: string(di.Spec.SourceType), Tags: slices.Clone(di.Spec.Tags)}}
	if di.Status.BuiltAt != nil {
		p.Image.Created = di.Status.BuiltAt.UTC()
	}
	if di.Status.DataStateTime != nil {
		p.Image.DataState = di.Status.DataStateTime.UTC()
	}
	reg := exportset.New(r.registry, exportset.Options{})
	old, err := cluster.GetPlacement(ctx, r.registry, handle)
	if err != nil && !errors.Is(err, exportset.ErrNotFound) && !errors.Is(err, exportset.ErrInvalid) {
		return 0, "", fmt.Errorf("controller: registry %s: %w", r.registry, err)
	}
	if err != nil || !reflect.DeepEqual(normalized(old), normalized(p)) {
		if err := cluster.PutPlacement(ctx, r.registry, p); err != nil {
			return 0, "", fmt.Errorf("controller: registry %s: %w", r.registry, err)
		}
		st.log.Info("placed the image in the registry", "handle", handle, "nodes", want, "registry", r.registry.String())
	}

	d, err := reg.Resolve(ctx, handle)
	if err != nil && !errors.Is(err, exportset.ErrNotFound) {
		return 0, "", fmt.Errorf("controller: registry %s: %w", r.registry, err)
	}
	reports, bad, err := cluster.Reports(ctx, r.registry)
	if err != nil {
		return 0, "", fmt.Errorf("controller: registry %s: %w", r.registry, err)
	}
	for _, b := range bad {
		st.log.Info("a node report the controller cannot read", "error", b.Error())
	}
	now := r.now()
	var nodes, moving, failed []string
	var pushing *cluster.ImageState
	for _, rep := range reports {
		s, ok := rep.Image(handle)
		if !ok || now.Sub(rep.Updated) > staleReport {
			continue
		}
		switch s.State {
		case cluster.StateHeld:
			nodes = append(nodes, rep.Node)
		case cluster.StatePushing:
			pushing = &s
			nodes = append(nodes, rep.Node)
			moving = append(moving, fmt.Sprintf("%s pushes it (%d/%d chunks)", rep.Node, s.Done, s.Total))
		case cluster.StatePulling:
			moving = append(moving, fmt.Sprintf("%s pulls it (%d/%d chunks)", rep.Node, s.Done, s.Total))
		case cluster.StateFailed:
			failed = append(failed, fmt.Sprintf("%s: %s", rep.Node, s.Message))
		}
	}
	slices.Sort(nodes)
	di.Status.Nodes = nodes
	di.Status.Digest = string(d)

	var msg string
	switch {
	case d != "":
		msg = fmt.Sprintf("pushed to %s as %s", r.registry, d)
		if conditionReason(&st.saved, v1alpha1.ConditionPushed) != reasonPushed {
			st.afterSave(func() {
				r.event(di, false, reasonPushed, "Push", "image "+msg)
				st.log.Info("image pushed", "digest", d, "handle", handle)
			})
		}
		setCondition(di, v1alpha1.ConditionPushed, metav1.ConditionTrue, reasonPushed, msg)
	case len(failed) > 0 && pushing == nil:
		msg = "push failed (its node tries again): " + strings.Join(failed, "; ")
		if c := meta.FindStatusCondition(st.saved.Conditions, v1alpha1.ConditionPushed); c == nil || c.Message != truncate(msg) {
			st.afterSave(func() { r.event(di, true, reasonPushFailed, "Push", msg) })
		}
		setCondition(di, v1alpha1.ConditionPushed, metav1.ConditionFalse, reasonPushFailed, msg)
	default:
		msg = fmt.Sprintf("waiting for node %s to push it to %s", di.Status.NodeName, r.registry)
		if pushing != nil {
			msg = fmt.Sprintf("pushing to %s: %d/%d chunks", r.registry, pushing.Done, pushing.Total)
		}
		setCondition(di, v1alpha1.ConditionPushed, metav1.ConditionFalse, v1alpha1.ReasonPushing, msg)
	}
	parts := []string{msg}
	if d != "" && len(failed) > 0 {
		note := "pull failed: " + strings.Join(failed, "; ")
		parts = append(parts, note)
		if !strings.Contains(st.saved.Message, note) {
			st.afterSave(func() { r.event(di, true, reasonPullFailed, "Pull", note) })
		}
	}
	parts = append(parts, moving...)
	if missing := without(want, nodes); len(missing) > 0 {
		parts = append(parts, "placement: not yet on "+strings.Join(missing, ", "))
	}
	if len(nodes) > 0 {
		parts = append(parts, "on "+strings.Join(nodes, ", "))
	}
	if d == "" || len(moving) > 0 || len(failed) > 0 || len(without(want, nodes)) > 0 {
		return max(r.interval, minRegistryInterval), strings.Join(parts, "; "), nil
	}
	return settledInterval, strings.Join(parts, "; "), nil
}

// normalized is a placement as it reads back from the registry (times in UTC, nil for empty).
func normalized(p cluster.Placement) cluster.Placement {
	p.Image.Created, p.Image.DataState = p.Image.Created.UTC(), p.Image.DataState.UTC()
	if len(p.Nodes) == 0 {
		p.Nodes = nil
	}
	if len(p.Image.Tags) == 0 {
		p.Image.Tags = nil
	}
	return p
}

// without returns the names of a that are not in b.
func without(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

// snapshotHandle reads the CSI snapshot handle of snap's VolumeSnapshotContent ("" while it has
// none).
func (r *reconciler) snapshotHandle(ctx context.Context, snap *snapshotv1.VolumeSnapshot) (string, error) {
	if snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil {
		return "", nil
	}
	var content snapshotv1.VolumeSnapshotContent
	name := *snap.Status.BoundVolumeSnapshotContentName
	if err := r.api.Get(ctx, types.NamespacedName{Name: name}, &content); err != nil {
		return "", fmt.Errorf("controller: get VolumeSnapshotContent %s: %w", name, err)
	}
	if content.Status == nil || content.Status.SnapshotHandle == nil {
		return "", nil
	}
	return *content.Status.SnapshotHandle, nil
}

// placementNodes are the cloning nodes spec.placement names, sorted.
func (r *reconciler) placementNodes(ctx context.Context, di *v1alpha1.DataImage) ([]string, error) {
	p := di.Spec.Placement
	if p == nil || !p.AllNodes && len(p.NodeSelector) == 0 {
		return nil, nil
	}
	sel := maps.Clone(r.cfg.BuildNodeSelector) // the cloning nodes
	if sel == nil {
		sel = map[string]string{}
	}
	maps.Copy(sel, p.NodeSelector)
	var list corev1.NodeList
	if err := r.api.List(ctx, &list, client.MatchingLabels(sel)); err != nil {
		return nil, fmt.Errorf("controller: list the nodes of the placement: %w", err)
	}
	names := make([]string, 0, len(list.Items))
	for _, n := range list.Items {
		if n.DeletionTimestamp.IsZero() {
			names = append(names, n.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// withdraw removes an image whose snapshot is deleted from the registry: its placement (the
// nodes stop pre-pulling it) and its name (the image, unless another name points at it; a
// collection of the registry frees its chunks). Failures are logged: the image stays in the
// registry, which wastes space and breaks nothing.
func (r *reconciler) withdraw(ctx context.Context, st *state) {
	handle := st.di.Status.SnapshotHandle
	if r.registry == nil || handle == "" {
		return
	}
	if err := cluster.DeletePlacement(ctx, r.registry, handle); err != nil {
		st.log.Info("could not delete the image's placement from the registry", "handle", handle, "error", err.Error())
		return
	}
	if _, _, err := exportset.New(r.registry, exportset.Options{}).Delete(ctx, handle); err != nil && !errors.Is(err, exportset.ErrNotFound) {
		st.log.Info("could not delete the image from the registry", "handle", handle, "error", err.Error())
		return
	}
	st.log.Info("image withdrawn from the registry", "handle", handle, "registry", r.registry.String())
}
