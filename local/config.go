package local

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Defaults of Config.
const (
	DefaultHome          = "/var/lib/dataimage"
	DefaultPoolSize      = 64 << 30 // sparse: the file only takes what is written
	DefaultVolumeSize    = 32 << 30 // thin: an image's volume only takes what it holds
	DefaultListenAddress = "127.0.0.1"
	DefaultReapInterval  = 30 * time.Second
	// DefaultOverProvisionRatio bounds the sum of volume sizes (each clone counts its whole
	// size) to this multiple of the pool's capacity, high enough for many thin clones.
	DefaultOverProvisionRatio = 100
)

// Config configures a Daemon. Zero values pick the defaults.
type Config struct {
	// Home is the data home: the pool, the catalog, the socket, the mounts (DefaultHome).
	Home string
	// PoolSize is the size of the pool file the data plane makes at its first start
	// (DefaultPoolSize; RunDataPlane). The file is sparse unless Preallocate.
	PoolSize int64
	// Preallocate makes the pool file thick (see blockstore.Options.Preallocate).
	Preallocate bool
	// DataPlane starts the home's data plane when none answers on DataPlaneSocketPath: the
	// daemon runs it as a process of its own, which outlives the daemon (dataplane.go). Zero:
	// the daemon starts none, and fails with ErrUnavailable when none answers.
	DataPlane DataPlaneCommand
	// BackupRoot is the backup root of builds whose request names none; "" means the request
	// must name one when its definition has backups or scripts.
	BackupRoot string
	// ListenAddress is where clones' servers listen (DefaultListenAddress).
	ListenAddress string
	// DefaultImageLifetime and DefaultCloneLifetime are the lifetimes of images whose
	// definition and clones whose request name none: "0" (never, the default) or <n>s|m|h.
	DefaultImageLifetime string
	DefaultCloneLifetime string
	// ReapInterval is how often Serve deletes expired clones and images (DefaultReapInterval).
	ReapInterval time.Duration
	// VolumeSize is the size of the thin volume an image is built in, and so of its clones
	// (DefaultVolumeSize). A physical restore writes at most this much.
	VolumeSize int64
	// MaxArchiveMembers bounds the files, directories and links a physical restore's archives
	// hold (0: builder.DefaultMaxArchiveMembers; negative: no limit).
	MaxArchiveMembers int64
	// Remote is the default registry of pushes and pulls (docs/export-sets.md): each empty
	// field of a request's Remote takes its value. Its Credentials are the daemon's (the cmd
	// reads them from the daemon's AWS environment).
	Remote Remote
	// Engines are the database engines builds and clones use (nil: registry.Discover, once).
	Engines engine.Set
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
}

// settings is a Config with its defaults filled in and its values parsed.
type settings struct {
	Config
	imageLifetime imagebuilder.Lifetime
	cloneLifetime imagebuilder.Lifetime
}

func (c Config) settings() (*settings, error) {
	s := &settings{Config: c}
	if s.Home == "" {
		s.Home = DefaultHome
	}
	home, err := filepath.Abs(s.Home)
	if err != nil {
		return nil, fmt.Errorf("local: home %q: %w", s.Home, err)
	}
	s.Home = home
	if s.PoolSize == 0 {
		s.PoolSize = DefaultPoolSize
	}
	if s.VolumeSize == 0 {
		s.VolumeSize = DefaultVolumeSize
	}
	if s.VolumeSize < 0 || s.VolumeSize%4096 != 0 {
		return nil, fmt.Errorf("local: volume size %d: %w: want a positive multiple of 4096", s.VolumeSize, ErrInvalid)
	}
	if s.PoolSize < 0 {
		return nil, fmt.Errorf("local: pool size %d: %w: want a positive size", s.PoolSize, ErrInvalid)
	}
	if s.ListenAddress == "" {
		s.ListenAddress = DefaultListenAddress
	}
	if net.ParseIP(s.ListenAddress) == nil {
		return nil, fmt.Errorf("local: listen address %q: %w: want an IP address", s.ListenAddress, ErrInvalid)
	}
	if s.ReapInterval == 0 {
		s.ReapInterval = DefaultReapInterval
	}
	if s.ReapInterval < 0 {
		return nil, fmt.Errorf("local: reap interval %v: %w: want a positive duration", s.ReapInterval, ErrInvalid)
	}
	if s.imageLifetime, err = parseLifetime(s.DefaultImageLifetime); err != nil {
		return nil, fmt.Errorf("local: default image lifetime: %w", err)
	}
	if s.cloneLifetime, err = parseLifetime(s.DefaultCloneLifetime); err != nil {
		return nil, fmt.Errorf("local: default clone lifetime: %w", err)
	}
	if s.BackupRoot != "" {
		if s.BackupRoot, err = filepath.Abs(s.BackupRoot); err != nil {
			return nil, fmt.Errorf("local: backup root: %w", err)
		}
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return s, nil
}

// parseLifetime parses a lifetime, "" being never.
func parseLifetime(s string) (imagebuilder.Lifetime, error) {
	if s == "" {
		return imagebuilder.Lifetime{Never: true}, nil
	}
	l, err := imagebuilder.ParseLifetime(s)
	if err != nil {
		return l, &kindError{kind: ErrInvalid, err: err}
	}
	return l, nil
}

// Paths in the home.
func (s *settings) poolPath() string    { return filepath.Join(s.Home, "pool.img") }
func (s *settings) catalogPath() string { return filepath.Join(s.Home, "catalog.json") }
func (s *settings) socketPath() string  { return SocketPath(s.Home) }
func (s *settings) dataPlaneSocket() string {
	return DataPlaneSocketPath(s.Home)
}
func (s *settings) lockPath() string  { return filepath.Join(s.Home, "daemon.lock") }
func (s *settings) exportDir() string { return filepath.Join(s.Home, "export") }
func (s *settings) mntDir() string    { return filepath.Join(s.Home, "mnt") }
func (s *settings) runDir() string    { return filepath.Join(s.Home, "run") }

// cloneMount is where a clone's file system is mounted: the root of its instance.
func (s *settings) cloneMount(clone string) string { return filepath.Join(s.mntDir(), clone) }

// buildMount is where an image is built. Names start with a letter or a digit, so the dot keeps
// builds apart from clones.
func (s *settings) buildMount(image string) string {
	return filepath.Join(s.mntDir(), ".build-"+image)
}

// cloneRun and buildRun are the servers' runtime directories (socket, access rules, log).
func (s *settings) cloneRun(clone string) string { return filepath.Join(s.runDir(), clone) }
func (s *settings) buildRun(image string) string {
	return filepath.Join(s.runDir(), ".build-"+image)
}

// SocketPath is where the daemon of home serves its API.
func SocketPath(home string) string { return filepath.Join(home, "daemon.sock") }

// LogPath is where Connect sends the output of a daemon it starts.
func LogPath(home string) string { return filepath.Join(home, "daemon.log") }
