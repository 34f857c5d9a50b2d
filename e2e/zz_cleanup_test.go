//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	dataimagev1 "github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/exportset"
)

// TestZZLeavesNothing runs last (go test runs the tests of a package in the order of their
// files, and this file sorts last): once every test's namespace is gone, deleting everything
// must have left no volume, snapshot or DataImage in the cluster, nothing mounted on any node
// (no CSI mount, loop device over an exported volume, or FUSE export), and on every node a pool
// that passes the block store's check with no volume and no snapshot in it (images pulled for
// clones included: a node drops them once no DataImage places them). For the check the node
// plugins and the data planes are stopped (the pools are opened here, by this process), then
// started again.
func TestZZLeavesNothing(t *testing.T) {
	needCluster(t)
	waitFor(t, defaultWait, "every test namespace to be deleted", func(c context.Context) (bool, string, error) {
		var list corev1.NamespaceList
		if err := kube.List(c, &list, client.HasLabels{namespaceLabel}); err != nil {
			return false, "", err
		}
		var names []string
		for _, ns := range list.Items {
			names = append(names, ns.Name)
		}
		return len(names) == 0, strings.Join(names, ", "), nil
	})
	waitFor(t, defaultWait, "no volume, snapshot or DataImage of the driver left", func(c context.Context) (bool, string, error) {
		left, err := driverObjects(c)
		return len(left) == 0, strings.Join(left, ", "), err
	})
	nodes := append([]otherNode{{name: cfg.node, pool: cfg.poolPath, mountinfo: "/proc/self/mountinfo"}}, cfg.others...)
	// A node drops the images it pulled in its first registry sync that begins once no
	// placement names them (the DataImages are gone, and their placements with them).
	if len(cfg.others) > 0 {
		var names []string
		for _, n := range nodes {
			names = append(names, n.name)
		}
		reg := openRegistry(t)
		nodeReportsAfter(t, reg, time.Now(), names)
		// The controller withdrew every image (name, manifest) with its DataImage, and its
		// garbage collection (every 20 s here) deletes their chunks.
		waitFor(t, defaultWait, "the registry to hold no image, name or chunk", func(c context.Context) (bool, string, error) {
			var left []string
			for _, dir := range []string{"manifests/", "refs/", "chunks/"} {
				if err := reg.Target().List(c, dir, func(o exportset.ObjectInfo) error {
					left = append(left, o.Key)
					return nil
				}); err != nil {
					return false, "", err
				}
			}
			if len(left) > 5 {
				left = append(left[:5], fmt.Sprintf("and %d more", len(left)-5))
			}
			return len(left) == 0, strings.Join(left, ", "), nil
		})
	}
	for _, n := range nodes {
		if m := leftoverMounts(t, n.mountinfo); len(m) > 0 {
			t.Errorf("left on node %s with the plugin running:\n%s", n.name, strings.Join(m, "\n"))
		}
	}

	stopNode(t)
	for _, n := range nodes {
		if m := leftoverMounts(t, n.mountinfo); len(m) > 0 {
			t.Errorf("left on node %s after the plugin and the data plane stopped:\n%s", n.name, strings.Join(m, "\n"))
		}
		checkEmptyPool(t, n)
	}
}

// checkEmptyPool checks node n's pool and that it holds no volume and no snapshot.
func checkEmptyPool(t *testing.T, n otherNode) {
	t.Helper()
	pool, err := blockstore.Open(n.pool, blockstore.Options{})
	if err != nil {
		t.Errorf("open node %s's pool %s: %v", n.name, n.pool, err)
		return
	}
	report, err := pool.Check(false)
	var vols []string
	for _, v := range pool.Volumes() {
		vols = append(vols, v.Name)
	}
	var snaps []string
	for _, s := range pool.Snapshots() {
		snaps = append(snaps, s.Name)
	}
	if cerr := pool.Close(); cerr != nil {
		t.Errorf("close the pool: %v", cerr)
	}
	if err != nil {
		t.Errorf("check of node %s's pool %s: %v", n.name, n.pool, err)
		return
	}
	t.Logf("node %s: pool check: %s", n.name, report)
	if !report.OK() {
		t.Errorf("node %s: the pool check found problems: %s", n.name, report)
	}
	if report.Volumes != 0 || report.Snapshots != 0 {
		t.Errorf("node %s: the pool still holds %d volumes %v and %d snapshots %v after everything was deleted",
			n.name, report.Volumes, vols, report.Snapshots, snaps)
	}
}

// driverObjects lists what the cluster still holds of the driver: PVs, VolumeSnapshotContents,
// DataImages.
func driverObjects(c context.Context) ([]string, error) {
	var left []string
	var pvs corev1.PersistentVolumeList
	if err := kube.List(c, &pvs); err != nil {
		return nil, err
	}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == driverName {
			left = append(left, "PersistentVolume "+pv.Name)
		}
	}
	var contents snapshotv1.VolumeSnapshotContentList
	if err := kube.List(c, &contents); err != nil {
		return nil, err
	}
	for _, vsc := range contents.Items {
		if vsc.Spec.Driver == driverName {
			left = append(left, "VolumeSnapshotContent "+vsc.Name)
		}
	}
	var images dataimagev1.DataImageList
	if err := kube.List(c, &images); err != nil {
		return nil, err
	}
	for _, di := range images.Items {
		left = append(left, "DataImage "+di.Namespace+"/"+di.Name)
	}
	return left, nil
}

