package v1alpha1

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/dataimage/dataimage/imagebuilder"
)

// ControllerConfigKind is the kind of the DataImage controller's configuration file.
const ControllerConfigKind = "ControllerConfig"

// ControllerConfig is the DataImage controller's configuration file (its --config flag; the
// chart writes it into a ConfigMap). It is not a served resource: apiVersion
// dataimage.io/v1alpha1, kind ControllerConfig, decoded strictly.
type ControllerConfig struct {
	// APIVersion is dataimage.io/v1alpha1.
	APIVersion string `json:"apiVersion"`
	// Kind is ControllerConfig.
	Kind string `json:"kind"`
	// Engines are the engines builds can use, by engine name (postgres, mysql, mariadb).
	Engines map[string]EngineConfig `json:"engines"`
	// Builder is the image that supplies the builder binary to build Jobs.
	Builder ImageConfig `json:"builder"`
	// StorageClassName is the default class of build PVCs.
	StorageClassName string `json:"storageClassName"`
	// VolumeSnapshotClassName is the class of the images' VolumeSnapshots.
	VolumeSnapshotClassName string `json:"volumeSnapshotClassName"`
	// DefaultVolumeSize is the build volume's size when a DataImage gives none.
	DefaultVolumeSize resource.Quantity `json:"defaultVolumeSize"`
	// DefaultLifetime is the lifetime of images whose definition has none: "0" (never) or
	// <n>s, <n>m, <n>h.
	DefaultLifetime string `json:"defaultLifetime"`
	// BuildNodeSelector and BuildTolerations place build pods on cloning nodes (the nodes that
	// run the plugin).
	BuildNodeSelector map[string]string   `json:"buildNodeSelector,omitempty"`
	BuildTolerations  []corev1.Toleration `json:"buildTolerations,omitempty"`
	// BuildResources are the build container's resources when a DataImage gives none.
	BuildResources corev1.ResourceRequirements `json:"buildResources,omitzero"`
	// BuildActiveDeadlineSeconds bounds a build when a DataImage gives no bound (0: none).
	BuildActiveDeadlineSeconds int64 `json:"buildActiveDeadlineSeconds,omitempty"`
	// AllowedHostPaths are the host directories (each with everything under it) that a
	// DataImage's backupSource.hostPath may name: absolute, clean, not "/". Empty: hostPath
	// sources are refused. See Admit.
	AllowedHostPaths []string `json:"allowedHostPaths,omitempty"`
	// AllowedImages are the images a DataImage's builder.image and builder.engineImage may
	// name besides the controller's own (Builder.Image and each engine's Image at each of its
	// Versions): exact references, "NAME:*" or "REGISTRY/PATH/*". See Admit.
	AllowedImages []string `json:"allowedImages,omitempty"`
}

// EngineConfig is one engine the controller builds images with.
type EngineConfig struct {
	// Image is the engine's container image, with "{version}" standing for the version, e.g.
	// "docker.io/library/postgres:{version}".
	Image string `json:"image"`
	// Versions are the versions definitions may name (see imagebuilder.Versions.Match): "16"
	// matches an available "16"; list the versions whose images exist.
	Versions []string `json:"versions"`
	// RunAsUser and RunAsGroup are the uid and gid of the engine's server user in Image
	// (postgres, mysql: 999 and 999 in the official images): the build Job runs as them, never
	// as root, and the build volume is given to the group (fsGroup). Both required, not 0.
	RunAsUser  int64 `json:"runAsUser"`
	RunAsGroup int64 `json:"runAsGroup"`
}

// ImageConfig is a container image and its pull policy.
type ImageConfig struct {
	Image      string            `json:"image"`
	PullPolicy corev1.PullPolicy `json:"pullPolicy,omitempty"`
}

// EngineImage returns the engine image for engine and version: the Image template with
// "{version}" replaced.
func (c *ControllerConfig) EngineImage(engine imagebuilder.Engine, version string) (string, bool) {
	e, ok := c.Engines[string(engine)]
	if !ok {
		return "", false
	}
	return strings.ReplaceAll(e.Image, "{version}", version), true
}

// ValidationEnv returns what DataImageSpec.Validate checks definitions against: the engines'
// versions and the default lifetime.
func (c *ControllerConfig) ValidationEnv() (imagebuilder.ValidationEnv, error) {
	env := imagebuilder.ValidationEnv{Versions: imagebuilder.Versions{}}
	for name, e := range c.Engines {
		env.Versions[imagebuilder.Engine(name)] = append([]string(nil), e.Versions...)
	}
	l, err := imagebuilder.ParseLifetime(c.DefaultLifetime)
	if err != nil {
		return env, fmt.Errorf("v1alpha1: controller config: defaultLifetime: %w", err)
	}
	env.DefaultLifetime = l
	return env, nil
}

