// Package v1alpha1 is the dataimage.io/v1alpha1 API: the DataImage resource, a data image
// declared in Kubernetes.
//
// A DataImage's spec is an image definition (imagebuilder.Definition, the same Go type and the
// same validation as a definition file) plus where the backups are and which node builds and
// holds the image. Its controller builds the image with a Job on a cloning node, publishes it as
// a VolumeSnapshot (the snapshot is the image: PVCs and StatefulSets clone it through their
// dataSource), reports progress in status and deletes the snapshot when the image's lifetime
// ends and no clone of it is left.
//
// The CRD (deploy/crd/, charts/dataimage/files/crds/) and zz_generated.deepcopy.go are
// generated from these types by controller-gen: run `make manifests` after changing them.
//
// +kubebuilder:object:generate=true
// +groupName=dataimage.io
//
// It must not know how images are built, stored or served (no store, driver, builder or controller
// code): it is data, imported by every controller and client.
package v1alpha1
