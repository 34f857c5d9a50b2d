//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// capSysResource is the capability number of CAP_SYS_RESOURCE.
const capSysResource = 24

// nodeHasSysResource reports whether this node's processes can hold CAP_SYS_RESOURCE (in the
// bounding set of this root process, as in the privileged plugin's): growing a mounted ext4
// (EXT4_IOC_RESIZE_FS) needs it, and some VMs withhold it.
func nodeHasSysResource(t *testing.T) bool {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("CapBnd %q: %v", v, err)
			}
			return bits&(1<<capSysResource) != 0
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return false
}

// storageClassFor creates a StorageClass of the driver whose volumes get file system fs, with
// the chart's class's settings otherwise; it is deleted when t ends.
func storageClassFor(t *testing.T, fs string) string {
	t.Helper()
	var base storagev1.StorageClass
	if err := kube.Get(ctx(t), client.ObjectKey{Name: storageClass}, &base); err != nil {
		t.Fatalf("the chart's StorageClass %s: %v", storageClass, err)
	}
	sc := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: "e2e-" + fs},
		Provisioner:          driverName,
		Parameters:           map[string]string{"csi.storage.k8s.io/fstype": fs},
		VolumeBindingMode:    base.VolumeBindingMode,
		AllowVolumeExpansion: ptr.To(true),
		ReclaimPolicy:        base.ReclaimPolicy,
	}
	create(t, sc)
	t.Cleanup(func() {
		if err := kube.Delete(context.Background(), sc); err != nil {
			t.Errorf("delete StorageClass %s: %v", sc.Name, err)
		}
	})
	return sc.Name
}

// TestDataImageOnlineExpansion: a clone of a data image, mounted in a running PostgreSQL pod,
// is expanded by raising its claim's request: the claim's capacity and the file system in the
// pod grow (the DataImage controller's resizer, then the kubelet's NodeExpandVolume), and the
// server goes on writing. For xfs, and for ext4 where the node can hold CAP_SYS_RESOURCE.
func TestDataImageOnlineExpansion(t *testing.T) {
	needCluster(t)
	fsTypes := []string{"xfs"}
	if nodeHasSysResource(t) {
		fsTypes = append(fsTypes, "ext4")
	} else {
		t.Log("this node withholds CAP_SYS_RESOURCE, which growing a mounted ext4 needs: ext4 not tested, xfs only")
	}
	backup := makeBackup(t, "expand")
	for _, fs := range fsTypes {
		t.Run(fs, func(t *testing.T) {
			ns := newNamespace(t, "expand-"+fs)
			class := storageClassFor(t, fs)
			di := dataImage(ns, "grow", backup, "0")
			di.Spec.StorageClassName = ptr.To(class)
			create(t, di)
			img, _ := waitImageReady(t, ns, "grow")
			pvc := claim(ns, "clone", "1Gi", img.Status.VolumeSnapshotName, false)
			pvc.Spec.StorageClassName = ptr.To(class)
			create(t, pvc)
			create(t, postgresPod(ns, "clone", "clone", img.Status.NodeName))
			waitPodReady(t, ns, "clone")
			wantType := map[string]string{"xfs": "xfs", "ext4": "ext2/ext3"}[fs] // as stat -f names them
			if got := execIn(t, ns, "clone", postgresContainer, "stat", "-f", "-c", "%T", postgresMount); got != wantType {
				t.Errorf("the clone's file system is %q, want %q (%s)", got, wantType, fs)
			}
			expandOnline(t, ns, "clone", "clone", "2Gi")
			psql(t, ns, "clone", "INSERT INTO sales SELECT i, repeat('x', 1000) FROM generate_series(1000001, 1001000) AS i")
			if got, want := psql(t, ns, "clone", "SELECT count(*) FROM sales"), strconv.Itoa(salesRows+1000); got != want {
				t.Errorf("after writes on the grown file system: %s rows, want %s", got, want)
			}
		})
	}
}

// expandOnline raises a mounted claim's request to size and waits until its capacity and the
// file system that pod sees at postgresMount have grown.
func expandOnline(t *testing.T, ns, claimName, pod, size string) {
	t.Helper()
	fsSize := func() int64 {
		out := execIn(t, ns, pod, postgresContainer, "df", "--output=size", "-B1", postgresMount)
		fields := strings.Fields(out)
		n, err := strconv.ParseInt(fields[len(fields)-1], 10, 64)
		if err != nil {
			t.Fatalf("df %s: %q: %v", postgresMount, out, err)
		}
		return n
	}
	before := fsSize()
	want := resource.MustParse(size)
	var pvc corev1.PersistentVolumeClaim
	if err := kube.Get(ctx(t), client.ObjectKey{Namespace: ns, Name: claimName}, &pvc); err != nil {
		t.Fatal(err)
	}
	old := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	patch := client.MergeFrom(pvc.DeepCopy())
	pvc.Spec.Resources.Requests[corev1.ResourceStorage] = want
	if err := kube.Patch(ctx(t), &pvc, patch); err != nil {
		t.Fatalf("expand claim %s to %s: %v", claimName, size, err)
	}
	waitFor(t, defaultWait, fmt.Sprintf("claim %s's capacity to reach %s", claimName, size), func(c context.Context) (bool, string, error) {
		if err := kube.Get(c, client.ObjectKey{Namespace: ns, Name: claimName}, &pvc); err != nil {
			return false, "", err
		}
		got := pvc.Status.Capacity[corev1.ResourceStorage]
		var conds []string
		for _, cond := range pvc.Status.Conditions {
			conds = append(conds, fmt.Sprintf("%s=%s: %s", cond.Type, cond.Status, cond.Message))
		}
		return got.Cmp(want) >= 0, fmt.Sprintf("capacity %s; %s", got.String(), strings.Join(conds, "; ")), nil
	})
	growth := want.Value() - old.Value()
	waitFor(t, time.Minute, "the file system in the pod to grow", func(context.Context) (bool, string, error) {
		after := fsSize()
		return after >= before+growth*9/10, fmt.Sprintf("%d bytes, was %d", after, before), nil
	})
}
