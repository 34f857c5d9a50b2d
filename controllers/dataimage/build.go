package dataimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/driver/wellknown"
	"github.com/dataimage/dataimage/imagebuilder"
)

// The build pod's layout (docs/kubernetes.md, "How an image is built"): the builder binary is
// copied by the init container into builder-bin, and the build container runs it in the
// engine's image with the build PVC at /data and the backups at /backups. The root file system
// is read-only: what the build writes besides /data goes to two empty directories, tmp (the
// temporary directory of the builder and the engine's tools) and run (the server's runtime
// directory: socket, log, pid file, access rules).
const (
	initContainerName  = "install-builder"
	buildContainerName = "build"
	builderBinVolume   = "builder-bin"
	builderBinDir      = "/dataimage/bin"
	builderBinary      = builderBinDir + "/dataimage-builder"
	dataVolume         = "data"
	dataDir            = "/data"
	backupsVolume      = "backups"
	backupsDir         = "/backups"
	tmpVolume          = "tmp"
	tmpDir             = "/tmp"
	runVolume          = "run"
	runDir             = "/run/dataimage"
	// runtimeDir is the builder's --runtime-dir, made by the builder (as the engine's user)
	// in the run volume.
	runtimeDir = runDir + "/build"
	// buildSuffix names the build PVC and Job after the DataImage: <name>-build.
	buildSuffix = "-build"
	// maxImageName keeps <name>-build within 63 characters: the Job's name is a label value
	// of its pods (job-name).
	maxImageName = 63 - len(buildSuffix)
)

// buildName is the name of a DataImage's build PVC and build Job.
func buildName(di *v1alpha1.DataImage) string { return di.Name + buildSuffix }

// plan is what a build needs, resolved from a valid spec and the configuration.
type plan struct {
	engine        imagebuilder.Engine
	version       string // the available version the definition's version matches
	engineImage   string
	builderImage  string
	builderPull   corev1.PullPolicy
	storageClass  string
	size          resource.Quantity
	node          string // "" when the scheduler picks it
	deadline      *int64
	resources     corev1.ResourceRequirements
	definitionArg string // the definition as JSON, for --definition-json
	// runAsUser and runAsGroup are the engine's server user in its image: the build runs as
	// them.
	runAsUser, runAsGroup int64
}

// refusedError is a spec that the controller's configuration does not allow: each value
// refused (*v1alpha1.NotAllowedError), and the spec's own problems when it has some too. It
// matches v1alpha1.ErrNotAllowed.
type refusedError struct {
	notAllowed []*v1alpha1.NotAllowedError
	spec       *imagebuilder.DefinitionError // nil when the spec is otherwise valid
}

func (e *refusedError) Error() string {
	msgs := make([]string, 0, len(e.notAllowed)+1)
	for _, na := range e.notAllowed {
		msgs = append(msgs, na.Error())
	}
	if e.spec != nil {
		msgs = append(msgs, e.spec.Error())
	}
	return strings.Join(msgs, "; ")
}

func (e *refusedError) Unwrap() error { return v1alpha1.ErrNotAllowed }

// notes are the Events of a refusal: one per reason (an Event with the reason of an earlier
// one about the same DataImage is only counted by the events API, its note dropped), each
// naming the rule and every value it refuses.
func (e *refusedError) notes() []note {
	var notes []note
	for _, na := range e.notAllowed {
		i := slices.IndexFunc(notes, func(n note) bool { return n.reason == na.Reason })
		if i < 0 {
			notes = append(notes, note{reason: na.Reason, text: na.Error()})
			continue
		}
		notes[i].text += "; " + na.Error()
	}
	return notes
}

