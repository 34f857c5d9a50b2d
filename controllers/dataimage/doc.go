// Package dataimage is the DataImage controller (docs/kubernetes.md, "How an image is built"):
// it turns DataImage resources into VolumeSnapshots that PVCs clone. (The expansion of
// csi.dataimage.io volumes is controllers/resize's; cmd/dataimage-controller runs both.)
//
// Setup adds its reconciler to a controller-runtime manager:
//
//   - DataImages. A new DataImage gets the dataimage.io/clones finalizer, then its spec is
//     validated (the image definition's own validation) and checked against what the
//     configuration allows (v1alpha1.ControllerConfig.Admit: host paths, images); an invalid or
//     refused spec ends in phase Failed with Valid=False (reason InvalidSpec, HostPathNotAllowed
//     or ImageNotAllowed) and nothing created. A valid one gets a build PVC and a build Job
//     (<name>-build, owned by the DataImage), whose pod runs as the engine's server user with
//     no capability and a read-only root file system; phase Building follows the Job's pod:
//     progress from the last build event in its log (LogReader), the result from its
//     termination message (both in the builder's wire format, imagebuilder/builder/wire, read
//     by its rules for other versions: a builder image may be newer). A failure is written to
//     status (Failed, Built=False reason BuildFailed with the step and the engine's log tail)
//     before the Job and PVC are deleted. A success is
//     written to status (Built=True, builtAt, engine version, data-state time) before the
//     VolumeSnapshot <name> is created; once it is ready to use the Job and PVC are deleted and
//     the phase is Ready. At builtAt + lifetime the snapshot is deleted (phase Expired) unless
//     PVCs clone it: then it is kept (Expired reason ClonesExist) until the last clone goes. A
//     deleted DataImage waits the same way for its clones before its snapshot is deleted and its
//     finalizer removed. A Failed DataImage whose spec changes is built again.
//
// Nothing is kept in memory between reconciles: each one reads the DataImage (status included),
// its Job, pod, PVCs and snapshot from the cluster and carries on from there, so a restarted or
// newly elected controller resumes any build. Every side effect that would lose information
// (deleting a finished Job) comes after the status that records it is written.
//
// It must not know the block store, FUSE or the engine adapters: it reaches volumes only through
// Kubernetes objects and reads builds only through their wire format (imagebuilder/builder/wire);
// cmd/dataimage-controller's deps test checks what the binary links.
package dataimage