// leftoverMounts lists a node's mounts (those of mountinfo, a /proc/PID/mountinfo of its mount
// namespace) and the machine's loop devices that belong to Dataimage volumes: CSI staging and
// publishing mounts under the kubelet's directory, FUSE exports and anything else under the
// plugin's export directory, and loop devices over exported files.
func leftoverMounts(t *testing.T, mountinfo string) []string {
	t.Helper()
	var left []string
	info, err := os.ReadFile(mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		point := strings.ReplaceAll(fields[4], `\040`, " ")
		fstype, source := fields[sep+1], fields[sep+2]
		switch {
		case strings.Contains(point, "/kubernetes.io~csi/"),
			strings.HasPrefix(point, filepath.Join(cfg.kubeletDir, "plugins/kubernetes.io/csi")+"/"),
			strings.HasPrefix(point, cfg.exportDir+"/"),
			strings.HasPrefix(fstype, "fuse") && strings.HasPrefix(point, filepath.Dir(cfg.exportDir)+"/"):
			left = append(left, fmt.Sprintf("mount %s (%s from %s)", point, fstype, source))
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range loops {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		back := strings.TrimSpace(string(b))
		dev := filepath.Base(filepath.Dir(filepath.Dir(f)))
		switch {
		case strings.HasPrefix(back, cfg.exportDir+"/") || strings.HasPrefix(back, cfg.state+"/"):
			left = append(left, fmt.Sprintf("loop device /dev/%s over %s", dev, back))
		case !loopsAtStart[dev] && !exists(back):
			// Over a file of a FUSE mount that is gone (the kernel shows its path from the
			// detached mount: "/disk"): an export that went while the device was attached. The
			// data plane's restart in TestRestartsUnderPgbench left two such devices until
			// exports recorded their loop devices (blockstore/export/loop.go, loop records).
			left = append(left, fmt.Sprintf("loop device /dev/%s over %s, a file that is gone", dev, back))
		}
	}
	return left
}

// stopNode stops the node plugin and the data plane (their DaemonSets select no node for a
// while: the data plane's OnDelete strategy replaces no pod on a template change, but a pod
// whose node the template no longer selects is deleted all the same) and starts them again,
// the plugin registered with the kubelet, when t ends.
func stopNode(t *testing.T) {
	t.Helper()
	const pause = "e2e.dataimage.io/plugin-stopped"
	setSelector := func(c context.Context, name string, on bool) error {
		var ds appsv1.DaemonSet
		if err := kube.Get(c, client.ObjectKey{Namespace: cfg.namespace, Name: name}, &ds); err != nil {
			return err
		}
		patch := client.MergeFrom(ds.DeepCopy())
		if on {
			if ds.Spec.Template.Spec.NodeSelector == nil {
				ds.Spec.Template.Spec.NodeSelector = map[string]string{}
			}
			ds.Spec.Template.Spec.NodeSelector[pause] = "true"
		} else {
			delete(ds.Spec.Template.Spec.NodeSelector, pause)
		}
		return kube.Patch(c, &ds, patch)
	}
	sets := []string{cfg.release + "-node", cfg.release + "-dataplane"}
	for _, name := range sets {
		if err := setSelector(ctx(t), name, true); err != nil {
			t.Fatalf("stop DaemonSet %s: %v", name, err)
		}
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), defaultWait)
		defer cancel()
		for _, name := range sets {
			if err := setSelector(c, name, false); err != nil {
				t.Errorf("start DaemonSet %s again: %v", name, err)
				return
			}
		}
		if err := poll(c, func(c context.Context) (bool, string, error) {
			var node storagev1.CSINode
			if err := kube.Get(c, client.ObjectKey{Name: cfg.node}, &node); err != nil {
				return false, "", err
			}
			for _, d := range node.Spec.Drivers {
				if d.Name == driverName {
					return true, "", nil
				}
			}
			return false, "not registered with the kubelet", nil
		}); err != nil {
			t.Errorf("the node plugin did not come back: %v", err)
		}
	})
	for _, component := range []string{"node", "dataplane"} {
		waitFor(t, defaultWait, "the "+component+" pods to stop", func(c context.Context) (bool, string, error) {
			var pods corev1.PodList
			if err := kube.List(c, &pods, client.InNamespace(cfg.namespace), client.MatchingLabels{"app.kubernetes.io/component": component}); err != nil {
				return false, "", err
			}
			var names []string
			for _, p := range pods.Items {
				names = append(names, p.Name+" "+string(p.Status.Phase))
			}
			return len(names) == 0, strings.Join(names, ", "), nil
		})
	}
}

// loopsAtStart are the loop devices attached before the tests ran (loopN), from TestMain.
var loopsAtStart = map[string]bool{}

// recordLoops fills loopsAtStart.
func recordLoops() {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		loopsAtStart[filepath.Base(filepath.Dir(filepath.Dir(f)))] = true
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
