package v1alpha1

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/distribution/reference"
)

// What a cluster's admin allows DataImages to use (docs/kubernetes.md, "What an admin allows"),
// set in the controller's configuration:
//
//   - allowedHostPaths: the host directories a backupSource.hostPath may name, each with
//     everything under it. A path is compared component by component after a check that it
//     has no ".." component and is absolute: "/srv/backups" allows "/srv/backups" and
//     "/srv/backups/sales", not "/srv/backups2" nor "/srv/backups/../../etc". Empty (the
//     default): every hostPath source is refused.
//   - allowedImages: the images builder.image and builder.engineImage may name, besides the
//     controller's own (builder.image and every engine's image at every listed version of the
//     configuration), which are always allowed. Each entry is one of
//     "REF" (exactly that image: a name with a tag or a digest; no tag means :latest),
//     "NAME:*" (any tag or digest of the repository NAME), or
//     "REGISTRY/PATH/*" (any repository under that path of that registry, at any tag or
//     digest; it must start with a registry host, e.g. "registry.example/team/*" or
//     "docker.io/library/*").
//     References are compared as the container runtime reads them (docker's normalization:
//     "postgres:16" is "docker.io/library/postgres:16"; a reference with a tag and a digest
//     is its digest).
//
// The controller checks a DataImage against them before it creates anything; a refusal is a
// *NotAllowedError for each value, which names the rule and the value.

// The rules of the controller's configuration that a refusal names.
const (
	RuleAllowedHostPaths = "allowedHostPaths"
	RuleAllowedImages    = "allowedImages"
)

// NotAllowedError is a value of a DataImage's spec that the controller's configuration does not
// allow. It matches ErrNotAllowed.
type NotAllowedError struct {
	// Field is the spec's field, e.g. backupSource.hostPath.path.
	Field string
	// Value is the offending value, as the spec gives it.
	Value string
	// Rule is the configuration's rule: RuleAllowedHostPaths or RuleAllowedImages.
	Rule string
	// Reason is the condition reason that names the rule: ReasonHostPathNotAllowed or
	// ReasonImageNotAllowed.
	Reason string
	// Why says what the value breaks, e.g. "it is not under an allowed prefix (/srv/backups)".
	Why string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("%s %q is not allowed (controller configuration, %s): %s", e.Field, e.Value, e.Rule, e.Why)
}

func (e *NotAllowedError) Unwrap() error { return ErrNotAllowed }

// Admit checks the values of s that the cluster's admin must allow (backupSource.hostPath.path,
// builder.image, builder.engineImage) and returns one error per value refused, in field order;
// nil when s may be built. It needs a configuration that passed Validate.
func (c *ControllerConfig) Admit(s *DataImageSpec) []*NotAllowedError {
	var errs []*NotAllowedError
	if b := s.BackupSource; b != nil && b.HostPath != nil {
		if why := c.hostPathRefusal(b.HostPath.Path); why != "" {
			errs = append(errs, &NotAllowedError{Field: "backupSource.hostPath.path", Value: b.HostPath.Path,
				Rule: RuleAllowedHostPaths, Reason: ReasonHostPathNotAllowed, Why: why})
		}
	}
	if b := s.Builder; b != nil {
		for _, f := range []struct{ field, value string }{{"builder.image", b.Image}, {"builder.engineImage", b.EngineImage}} {
			if f.value == "" {
				continue
			}
			if why := c.imageRefusal(f.value); why != "" {
				errs = append(errs, &NotAllowedError{Field: f.field, Value: f.value,
					Rule: RuleAllowedImages, Reason: ReasonImageNotAllowed, Why: why})
			}
		}
	}
	return errs
}

// hostPathRefusal says why p is not an allowed host path, or "" when it is.
func (c *ControllerConfig) hostPathRefusal(p string) string {
	switch {
	case !path.IsAbs(p):
		return "it is not an absolute path"
	case slices.Contains(strings.Split(p, "/"), ".."):
		// Refused before cleaning: the path the kubelet mounts is the spec's, and a ".."
		// says someone tries to leave a directory.
		return `it has a ".." component`
	case len(c.AllowedHostPaths) == 0:
		return "no host path is allowed (allowedHostPaths is empty): use a persistentVolumeClaim or nfs source"
	}
	clean := path.Clean(p)
	for _, prefix := range c.AllowedHostPaths {
		if underPrefix(clean, prefix) {
			return ""
		}
	}
	return fmt.Sprintf("it is not under an allowed prefix (%s)", strings.Join(c.AllowedHostPaths, ", "))
}

