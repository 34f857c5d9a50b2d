package v1alpha1

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/dataimage/dataimage/imagebuilder"
)

// Validate checks the spec and reports every problem at once in one
// *imagebuilder.DefinitionError (it matches imagebuilder.ErrInvalidDefinition): first the
// definition's, found by the definition's own code (imagebuilder.Definition.Validate against
// env: the engine versions and the default lifetime the controller serves), then those of the
// fields around it, in field order:
//   - backupSource: required when sourceType is backup, refused when it is empty; exactly one
//     of persistentVolumeClaim, nfs, hostPath; names that are valid Kubernetes names; a
//     hostPath's path absolute and clean;
//   - a hostPath source needs its node: nodeName or backupSource.hostPath.nodeName, the same
//     node when both are set (the image is built where the backups are);
//   - nodeName and storageClassName valid names; volumeSize positive;
//   - builder: activeDeadlineSeconds positive.
//
// Backup and script paths are checked for their form only (env.CheckPaths is ignored): the
// backups are reachable from the build Job, not from where a DataImage is validated; the build
// checks that they exist.
func (s *DataImageSpec) Validate(env imagebuilder.ValidationEnv) error {
	env.CheckPaths = false
	var ps []*imagebuilder.FieldError
	if err := s.Definition.Validate(env); err != nil {
		var de *imagebuilder.DefinitionError
		if !errors.As(err, &de) {
			return fmt.Errorf("v1alpha1: validate image definition: %w", err)
		}
		ps = append(ps, de.Problems...)
	}
	add := func(field, format string, args ...any) {
		ps = append(ps, &imagebuilder.FieldError{Field: field, Rule: fmt.Sprintf(format, args...)})
	}

	source := s.NormalizedSourceType()
	switch {
	case source == imagebuilder.SourceBackup && s.BackupSource == nil:
		add("backupSource", "required when sourceType is backup")
	case source == imagebuilder.SourceEmpty && s.BackupSource != nil:
		add("backupSource", "not allowed when sourceType is empty")
	case s.BackupSource != nil:
		s.BackupSource.validate(add, s.NodeName)
	}
	if s.NodeName != "" {
		checkName(add, "nodeName", s.NodeName)
	}
	if s.StorageClassName != nil {
		checkName(add, "storageClassName", *s.StorageClassName)
	}
	if s.VolumeSize != nil && s.VolumeSize.Sign() <= 0 {
		add("volumeSize", "must be positive, got %s", s.VolumeSize.String())
	}
	if b := s.Builder; b != nil && b.ActiveDeadlineSeconds != nil && *b.ActiveDeadlineSeconds <= 0 {
		add("builder.activeDeadlineSeconds", "must be positive, got %d", *b.ActiveDeadlineSeconds)
	}
	if len(ps) == 0 {
		return nil
	}
	return &imagebuilder.DefinitionError{Problems: ps}
}

func (b *BackupSource) validate(add func(field, format string, args ...any), nodeName string) {
	var set []string
	if b.PersistentVolumeClaim != nil {
		set = append(set, "persistentVolumeClaim")
		checkName(add, "backupSource.persistentVolumeClaim.claimName", b.PersistentVolumeClaim.ClaimName)
	}
	if b.NFS != nil {
		set = append(set, "nfs")
		if b.NFS.Server == "" {
			add("backupSource.nfs.server", "required")
		}
		if !path.IsAbs(b.NFS.Path) {
			add("backupSource.nfs.path", "must be an absolute path, got %q", b.NFS.Path)
		}
	}
	if h := b.HostPath; h != nil {
		set = append(set, "hostPath")
		if !path.IsAbs(h.Path) || path.Clean(h.Path) != h.Path {
			add("backupSource.hostPath.path", "must be an absolute, clean path, got %q", h.Path)
		}
		switch {
		case h.NodeName != "":
			checkName(add, "backupSource.hostPath.nodeName", h.NodeName)
			if nodeName != "" && nodeName != h.NodeName {
				add("backupSource.hostPath.nodeName", "must be nodeName (%q) when both are set, got %q", nodeName, h.NodeName)
			}
		case nodeName == "":
			add("backupSource.hostPath.nodeName", "required when nodeName is empty: a host path is on one node")
		}
	}
	if len(set) != 1 {
		add("backupSource", "exactly one of persistentVolumeClaim, nfs and hostPath must be set, got %d%s", len(set), listed(set))
	}
}

// checkName checks a Kubernetes object name (a DNS subdomain: nodes, claims, storage classes).
func checkName(add func(field, format string, args ...any), field, name string) {
	if name == "" {
		add(field, "required")
		return
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		add(field, "must be a valid Kubernetes name, got %q: %s", name, strings.Join(errs, "; "))
	}
}

func listed(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}
