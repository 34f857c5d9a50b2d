//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	dataimagev1 "github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/imagebuilder"
)

// buildWait bounds a DataImage build: a small base backup restored by a Job.
const buildWait = 5 * time.Minute

// dataImage is a DataImage of a base backup in a directory of the node (hostPath source).
func dataImage(ns, name, backupDir, lifetime string) *dataimagev1.DataImage {
	return &dataimagev1.DataImage{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: dataimagev1.DataImageSpec{
			Definition: imagebuilder.Definition{
				Name: "e2e-" + name, Engine: "postgres", Version: cfg.postgresVersion, SourceType: "backup",
				Backups: []imagebuilder.Backup{
					{Path: "base.tar", Format: string(imagebuilder.FormatBaseBackupTar)},
					{Path: "pg_wal.tar", Format: string(imagebuilder.FormatBaseBackupTar)},
				},
				Tags:     []string{"e2e", "sales"},
				Lifetime: lifetime,
			},
			BackupSource: &dataimagev1.BackupSource{HostPath: &dataimagev1.HostPathBackupSource{Path: backupDir, NodeName: cfg.node}},
			VolumeSize:   ptr.To(resource.MustParse("1Gi")),
		},
	}
}

// waitImagePhase waits until a DataImage reaches phase, and fails at once if it reaches
// another final phase instead.
func waitImagePhase(t *testing.T, ns, name string, phase dataimagev1.DataImagePhase) *dataimagev1.DataImage {
	t.Helper()
	var di dataimagev1.DataImage
	c, cancel := context.WithTimeout(ctx(t), buildWait)
	defer cancel()
	start := time.Now()
	err := poll(c, func(c context.Context) (bool, string, error) {
		if err := kube.Get(c, client.ObjectKey{Namespace: ns, Name: name}, &di); err != nil {
			return false, "", err
		}
		st := di.Status
		state := fmt.Sprintf("phase %q step %q (%d/%d bytes): %s", st.Phase, st.Step, st.BytesDone, st.BytesTotal, st.Message)
		if st.Phase == phase {
			return true, state, nil
		}
		if st.Phase == dataimagev1.PhaseFailed || (phase == dataimagev1.PhaseFailed && st.Phase == dataimagev1.PhaseReady) {
			return false, state, errStop{fmt.Errorf("DataImage %s/%s is %s, not %s: %s", ns, name, st.Phase, phase, st.Message)}
		}
		return false, state, nil
	})
	if err != nil {
		t.Fatalf("waiting %s for DataImage %s/%s to be %s (is the DataImage controller installed and running?): %v",
			buildWait, ns, name, phase, err)
	}
	t.Logf("DataImage %s/%s %s after %.1f s", ns, name, phase, time.Since(start).Seconds())
	return &di
}

