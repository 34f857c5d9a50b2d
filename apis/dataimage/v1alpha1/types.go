package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dataimage/dataimage/imagebuilder"
)

// DataImage is a data image declared in Kubernetes: a frozen snapshot of a whole database
// instance, built from an image definition on a cloning node and published as a VolumeSnapshot
// that PVCs and StatefulSets clone.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=di,categories=dataimage
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Engine",type=string,JSONPath=`.spec.engine`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.engineVersion`
// +kubebuilder:printcolumn:name="Size",type=string,JSONPath=`.status.size`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Expires",type=string,format=date-time,JSONPath=`.status.expiresAt`
// +kubebuilder:printcolumn:name="Node",type=string,priority=1,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Snapshot",type=string,priority=1,JSONPath=`.status.volumeSnapshotName`
// +kubebuilder:printcolumn:name="Clones",type=integer,priority=1,JSONPath=`.status.clones`
// +kubebuilder:printcolumn:name="Step",type=string,priority=1,JSONPath=`.status.step`
type DataImage struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DataImageSpec   `json:"spec"`
	Status DataImageStatus `json:"status,omitempty"`
}

// DataImageList is a list of DataImages.
//
// +kubebuilder:object:root=true
type DataImageList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []DataImage `json:"items"`
}

// DataImageSpec is an image definition (its fields inline, as in a definition file) plus where
// the backups are and where the image is built. Backup and script paths of the definition are
// relative to the root of BackupSource.
//
// +kubebuilder:object:generate=false
// +kubebuilder:validation:XValidation:rule="!has(self.backupSource) || !has(self.backupSource.hostPath) || !has(self.backupSource.hostPath.nodeName) || !has(self.nodeName) || self.nodeName == self.backupSource.hostPath.nodeName",message="nodeName and backupSource.hostPath.nodeName must name the same node"
type DataImageSpec struct {
	// Definition is the image definition: name, engine, version, sourceType, backups, tags,
	// lifetime, initialDatabaseName, preScript, postScript. It is validated by the same code as a
	// definition file (imagebuilder.Definition.Validate) before anything is built.
	imagebuilder.Definition `json:",inline"`

	// BackupSource is where the backups and scripts are. Required when sourceType is backup.
	// +optional
	BackupSource *BackupSource `json:"backupSource,omitempty"`

	// NodeName is the cloning node that builds the image and holds it; clones of the image are
	// made on that node. When empty: the node of backupSource.hostPath.nodeName if set, else the
	// node the scheduler picks for the build among the cloning nodes where the backup source is
	// usable (a backup PVC's own node affinity counts). status.nodeName says which node it is.
	// +optional
	NodeName string `json:"nodeName,omitempty"`

	// StorageClassName is the class of the build PVC: a class of the csi.dataimage.io driver.
	// Default: the controller's (--storage-class, "dataimage" as installed).
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`

	// VolumeSize is the size of the build volume, and so the size of every clone of the image
	// (clones can be expanded later). Default: the controller's (--default-volume-size).
	// +optional
	VolumeSize *resource.Quantity `json:"volumeSize,omitempty"`

	// Builder overrides how the build Job runs.
	// +optional
	Builder *BuilderSpec `json:"builder,omitempty"`
}

// BackupSource says where the backups are: exactly one of its sources. The source's root is
// the definition's backup root; it is mounted read-only into the build.
//
// +kubebuilder:validation:XValidation:rule="(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.nfs) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) == 1",message="exactly one of persistentVolumeClaim, nfs and hostPath must be set"
type BackupSource struct {
	// PersistentVolumeClaim is a claim in the DataImage's namespace that holds the backups.
	// +optional
	PersistentVolumeClaim *PVCBackupSource `json:"persistentVolumeClaim,omitempty"`
	// NFS is an NFS share that holds the backups.
	// +optional
	NFS *NFSBackupSource `json:"nfs,omitempty"`
	// HostPath is a directory on a cloning node that holds the backups. It must be under one
	// of the directories the controller's configuration allows (allowedHostPaths; none by
	// default).
	// +optional
	HostPath *HostPathBackupSource `json:"hostPath,omitempty"`
}

// PVCBackupSource names a PersistentVolumeClaim that holds backups.
type PVCBackupSource struct {
	// ClaimName is the claim's name, in the DataImage's namespace.
	// +kubebuilder:validation:MinLength=1
	ClaimName string `json:"claimName"`
	// ReadOnly mounts the claim read-only (the build never writes to its backups). Default
	// true; false lets a ReadWriteOnce claim already mounted read-write on the same node be
	// used.
	// +optional
	// +kubebuilder:default=true
	ReadOnly *bool `json:"readOnly,omitempty"`
}

// NFSBackupSource is an NFS export that holds backups.
type NFSBackupSource struct {
	// Server is the NFS server's host name or IP address.
	// +kubebuilder:validation:MinLength=1
	Server string `json:"server"`
	// Path is the exported path.
	// +kubebuilder:validation:MinLength=1
	Path string `json:"path"`
}

// HostPathBackupSource is a directory on one node that holds backups.
type HostPathBackupSource struct {
	// Path is the directory's absolute path on the node.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:Pattern=`^/`
	Path string `json:"path"`
	// NodeName is the node that has the directory; the image is built and held there. Default:
	// spec.nodeName (one of the two is required).
	// +optional
	NodeName string `json:"nodeName,omitempty"`
}

// BuilderSpec overrides the build Job of one image. The build runs in the engine's container
// image, with the builder binary copied in by an init container from the builder image, as the
// engine's server user of the controller's configuration (never root).
type BuilderSpec struct {
	// EngineImage is the container image the build runs in. Default: the controller's image
	// for the engine and the resolved version, e.g. docker.io/library/postgres:16. It must be
	// one of the controller's own images or match its allowedImages, and have the engine's
	// server user at the uid the controller's configuration gives the engine.
	// +optional
	EngineImage string `json:"engineImage,omitempty"`
	// Image is the image that supplies the builder binary. Default: the controller's. It must
	// be the controller's own or match its allowedImages.
	// +optional
	Image string `json:"image,omitempty"`
	// Resources of the build container. Default: the controller's.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
	// ActiveDeadlineSeconds bounds the build's duration (the Job's activeDeadlineSeconds).
	// +optional
	// +kubebuilder:validation:Minimum=1
	ActiveDeadlineSeconds *int64 `json:"activeDeadlineSeconds,omitempty"`
}

// DataImagePhase is where a DataImage is in its life.
//
// +kubebuilder:validation:Enum=Pending;Building;Ready;Failed;Expired
type DataImagePhase string

// The phases of a DataImage.
const (
	// PhasePending: accepted, the build has not started (validating, waiting for a node).
	PhasePending DataImagePhase = "Pending"
	// PhaseBuilding: the build Job runs; status.step, bytesDone and bytesTotal follow it.
	PhaseBuilding DataImagePhase = "Building"
	// PhaseReady: the image's VolumeSnapshot is ready to clone.
	PhaseReady DataImagePhase = "Ready"
	// PhaseFailed: the spec is invalid or the build failed; the Ready condition says why.
	// Nothing of the build is left behind.
	PhaseFailed DataImagePhase = "Failed"
	// PhaseExpired: the lifetime has passed. The VolumeSnapshot is deleted once no PVC cloned
	// from it is left; until then the Expired condition says what keeps it.
	PhaseExpired DataImagePhase = "Expired"
)

// The condition types of a DataImage.
const (
	// ConditionValid: the spec passed validation (False: the message lists every problem).
	ConditionValid = "Valid"
	// ConditionBuilt: the build Job finished (False with reason BuildFailed: the message has the
	// step that failed and the tail of the engine's log).
	ConditionBuilt = "Built"
	// ConditionReady: the image's VolumeSnapshot is ready to use.
	ConditionReady = "Ready"
	// ConditionExpired: the lifetime has passed (reason ClonesExist while clones keep the
	// snapshot, SnapshotDeleted once it is gone).
	ConditionExpired = "Expired"
)

// Reasons used in the conditions.
const (
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonHostPathNotAllowed (Valid=False, and the Event): backupSource.hostPath.path is not
	// under the controller's allowedHostPaths.
	ReasonHostPathNotAllowed = "HostPathNotAllowed"
	// ReasonImageNotAllowed (Valid=False, and the Event): builder.image or builder.engineImage
	// is neither one of the controller's own images nor in its allowedImages.
	ReasonImageNotAllowed = "ImageNotAllowed"

	ReasonBuilding        = "Building"
	ReasonBuildFailed     = "BuildFailed"
	ReasonSnapshotPending = "SnapshotPending"
	ReasonSnapshotReady   = "SnapshotReady"
	ReasonClonesExist     = "ClonesExist"
	ReasonSnapshotDeleted = "SnapshotDeleted"
)

// Labels, annotations and the finalizer the controller puts on the objects it makes.
const (
	// LabelImage names the DataImage a VolumeSnapshot, build PVC or build Job belongs to.
	LabelImage = "dataimage.io/image"
	// LabelTagPrefix + tag is a label (value "") on the image's VolumeSnapshot for each tag that
	// is a valid label name; AnnotationTags holds all of them.
	LabelTagPrefix = "tag.dataimage.io/"
	// AnnotationTags is the image's tags, as a JSON array, on its VolumeSnapshot.
	AnnotationTags = "dataimage.io/tags"
	// AnnotationEngine is the engine (postgres, mysql, mariadb) on the VolumeSnapshot.
	AnnotationEngine = "dataimage.io/engine"
	// AnnotationEngineVersion is the engine version the image was built with.
	AnnotationEngineVersion = "dataimage.io/engine-version"
	// AnnotationDataStateTime is the point in time the image's data holds (RFC 3339).
	AnnotationDataStateTime = "dataimage.io/data-state-time"
	// AnnotationLogPosition is the engine's log position the image's data stands at, e.g.
	// "LSN 0/3000060" or "GTID 0-1-42, binlog mariadb-bin.000003:1234".
	AnnotationLogPosition = "dataimage.io/log-position"
	// Finalizer keeps a DataImage, and the VolumeSnapshot it owns, while PVCs cloned from the
	// snapshot exist.
	Finalizer = "dataimage.io/clones"
)

// DataImageStatus is what the controller observed and did.
type DataImageStatus struct {
	// ObservedGeneration is the metadata.generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase is where the image is in its life.
	// +optional
	Phase DataImagePhase `json:"phase,omitempty"`
	// Conditions: Valid, Built, Ready, Expired.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
	// Step is the build step running or the last one run: volume, filesystem, init, restore,
	// start, prescript, postscript, checkpoint, stop, freeze.
	// +optional
	Step string `json:"step,omitempty"`
	// BytesDone and BytesTotal are bytes of backup restored so far and in all (0 when the step
	// has no byte count).
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// +optional
	BytesTotal int64 `json:"bytesTotal,omitempty"`
	// NodeName is the node that holds the image.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
	// BuildJobName is the build Job (while it exists).
	// +optional
	BuildJobName string `json:"buildJobName,omitempty"`
	// VolumeSnapshotName is the VolumeSnapshot that is the image, in the same namespace: the
	// dataSource of the PVCs that clone it.
	// +optional
	VolumeSnapshotName string `json:"volumeSnapshotName,omitempty"`
	// EngineVersion is the full engine version the image was built with, e.g. "16.4".
	// +optional
	EngineVersion string `json:"engineVersion,omitempty"`
	// Size is the image's volume size (the size of a new clone).
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`
	// DataStateTime is the point in time the image's data holds.
	// +optional
	DataStateTime *metav1.Time `json:"dataStateTime,omitempty"`
	// LogPosition is the engine's log position the image's data stands at, as the engine
	// names it: "LSN 0/3000060" (PostgreSQL), "GTID 0-1-42, binlog mariadb-bin.000003:1234"
	// (MariaDB); empty when the backup does not say.
	// +optional
	LogPosition string `json:"logPosition,omitempty"`
	// BuiltAt is when the build finished.
	// +optional
	BuiltAt *metav1.Time `json:"builtAt,omitempty"`
	// ExpiresAt is when the lifetime ends; absent for an image that never expires.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
	// Clones counts the PVCs cloned from the image's VolumeSnapshot that exist.
	// +optional
	Clones int32 `json:"clones,omitempty"`
	// Message says, for people, what is happening or what went wrong.
	// +optional
	Message string `json:"message,omitempty"`
}