// makePlan checks the spec against what the configuration allows (v1alpha1.ControllerConfig.Admit),
// validates it (with the same code as a definition file) and resolves what the build needs.
// A value the configuration does not allow is a *refusedError (which lists the spec's other
// problems too); a spec error alone matches imagebuilder.ErrInvalidDefinition and lists every
// problem.
func (r *reconciler) makePlan(di *v1alpha1.DataImage) (*plan, error) {
	notAllowed := r.cfg.Admit(&di.Spec)
	var ps []*imagebuilder.FieldError
	if err := di.Spec.Validate(r.env); err != nil {
		var de *imagebuilder.DefinitionError
		if !errors.As(err, &de) {
			return nil, err
		}
		ps = append(ps, de.Problems...)
	}
	if len(di.Name) > maxImageName {
		ps = append(ps, &imagebuilder.FieldError{Field: "metadata.name",
			Rule: fmt.Sprintf("must be at most %d characters (the build Job is named <name>%s), got %d", maxImageName, buildSuffix, len(di.Name))})
	}
	var specErr *imagebuilder.DefinitionError
	if len(ps) > 0 {
		specErr = &imagebuilder.DefinitionError{Problems: ps}
	}
	switch {
	case len(notAllowed) > 0:
		return nil, &refusedError{notAllowed: notAllowed, spec: specErr}
	case specErr != nil:
		return nil, specErr
	}
	s := &di.Spec
	p := &plan{engine: s.NormalizedEngine(), builderImage: r.cfg.Builder.Image, builderPull: r.cfg.Builder.PullPolicy,
		storageClass: r.cfg.StorageClassName, size: r.cfg.DefaultVolumeSize.DeepCopy(), node: s.NodeName,
		resources: *r.cfg.BuildResources.DeepCopy()}
	v, err := s.ResolveVersion(r.env)
	if err != nil {
		return nil, err
	}
	p.version = v
	p.engineImage, _ = r.cfg.EngineImage(p.engine, v)
	e := r.cfg.Engines[string(p.engine)] // Validate checked that the engine is served
	p.runAsUser, p.runAsGroup = e.RunAsUser, e.RunAsGroup
	if r.cfg.BuildActiveDeadlineSeconds > 0 {
		p.deadline = ptr.To(r.cfg.BuildActiveDeadlineSeconds)
	}
	if s.StorageClassName != nil {
		p.storageClass = *s.StorageClassName
	}
	if s.VolumeSize != nil {
		p.size = s.VolumeSize.DeepCopy()
	}
	if p.node == "" && s.BackupSource != nil && s.BackupSource.HostPath != nil {
		p.node = s.BackupSource.HostPath.NodeName
	}
	if b := s.Builder; b != nil {
		if b.EngineImage != "" {
			p.engineImage = b.EngineImage
		}
		if b.Image != "" {
			p.builderImage = b.Image
		}
		if b.Resources != nil {
			p.resources = *b.Resources.DeepCopy()
		}
		if b.ActiveDeadlineSeconds != nil {
			p.deadline = ptr.To(*b.ActiveDeadlineSeconds)
		}
	}
	def, err := json.Marshal(s.Definition)
	if err != nil {
		return nil, fmt.Errorf("controller: encode definition of %s/%s: %w", di.Namespace, di.Name, err)
	}
	p.definitionArg = string(def)
	return p, nil
}

// ownerRef makes di the controlling owner of a build object.
func ownerRef(di *v1alpha1.DataImage) metav1.OwnerReference {
	return *metav1.NewControllerRef(di, v1alpha1.SchemeGroupVersion.WithKind("DataImage"))
}

// buildClaim is the build PVC: the volume the image is built in, and the VolumeSnapshot's
// source.
func buildClaim(di *v1alpha1.DataImage, p *plan) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:            buildName(di),
			Namespace:       di.Namespace,
			Labels:          map[string]string{v1alpha1.LabelImage: di.Name},
			OwnerReferences: []metav1.OwnerReference{ownerRef(di)},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(p.storageClass),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:       ptr.To(corev1.PersistentVolumeFilesystem),
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: p.size},
			},
		},
	}
}

// builderArgs are the arguments of dataimage-builder in the build container, agreed with
// cmd/dataimage-builder: the definition as JSON, the data root, the backup root, the runtime
// directory, JSON events.
func builderArgs(p *plan) []string {
	return []string{"--definition-json", p.definitionArg, "--root", dataDir, "--backup-root", backupsDir,
		"--runtime-dir", runtimeDir, "--output", "json"}
}

// podSecurity is the build pod's security context: the engine's server user, never root, with
// the build volume (and the empty directories) given to its group by the kubelet (fsGroup;
// the CSIDriver's fsGroupPolicy is File), and the runtime's default seccomp profile.
func podSecurity(p *plan) *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsNonRoot:        ptr.To(true),
		RunAsUser:           ptr.To(p.runAsUser),
		RunAsGroup:          ptr.To(p.runAsGroup),
		FSGroup:             ptr.To(p.runAsGroup),
		FSGroupChangePolicy: ptr.To(corev1.FSGroupChangeOnRootMismatch),
		SeccompProfile:      &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// containerSecurity is the security context of both containers of the build pod: no
