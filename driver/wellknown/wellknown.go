// Package wellknown holds the names by which Kubernetes knows the Dataimage CSI driver: the CSI
// driver name and the topology key of its volumes. StorageClasses, PersistentVolumes,
// VolumeSnapshotClasses, CSINode objects and node selectors name them, so they are part of the
// product's interface and never change.
//
// It is a leaf: it imports nothing. The driver takes its defaults from here, and the Kubernetes
// controllers name the driver through it without importing the driver, and with it the block
// store and FUSE.
package wellknown

const (
	// DriverName is the CSI driver's name (GetPluginInfo; a PV's spec.csi.driver, a
	// StorageClass's provisioner).
	DriverName = "csi.dataimage.io"
	// TopologyKey is the topology segment key of every volume and snapshot: its value is the
	// node whose pool holds it (a node label the kubelet sets from NodeGetInfo).
	TopologyKey = "topology.dataimage.io/node"
)