// waitImageReady waits until a DataImage is Ready and checks what Ready promises: a
// VolumeSnapshot of the same name, ready to use, labelled and annotated, and the status filled.
func waitImageReady(t *testing.T, ns, name string) (*dataimagev1.DataImage, *snapshotv1.VolumeSnapshot) {
	t.Helper()
	di := waitImagePhase(t, ns, name, dataimagev1.PhaseReady)
	st := di.Status
	if st.VolumeSnapshotName != name {
		t.Errorf("status.volumeSnapshotName %q, want %q (the DataImage's name)", st.VolumeSnapshotName, name)
	}
	if st.NodeName != cfg.node {
		t.Errorf("status.nodeName %q, want the backup's node %q", st.NodeName, cfg.node)
	}
	if !strings.HasPrefix(st.EngineVersion, cfg.postgresVersion+".") {
		t.Errorf("status.engineVersion %q, want PostgreSQL %s.x", st.EngineVersion, cfg.postgresVersion)
	}
	if st.BuiltAt == nil || st.DataStateTime == nil || st.Size == nil {
		t.Errorf("status lacks builtAt, dataStateTime or size: %+v", st)
	}
	if c := meta.FindStatusCondition(st.Conditions, dataimagev1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("condition Ready: %+v, want True", c)
	}
	vs := waitSnapshotReady(t, ns, st.VolumeSnapshotName)
	if got := vs.Labels[dataimagev1.LabelImage]; got != name {
		t.Errorf("VolumeSnapshot label %s=%q, want %q", dataimagev1.LabelImage, got, name)
	}
	if got := vs.Annotations[dataimagev1.AnnotationEngine]; got != "postgres" {
		t.Errorf("VolumeSnapshot annotation %s=%q, want postgres", dataimagev1.AnnotationEngine, got)
	}
	// The build's Job and PVC go once the image is ready.
	waitGone(t, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-build"}})
	waitGone(t, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-build"}})
	return di, vs
}

// TestDataImage is the user story: a DataImage built from a real pg_basebackup -Ft becomes
// Ready with a VolumeSnapshot; a 3-replica PostgreSQL StatefulSet clones it (every pod Ready and
// answering with the image's data, a write in one replica invisible in the others and in the
// image); a claim cloned from the image directly; a VolumeSnapshot of that clone and a claim
// from it.
func TestDataImage(t *testing.T) {
	needCluster(t)
	ns := newNamespace(t, "image")
	backup := makeBackup(t, "sales")
	create(t, dataImage(ns, "sales", backup, "0"))
	img, _ := waitImageReady(t, ns, "sales")
	node, snap := img.Status.NodeName, img.Status.VolumeSnapshotName

	t.Run("StatefulSet", func(t *testing.T) {
		const replicas = 3
		create(t, postgresStatefulSet(ns, replicas, node, snap))
		pods := make([]string, replicas)
		for i := range pods {
			pods[i] = fmt.Sprintf("pg-%d", i)
			waitPodReady(t, ns, pods[i])
		}
		volumes := map[string]string{}
		for _, p := range pods {
			if got := psql(t, ns, p, salesQuery); got != salesWant {
				t.Errorf("%s: the image's data reads %q, want %q", p, got, salesWant)
			}
			var pvc corev1.PersistentVolumeClaim
			if err := kube.Get(ctx(t), client.ObjectKey{Namespace: ns, Name: "data-" + p}, &pvc); err != nil {
				t.Fatal(err)
			}
			if other, dup := volumes[pvc.Spec.VolumeName]; dup {
				t.Errorf("%s and %s share the volume %s", p, other, pvc.Spec.VolumeName)
			}
			volumes[pvc.Spec.VolumeName] = p
		}
		psql(t, ns, "pg-0", "INSERT INTO sales VALUES (1000001, 'only-in-pg-0')")
		if got, want := psql(t, ns, "pg-0", salesQuery), fmt.Sprintf("%d|%d", salesRows+1, 500500+1000001); got != want {
			t.Errorf("pg-0 after its write: %q, want %q", got, want)
		}
		for _, p := range pods[1:] {
			if got := psql(t, ns, p, salesQuery); got != salesWant {
				t.Errorf("%s sees %q after a write in pg-0, want the image's %q", p, got, salesWant)
			}
		}
	})

	t.Run("ClaimFromImage", func(t *testing.T) {
		create(t, claim(ns, "direct", "1Gi", snap, false))
		create(t, postgresPod(ns, "direct", "direct", node))
		waitPodReady(t, ns, "direct")
		// The StatefulSet's write did not reach the image.
		if got := psql(t, ns, "direct", salesQuery); got != salesWant {
			t.Fatalf("a new clone of the image reads %q, want the image's %q", got, salesWant)
		}
	})

	t.Run("SnapshotOfClone", func(t *testing.T) {
		psql(t, ns, "direct", "INSERT INTO sales VALUES (2000002, 'before-snapshot')")
		psql(t, ns, "direct", "CHECKPOINT")
		execIn(t, ns, "direct", postgresContainer, "sync", "-f", postgresMount+"/data")
		snapshotOf(t, ns, "direct-snap", "direct")
		psql(t, ns, "direct", "INSERT INTO sales VALUES (2000003, 'after-snapshot')")
		create(t, claim(ns, "restored", "1Gi", "direct-snap", false))
		create(t, postgresPod(ns, "restored", "restored", node))
		waitPodReady(t, ns, "restored")
		got := psql(t, ns, "restored", "SELECT string_agg(item, ',' ORDER BY id) FROM sales WHERE id > 1000000")
		if got != "before-snapshot" {
			t.Errorf("the clone of the clone's snapshot has rows %q beyond the image's, want before-snapshot", got)
		}
		if got := psql(t, ns, "restored", "SELECT count(*) FROM sales WHERE id <= 1000"); got != strconv.Itoa(salesRows) {
			t.Errorf("the clone of the clone's snapshot has %s of the image's rows, want %d", got, salesRows)
		}
	})
}

// TestDataImageLifetime: an image whose lifetime ends while a clone of it exists stays (its
// VolumeSnapshot too, condition Expired with reason ClonesExist); once the clone goes, the
// image goes (phase Expired, the VolumeSnapshot deleted).
func TestDataImageLifetime(t *testing.T) {
	needCluster(t)
	ns := newNamespace(t, "lifetime")
	backup := makeBackup(t, "lifetime")
	// The clone's claim exists before the image: it names the snapshot the image will be, so
	// the image has a clone from its first moment and a short lifetime races nothing.
	create(t, claim(ns, "clone", "1Gi", "short", false))
	create(t, dataImage(ns, "short", backup, "20s"))
	img, _ := waitImageReady(t, ns, "short")
	if img.Status.ExpiresAt == nil || img.Status.BuiltAt == nil {
		t.Fatalf("a 20s lifetime gives no expiresAt: %+v", img.Status)
	}
	if d := img.Status.ExpiresAt.Sub(img.Status.BuiltAt.Time); d != 20*time.Second {
		t.Errorf("expiresAt - builtAt = %s, want the lifetime, 20s", d)
	}
	create(t, postgresPod(ns, "clone", "clone", img.Status.NodeName))
	waitPodReady(t, ns, "clone")
	if got := psql(t, ns, "clone", salesQuery); got != salesWant {
		t.Errorf("the clone reads %q, want %q", got, salesWant)
	}

	var di dataimagev1.DataImage
	waitFor(t, time.Until(img.Status.ExpiresAt.Time)+time.Minute, "the expired image to be kept for its clone",
		func(c context.Context) (bool, string, error) {
			if err := kube.Get(c, client.ObjectKeyFromObject(img), &di); err != nil {
				return false, "", err
			}
			cond := meta.FindStatusCondition(di.Status.Conditions, dataimagev1.ConditionExpired)
			state := fmt.Sprintf("phase %s, clones %d, Expired %+v", di.Status.Phase, di.Status.Clones, cond)
			return cond != nil && cond.Status == metav1.ConditionTrue && cond.Reason == dataimagev1.ReasonClonesExist, state, nil
		})
	if di.Status.Clones != 1 {
		t.Errorf("status.clones %d, want 1", di.Status.Clones)
	}
	// Kept: the snapshot is still there and still clones.
	waitSnapshotReady(t, ns, "short")

	deleteAndWait(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "clone"}})
	deleteAndWait(t, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "clone"}})
	waitFor(t, 2*time.Minute, "the expired image to go once its clone is gone", func(c context.Context) (bool, string, error) {
		if err := kube.Get(c, client.ObjectKeyFromObject(img), &di); err != nil {
			return false, "", err
		}
		cond := meta.FindStatusCondition(di.Status.Conditions, dataimagev1.ConditionExpired)
		return di.Status.Phase == dataimagev1.PhaseExpired && cond != nil && cond.Reason == dataimagev1.ReasonSnapshotDeleted,
			fmt.Sprintf("phase %s, clones %d, Expired %+v", di.Status.Phase, di.Status.Clones, cond), nil
	})
	waitGone(t, &snapshotv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "short"}})
}