// capability, no privilege escalation (setuid binaries of the engine's image do nothing), a
// read-only root file system.
func containerSecurity() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
}

// backupsSource is the volume mounted read-only at /backups: the backup source, or an empty
// directory for an image of sourceType empty (the builder's backup root exists either way).
func backupsSource(di *v1alpha1.DataImage) corev1.VolumeSource {
	b := di.Spec.BackupSource
	switch {
	case b == nil:
		return corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	case b.PersistentVolumeClaim != nil:
		ro := b.PersistentVolumeClaim.ReadOnly == nil || *b.PersistentVolumeClaim.ReadOnly
		return corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
			ClaimName: b.PersistentVolumeClaim.ClaimName, ReadOnly: ro}}
	case b.NFS != nil:
		return corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: b.NFS.Server, Path: b.NFS.Path, ReadOnly: true}}
	default:
		return corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: b.HostPath.Path,
			Type: ptr.To(corev1.HostPathDirectory)}}
	}
}

// buildJob is the build Job: one pod, never retried (a failed build leaves a half-restored
// volume; the DataImage reports the failure instead).
func (r *reconciler) buildJob(di *v1alpha1.DataImage, p *plan) *batchv1.Job {
	nodeSelector := maps.Clone(r.cfg.BuildNodeSelector)
	if p.node != "" {
		if nodeSelector == nil {
			nodeSelector = map[string]string{}
		}
		nodeSelector[wellknown.TopologyKey] = p.node
	}
	lbls := map[string]string{v1alpha1.LabelImage: di.Name}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:            buildName(di),
			Namespace:       di.Namespace,
			Labels:          lbls,
			OwnerReferences: []metav1.OwnerReference{ownerRef(di)},
		},
		Spec: batchv1.JobSpec{
			BackoffLimit:          ptr.To[int32](0),
			ActiveDeadlineSeconds: p.deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: maps.Clone(lbls)},
				Spec: corev1.PodSpec{
					RestartPolicy:                 corev1.RestartPolicyNever,
					NodeSelector:                  nodeSelector,
					Tolerations:                   append([]corev1.Toleration(nil), r.cfg.BuildTolerations...),
					AutomountServiceAccountToken:  ptr.To(false),
					EnableServiceLinks:            ptr.To(false),
					TerminationGracePeriodSeconds: ptr.To[int64](60),
					SecurityContext:               podSecurity(p),
					Volumes: []corev1.Volume{
						{Name: builderBinVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
						{Name: dataVolume, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: buildName(di)}}},
						{Name: backupsVolume, VolumeSource: backupsSource(di)},
						{Name: tmpVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
						{Name: runVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					},
					InitContainers: []corev1.Container{{
						// The builder image's default command copies its static binary into
						// builderBinDir (cmd/dataimage-builder/Containerfile).
						Name:            initContainerName,
						Image:           p.builderImage,
						ImagePullPolicy: p.builderPull,
						SecurityContext: containerSecurity(),
						VolumeMounts:    []corev1.VolumeMount{{Name: builderBinVolume, MountPath: builderBinDir}},
					}},
					Containers: []corev1.Container{{
						Name:    buildContainerName,
						Image:   p.engineImage,
						Command: []string{builderBinary},
						Args:    builderArgs(p),
						// The engine's user, as the pod: the builder runs the server and its
						// tools as itself.
						SecurityContext:          containerSecurity(),
						Resources:                p.resources,
						TerminationMessagePath:   corev1.TerminationMessagePathDefault,
						TerminationMessagePolicy: corev1.TerminationMessageReadFile,
						VolumeMounts: []corev1.VolumeMount{
							{Name: builderBinVolume, MountPath: builderBinDir, ReadOnly: true},
							{Name: dataVolume, MountPath: dataDir},
							{Name: backupsVolume, MountPath: backupsDir, ReadOnly: true},
							{Name: tmpVolume, MountPath: tmpDir},
							{Name: runVolume, MountPath: runDir},
						},
					}},
				},
			},
		},
	}
}