// Validate checks the configuration and reports every problem, one per field, in field order.
func (c *ControllerConfig) Validate() error {
	var ps []string
	add := func(field, format string, args ...any) {
		ps = append(ps, field+": "+fmt.Sprintf(format, args...))
	}
	if c.APIVersion != SchemeGroupVersion.String() {
		add("apiVersion", "must be %s, got %q", SchemeGroupVersion, c.APIVersion)
	}
	if c.Kind != ControllerConfigKind {
		add("kind", "must be %s, got %q", ControllerConfigKind, c.Kind)
	}
	if len(c.Engines) == 0 {
		add("engines", "at least one engine is required")
	}
	names := make([]string, 0, len(c.Engines))
	for name := range c.Engines {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		e := c.Engines[name]
		field := "engines." + name
		if engine, ok := imagebuilder.ParseEngine(name); !ok || string(engine) != name {
			add(field, "must be one of %s", engineList())
		}
		if !strings.Contains(e.Image, "{version}") {
			add(field+".image", "must contain {version}, got %q", e.Image)
		}
		if len(e.Versions) == 0 {
			add(field+".versions", "at least one version is required")
		}
		for _, v := range e.Versions {
			img := strings.ReplaceAll(e.Image, "{version}", v)
			if _, err := reference.ParseDockerRef(img); err != nil && strings.Contains(e.Image, "{version}") {
				add(field+".image", "with version %q, %q is not a valid image reference: %v", v, img, err)
			}
		}
		if e.RunAsUser <= 0 {
			add(field+".runAsUser", "must be the uid of the engine's server user in its image (999 in the official images), not root, got %d", e.RunAsUser)
		}
		if e.RunAsGroup <= 0 {
			add(field+".runAsGroup", "must be the gid of the engine's server user in its image (999 in the official images), not root, got %d", e.RunAsGroup)
		}
	}
	if c.Builder.Image == "" {
		add("builder.image", "required")
	} else if _, err := reference.ParseDockerRef(c.Builder.Image); err != nil {
		add("builder.image", "%q is not a valid image reference: %v", c.Builder.Image, err)
	}
	switch c.Builder.PullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		add("builder.pullPolicy", "must be Always, IfNotPresent or Never, got %q", c.Builder.PullPolicy)
	}
	if c.StorageClassName == "" {
		add("storageClassName", "required")
	}
	if c.VolumeSnapshotClassName == "" {
		add("volumeSnapshotClassName", "required")
	}
	if c.DefaultVolumeSize.Sign() <= 0 {
		add("defaultVolumeSize", "must be positive, got %s", c.DefaultVolumeSize.String())
	}
	if _, err := imagebuilder.ParseLifetime(c.DefaultLifetime); err != nil {
		add("defaultLifetime", "must be 0 or <n>s, <n>m, <n>h, got %q", c.DefaultLifetime)
	}
	if c.BuildActiveDeadlineSeconds < 0 {
		add("buildActiveDeadlineSeconds", "must not be negative, got %d", c.BuildActiveDeadlineSeconds)
	}
	for i, p := range c.AllowedHostPaths {
		field := fmt.Sprintf("allowedHostPaths[%d]", i)
		switch {
		case !path.IsAbs(p) || path.Clean(p) != p:
			add(field, "must be an absolute, clean path, got %q", p)
		case p == "/":
			add(field, `must not be "/": that would allow every directory of the node`)
		}
	}
	for i, img := range c.AllowedImages {
		if _, err := parseImagePattern(img); err != nil {
			add(fmt.Sprintf("allowedImages[%d]", i), "%v", err)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(ps, "; "))
}

// ParseControllerConfig decodes a configuration file strictly (unknown and duplicate fields are
// errors, field names are case-sensitive) and validates it. Errors match ErrInvalidConfig.
func ParseControllerConfig(data []byte) (*ControllerConfig, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	var c ControllerConfig
	strict, err := kjson.UnmarshalStrict(j, &c)
	if err == nil && len(strict) > 0 {
		err = errors.Join(strict...)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// engineList names the engines a configuration may list: the definition format's kinds.
func engineList() string {
	var names []string
	for _, e := range imagebuilder.Engines() {
		names = append(names, string(e))
	}
	return strings.Join(names, ", ")
}