// TestDataImageFailedBuild: a build from a backup that is not one fails: phase Failed, Built
// False with reason BuildFailed and a message that names what failed, and nothing left behind
// (Job, pods, build claim and its volume, snapshot).
func TestDataImageFailedBuild(t *testing.T) {
	needCluster(t)
	ns := newNamespace(t, "failed")
	backup := makeBadBackup(t, "bad")
	create(t, dataImage(ns, "broken", backup, "0"))
	di := waitImagePhase(t, ns, "broken", dataimagev1.PhaseFailed)
	t.Logf("status.message: %s", di.Status.Message)
	cond := meta.FindStatusCondition(di.Status.Conditions, dataimagev1.ConditionBuilt)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != dataimagev1.ReasonBuildFailed {
		t.Errorf("condition Built: %+v, want False with reason %s", cond, dataimagev1.ReasonBuildFailed)
	}
	if msg := di.Status.Message; !strings.Contains(msg, "base.tar") && !strings.Contains(msg, "restore") {
		t.Errorf("status.message %q names neither the backup (base.tar) nor the failed step (restore)", msg)
	}
	if di.Status.VolumeSnapshotName != "" {
		t.Errorf("a failed build has a VolumeSnapshot %q", di.Status.VolumeSnapshotName)
	}
	waitGone(t, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "broken-build"}})
	waitGone(t, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "broken-build"}})
	waitFor(t, defaultWait, "no pod, snapshot or volume of the failed build", func(c context.Context) (bool, string, error) {
		var pods corev1.PodList
		if err := kube.List(c, &pods, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		var snaps snapshotv1.VolumeSnapshotList
		if err := kube.List(c, &snaps, client.InNamespace(ns)); err != nil && !apierrors.IsNotFound(err) {
			return false, "", err
		}
		var pvs corev1.PersistentVolumeList
		if err := kube.List(c, &pvs); err != nil {
			return false, "", err
		}
		var left []string
		for _, p := range pods.Items {
			left = append(left, "pod "+p.Name)
		}
		for _, s := range snaps.Items {
			left = append(left, "VolumeSnapshot "+s.Name)
		}
		for _, pv := range pvs.Items {
			if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns {
				left = append(left, "PersistentVolume "+pv.Name)
			}
		}
		return len(left) == 0, strings.Join(left, ", "), nil
	})
	// The failure stays put: no retry loop rebuilds it behind the user's back.
	time.Sleep(2 * time.Second)
	var again dataimagev1.DataImage
	if err := kube.Get(ctx(t), client.ObjectKeyFromObject(di), &again); err != nil {
		t.Fatal(err)
	}
	if again.Status.Phase != dataimagev1.PhaseFailed {
		t.Errorf("phase %s after the failure, want it to stay Failed", again.Status.Phase)
	}
}