// underPrefix reports whether the clean absolute path p is prefix or under it, by whole
// components: "/data" holds "/data/x", not "/database". prefix is clean and not "/"
// (Validate).
func underPrefix(p, prefix string) bool {
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// imageRefusal says why image is not allowed, or "" when it is.
func (c *ControllerConfig) imageRefusal(image string) string {
	ref, err := reference.ParseDockerRef(image)
	if err != nil {
		return fmt.Sprintf("it is not a valid image reference: %v", err)
	}
	for _, own := range c.ownImages() {
		if o, err := reference.ParseDockerRef(own); err == nil && o.String() == ref.String() {
			return ""
		}
	}
	for _, entry := range c.AllowedImages {
		if p, err := parseImagePattern(entry); err == nil && p.matches(ref) {
			return ""
		}
	}
	allowed := "no other image is allowed (allowedImages is empty)"
	if len(c.AllowedImages) > 0 {
		allowed = "it matches no entry of allowedImages (" + strings.Join(c.AllowedImages, ", ") + ")"
	}
	return fmt.Sprintf("%s is not one of the controller's own images, and %s", ref.String(), allowed)
}

// ownImages are the images the controller uses by itself: the builder image and every engine's
// image at each of its versions.
func (c *ControllerConfig) ownImages() []string {
	images := []string{c.Builder.Image}
	for _, e := range c.Engines {
		for _, v := range e.Versions {
			images = append(images, strings.ReplaceAll(e.Image, "{version}", v))
		}
	}
	return images
}

// imagePattern is one entry of allowedImages; exactly one of its fields is set.
type imagePattern struct {
	exact  string // a whole reference, normalized
	repo   string // a repository name, normalized: any tag or digest of it
	prefix string // a registry path ending in "/": any repository under it
}

// parseImagePattern parses an entry of allowedImages.
func parseImagePattern(s string) (imagePattern, error) {
	switch {
	case strings.HasSuffix(s, "/*"):
		// The prefix must stay as written once normalized: "library/*" would be read as
		// docker.io/library/..., "docker.io/*" as docker.io/library/..., which the entry does
		// not say.
		prefix := strings.TrimSuffix(s, "*")
		host, _, _ := strings.Cut(prefix, "/")
		n, err := reference.ParseNormalizedNamed(prefix + "x")
		if err != nil || !isRegistryHost(host) || n.Name() != prefix+"x" {
			return imagePattern{}, fmt.Errorf("%q: REGISTRY/PATH/* must start with a registry host and name a repository path as written (e.g. registry.example/team/* or docker.io/library/*)", s)
		}
		return imagePattern{prefix: prefix}, nil
	case strings.HasSuffix(s, ":*"):
		n, err := reference.ParseNormalizedNamed(strings.TrimSuffix(s, ":*"))
		if err != nil {
			return imagePattern{}, fmt.Errorf("%q: %w", s, err)
		}
		if !reference.IsNameOnly(n) {
			return imagePattern{}, fmt.Errorf("%q: NAME:* takes a repository name without a tag or digest", s)
		}
		return imagePattern{repo: n.Name()}, nil
	case strings.Contains(s, "*"):
		return imagePattern{}, fmt.Errorf("%q: * may only end an entry, as NAME:* or REGISTRY/PATH/*", s)
	}
	n, err := reference.ParseDockerRef(s)
	if err != nil {
		return imagePattern{}, fmt.Errorf("%q: %w", s, err)
	}
	return imagePattern{exact: n.String()}, nil
}

// isRegistryHost reports whether the first component of a name is a registry host, as docker
// reads it: it has a dot or a port, or is localhost.
func isRegistryHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

func (p imagePattern) matches(ref reference.Named) bool {
	switch {
	case p.exact != "":
		return ref.String() == p.exact
	case p.repo != "":
		return ref.Name() == p.repo
	default:
		return strings.HasPrefix(ref.Name(), p.prefix)
	}
}
