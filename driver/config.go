package driver

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/dataimage/dataimage/driver/wellknown"
	"github.com/dataimage/dataimage/exportset"
)

// Defaults for Config fields left zero.
const (
	// DefaultDriverName and DefaultTopologyKey are the names Kubernetes knows the driver by
	// (package wellknown, where the controllers read them too).
	DefaultDriverName  = wellknown.DriverName
	DefaultTopologyKey = wellknown.TopologyKey
	// DefaultVolumeSize is the size of a volume created without capacity_range.required_bytes
	// and without a content source (1 GiB).
	DefaultVolumeSize int64 = 1 << 30
)

// Config configures the driver. The mains fill it from flags; nothing here reads the
// environment.
type Config struct {
	// DriverName is the CSI plugin name (GetPluginInfo), in domain notation, at most 63
	// characters. Default DefaultDriverName.
	DriverName string
	// Version is the vendor version reported by GetPluginInfo. Required.
	Version string
	// NodeID identifies this node: NodeGetInfo's node_id and the value of the topology
	// segment of every volume and snapshot in this node's pool. Required.
	NodeID string
	// TopologyKey is the topology segment key whose value is NodeID. Default
	// DefaultTopologyKey.
	TopologyKey string
	// MaxVolumes is the number of volumes that can be published on this node at once, for
	// NodeGetInfo's max_volumes_per_node; 0 means no limit. The controller does not bound the
	// number of volumes in the pool: images and their clones cost only what they write.
	MaxVolumes int
	// DefaultVolumeSize is the size of a new empty volume when the request names none.
	// Default DefaultVolumeSize.
	DefaultVolumeSize int64
	// PoolCheckInterval is how often the plugin verifies its pool with a read-only Check
	// (which does not stop I/O); volume health (DEGRADED "PoolCheckFailed") and the metrics
	// report what the last one found. 0: never.
	PoolCheckInterval time.Duration
	// Registry, when set, is the cluster's image registry (driver/images.go): the plugin
	// pushes the snapshots that placements name, pulls the images of snapshot handles its pool
	// lacks (CreateVolume), pre-pulls placed images and reports what it holds. It needs the
	// Node service (RegisterNode), whose attachments read and write the images' volumes.
	Registry *exportset.Registry
	// RegistrySync is how often the plugin reads the placements and writes its report.
	// Default DefaultRegistrySync.
	RegistrySync time.Duration
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
}

// driverNamePattern is the plugin name rule of the CSI spec (GetPluginInfoResponse.name).
var driverNamePattern = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,61}[a-zA-Z0-9])?$`)

// complete returns the configuration with defaults filled in, or an error naming the first
// field that breaks a rule.
func (c Config) complete() (Config, error) {
	if c.DriverName == "" {
		c.DriverName = DefaultDriverName
	}
	if c.TopologyKey == "" {
		c.TopologyKey = DefaultTopologyKey
	}
	if c.DefaultVolumeSize == 0 {
		c.DefaultVolumeSize = DefaultVolumeSize
	}
	if c.RegistrySync == 0 {
		c.RegistrySync = DefaultRegistrySync
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case !driverNamePattern.MatchString(c.DriverName):
		return c, fmt.Errorf("driver: config: driver name %q: not a domain name of at most 63 characters", c.DriverName)
	case c.Version == "":
		return c, fmt.Errorf("driver: config: version is required")
	case c.NodeID == "":
		return c, fmt.Errorf("driver: config: node ID is required")
	case len(c.NodeID) > maxStringLen:
		return c, fmt.Errorf("driver: config: node ID: %d bytes, at most %d allowed", len(c.NodeID), maxStringLen)
	case c.MaxVolumes < 0:
		return c, fmt.Errorf("driver: config: max volumes %d: must not be negative", c.MaxVolumes)
	case c.DefaultVolumeSize < 0:
		return c, fmt.Errorf("driver: config: default volume size %d: must not be negative", c.DefaultVolumeSize)
	case c.RegistrySync < 0:
		return c, fmt.Errorf("driver: config: registry sync interval %s: must not be negative", c.RegistrySync)
	case c.PoolCheckInterval < 0:
		return c, fmt.Errorf("driver: config: pool check interval %s: must not be negative", c.PoolCheckInterval)
	}
	return c, nil
}
