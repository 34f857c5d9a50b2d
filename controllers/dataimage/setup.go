package dataimage

import (
	"context"
	"fmt"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/dataimage/dataimage/apis/dataimage/v1alpha1"
	"github.com/dataimage/dataimage/exportset"
)

const (
	// DefaultProgressInterval is how often a running build's progress is read.
	DefaultProgressInterval = 3 * time.Second
	// Name is the controller's name: the events' reporting controller and the field manager.
	Name = "dataimage-controller"
)

// Options configure the reconcilers that Setup adds to a manager.
type Options struct {
	// Config is the controller's configuration file (v1alpha1.ParseControllerConfig). Required.
	Config *v1alpha1.ControllerConfig
	// Logs reads build pods' logs for progress: NewPodLogReader in a cluster. Required.
	Logs LogReader
	// ProgressInterval is how often a running build is looked at again (its progress read from
	// the log). Zero means DefaultProgressInterval.
	ProgressInterval time.Duration
	// Registry is the cluster's image registry, which the nodes' plugins push images to and
	// pull them from (registry.go); nil: none, images stay on the node that built them.
	Registry exportset.Target
	// RegistryGCInterval is how often the elected controller collects the registry's garbage
	// (gc.go): the chunks of withdrawn images. Zero: never.
	RegistryGCInterval time.Duration
}

// NewScheme returns a scheme with the types the controller reads and writes: Kubernetes' own,
// DataImage and VolumeSnapshot.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, snapshotv1.AddToScheme} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("controller: scheme: %w", err)
		}
	}
	return s, nil
}

// CacheOptions returns the cache options the controller needs: pods and Jobs only of builds
// (labelled dataimage.io/image), so that the cache does not hold every pod of the cluster.
func CacheOptions() cache.Options {
	build, _ := labels.NewRequirement(v1alpha1.LabelImage, selection.Exists, nil)
	sel := labels.NewSelector().Add(*build)
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}:  {Label: sel},
		&batchv1.Job{}: {Label: sel},
	}}
}

// Setup adds the DataImage reconciler to mgr, with its field index and the image metrics. The manager's scheme must come from
// NewScheme, and its cache should be configured with CacheOptions.
func Setup(mgr manager.Manager, opts Options) error {
	if opts.Config == nil {
		return fmt.Errorf("%w: no configuration", ErrInvalidOptions)
	}
	if err := opts.Config.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	env, err := opts.Config.ValidationEnv()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	if opts.Logs == nil {
		return fmt.Errorf("%w: no log reader", ErrInvalidOptions)
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = DefaultProgressInterval
	}
	ctx := context.Background()
	if err := mgr.GetFieldIndexer().IndexField(ctx, &corev1.PersistentVolumeClaim{}, cloneIndex, cloneIndexValues); err != nil {
		return fmt.Errorf("controller: index PVCs by snapshot: %w", err)
	}

	r := &reconciler{
		client:   mgr.GetClient(),
		api:      mgr.GetAPIReader(),
		cfg:      opts.Config,
		env:      env,
		logs:     opts.Logs,
		events:   mgr.GetEventRecorder(Name),
		interval: opts.ProgressInterval,
		now:      time.Now,
		registry: opts.Registry,
	}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("dataimage").
		For(&v1alpha1.DataImage{}).
		Owns(&batchv1.Job{}).
		Owns(&snapshotv1.VolumeSnapshot{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podToImage)).
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(claimToImages)).
		Complete(r)
	if err != nil {
		return fmt.Errorf("controller: DataImage reconciler: %w", err)
	}

	if opts.Registry != nil && opts.RegistryGCInterval > 0 {
		gc := &registryGC{
			reg:      exportset.New(opts.Registry, exportset.Options{}),
			interval: opts.RegistryGCInterval,
			log:      mgr.GetLogger().WithName("registry-gc"),
		}
		if err := mgr.Add(gc); err != nil {
			return fmt.Errorf("controller: registry garbage collection: %w", err)
		}
	}

	imageStats.use(mgr.GetClient())
	// Series from zero for the engines served, so that rates work from the first build.
	for engine := range opts.Config.Engines {
		metricBuildsStarted.WithLabelValues(engine)
		metricBuildsSucceeded.WithLabelValues(engine)
		metricBuildsFailed.WithLabelValues(engine)
	}
	return nil
}
