// Package local is Dataimage's embedded default: images and clones on one machine, without
// Kubernetes. A pool file under a data home holds every image (a snapshot) and every clone (a
// volume cloned from one); a daemon owns the pool, serves each clone's volume to the kernel,
// mounts it and runs the clone's database server on a port of its own, so clones keep running
// after a command returns and come back after a daemon restart.
//
// Service is what the daemon does; the daemon serves it over HTTP on a Unix socket in the home,
// and Client is the same interface over that socket, for the dataimage command.
//
// It must not know CSI, Kubernetes or the on-disk format: it uses the pool's API, package
// nodevolume for volumes on this machine and the engine interfaces for servers.
package local

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// Service is the embedded default's API. Every method is safe for concurrent use; operations on
// one image or clone are serialized, operations on different ones run side by side.
type Service interface {
	// BuildImage builds an image from a definition and reports progress through progress (which
	// may be nil) until it returns: the steps volume and filesystem, the builder's, then freeze.
	BuildImage(ctx context.Context, req BuildRequest, progress func(wire.Event)) (*Image, error)
	// Images lists the images, by name.
	Images(ctx context.Context) ([]Image, error)
	// Image returns one image.
	Image(ctx context.Context, name string) (*Image, error)
	// DeleteImage deletes an image. An image with clones (or images graduated from its clones'
	// revisions do not count: they are independent) is refused with ErrHasClones.
	DeleteImage(ctx context.Context, name string) error
	// ImageFromClone graduates one of a clone's revisions (or its current state when
	// req.Revision is empty) to an image.
	ImageFromClone(ctx context.Context, req ImageFromCloneRequest) (*Image, error)

	// CreateClone makes a clone of an image and starts its database server.
	CreateClone(ctx context.Context, req CloneRequest) (*Clone, error)
	// Clones lists the clones, by name.
	Clones(ctx context.Context) ([]Clone, error)
	// Clone returns one clone.
	Clone(ctx context.Context, name string) (*Clone, error)
	// DeleteClone stops a clone's server and deletes the clone with its revisions.
	DeleteClone(ctx context.Context, name string) error
	// StopClone stops a clone's server cleanly and releases its volume; its data stays.
	StopClone(ctx context.Context, name string) (*Clone, error)
	// StartClone starts a stopped clone again, on its port if that is still free.
	StartClone(ctx context.Context, name string) (*Clone, error)
	// ResetClone discards a clone's changes: back to revision to, or to the last saved revision
	// when to is empty, or to the image when to is ResetToImage or the clone has no revision.
	ResetClone(ctx context.Context, name, to string) (*Clone, error)
	// SaveClone saves a clone's current state as a revision (named revision, or rev-N).
	SaveClone(ctx context.Context, name, revision string) (*Revision, error)

	// PoolStatus reports the pool's capacity and use.
	PoolStatus(ctx context.Context) (*PoolStatus, error)
	// CheckPool runs the block store's consistency check (fsck): read-only while clones run, or,
	// with repair, holding the pool to free leaked blocks.
	CheckPool(ctx context.Context, repair bool) (*CheckReport, error)

	// PushImage pushes an image into a registry (docs/export-sets.md) and reports progress
	// through progress (which may be nil): the step push.
	PushImage(ctx context.Context, req PushRequest, progress func(wire.Event)) (*Image, error)
	// PullImage pulls an image from a registry into the pool: the step pull.
	PullImage(ctx context.Context, req PullRequest, progress func(wire.Event)) (*Image, error)
	// RemoteImages lists a registry's images.
	RemoteImages(ctx context.Context, r Remote) ([]RemoteImage, error)
	// DeleteRemoteImage deletes an image (or a name of it) from a registry and collects the
	// objects no image names any more.
	DeleteRemoteImage(ctx context.Context, ref string, r Remote) (*RemoteDeletion, error)
}

// ResetToImage is ResetClone's name for "the image the clone was made from".
const ResetToImage = "image"

// BuildRequest asks for an image build.
type BuildRequest struct {
	// Definition is the image definition's YAML.
	Definition []byte `json:"definition"`
	// DefinitionPath names the definition in messages (it is not read).
	DefinitionPath string `json:"definitionPath,omitempty"`
	// BackupRoot is the directory the definition's backup and script paths are relative to
	// ("" = the daemon's default).
	BackupRoot string `json:"backupRoot,omitempty"`
}

// Image is a data image: a frozen snapshot of a whole database instance.
type Image struct {
	Name       string                   `json:"name"`
	Engine     imagebuilder.Engine      `json:"engine"`
	Version    string                   `json:"version"` // the engine version it was built with
	SourceType imagebuilder.SourceType  `json:"sourceType"`
	Tags       []string                 `json:"tags,omitempty"`
	Definition *imagebuilder.Definition `json:"definition,omitempty"`
	// Database is the database its clones' connection strings name ("" = the engine's default).
	Database string `json:"database,omitempty"`
	// FromClone and FromRevision name the clone revision an image was graduated from.
	FromClone    string `json:"fromClone,omitempty"`
	FromRevision string `json:"fromRevision,omitempty"`
	// Parent is the local image this one was made from (a graduated clone's image, or the
	// image a pull started from), if any.
	Parent string `json:"parent,omitempty"`
	// Digest is the image's digest in a registry (docs/export-sets.md): that of its last push
	// or of its pull; empty until then. ParentDigest is the lineage its manifest records.
	Digest       string `json:"digest,omitempty"`
	ParentDigest string `json:"parentDigest,omitempty"`
	// Pulled is when the image was pulled from a registry (Created is when it was made).
	Pulled time.Time `json:"pulled,omitzero"`
	// Size is the volume's size; DataBytes the bytes the image's data occupies in the pool.
	Size      int64 `json:"size"`
	DataBytes int64 `json:"dataBytes"`
	// Created is when the build finished; DataState the point in time the data holds.
	Created   time.Time `json:"created"`
	DataState time.Time `json:"dataState,omitzero"`
	// LogPosition is the engine's log position the data stands at ("LSN 0/3000060"), when known.
	LogPosition string `json:"logPosition,omitempty"`
	// Lifetime as written ("0" = never); Expires is zero when the image never expires.
	Lifetime string    `json:"lifetime"`
	Expires  time.Time `json:"expires,omitzero"`
	// BuildSeconds is how long the build took.
	BuildSeconds float64 `json:"buildSeconds,omitempty"`
	// Clones counts the clones made from the image.
	Clones int `json:"clones"`
	// Status says why an expired image is still here, e.g. "expired; kept: 2 clones".
	Status string `json:"status,omitempty"`
}

// CloneState is a clone's state.
type CloneState string

// Clone states.
const (
	CloneRunning CloneState = "running" // the server accepts connections
	CloneStopped CloneState = "stopped" // stopped on request; its data stays
	CloneFailed  CloneState = "failed"  // the server could not start or died; Message says why
)

// Clone is a data container: a writable clone of an image with its own database server.
type Clone struct {
	Name   string              `json:"name"`
	Image  string              `json:"image"`
	Engine imagebuilder.Engine `json:"engine"`
	State  CloneState          `json:"state"`
	// Connection is the connection string (postgresql://..., mysql://...), with the password.
	Connection string `json:"connection,omitempty"`
	Host       string `json:"host,omitempty"`
	Port       int    `json:"port,omitempty"`
	User       string `json:"user,omitempty"`
	Password   string `json:"password,omitempty"`
	Database   string `json:"database,omitempty"`
	// Size is the volume's size; AddedBytes what the clone's writes added to the pool.
	Size       int64     `json:"size"`
	AddedBytes int64     `json:"addedBytes"`
	Created    time.Time `json:"created"`
	Lifetime   string    `json:"lifetime"`
	Expires    time.Time `json:"expires,omitzero"`
	// CreateSeconds is how long creation took, from the request to accepting connections.
	CreateSeconds float64    `json:"createSeconds,omitempty"`
	Revisions     []Revision `json:"revisions,omitempty"`
	Message       string     `json:"message,omitempty"`
}

// Revision is a saved state of a clone.
type Revision struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// CloneRequest asks for a clone.
type CloneRequest struct {
	Image string `json:"image"`
	// Name ("" = the image's name and a random suffix).
	Name string `json:"name,omitempty"`
	// Lifetime: "0" = never, <n>s|m|h; "" = the daemon's default for clones.
	Lifetime string `json:"lifetime,omitempty"`
	// Port for the server (0 = a free one).
	Port int `json:"port,omitempty"`
}

// ImageFromCloneRequest asks to graduate a clone revision to an image.
type ImageFromCloneRequest struct {
	Name     string   `json:"name"`
	Clone    string   `json:"clone"`
	Revision string   `json:"revision,omitempty"`
	Tags     []string `json:"tags,omitempty"`
	Lifetime string   `json:"lifetime,omitempty"`
}

// PoolStatus is the pool's capacity and use.
type PoolStatus struct {
	Path               string  `json:"path"`
	Capacity           int64   `json:"capacity"`    // bytes the pool can hold
	Used               int64   `json:"used"`        // bytes of blocks in use (data and metadata)
	Free               int64   `json:"free"`        // bytes free
	Provisioned        int64   `json:"provisioned"` // the sum of volume sizes
	OverProvisionRatio float64 `json:"overProvisionRatio"`
	Images             int     `json:"images"`
	Clones             int     `json:"clones"`
	// ImageBytes is what the images hold; CloneBytes what the clones added on top.
	ImageBytes int64  `json:"imageBytes"`
	CloneBytes int64  `json:"cloneBytes"`
	Health     string `json:"health"` // "ok" or why not
}

// CheckReport is the result of CheckPool.
type CheckReport struct {
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
	Repaired []string `json:"repaired,omitempty"`
	Summary  string   `json:"summary"`
}

// Errors. The daemon sends their kind with every failure, so that the client's errors match them
// with errors.Is as the daemon's did.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrHasClones     = errors.New("image has clones")
	ErrInvalid       = errors.New("invalid request")
	ErrNoSpace       = errors.New("pool is full")
	ErrBuildFailed   = errors.New("image build failed")
	ErrRemote        = errors.New("registry failed")
	ErrUnavailable   = errors.New("daemon unavailable")
)

// Error is a failure the daemon reports: its kind (one of the errors above, matched by
// errors.Is) and a message for people.
type Error struct {
	Kind    error
	Message string
}

func (e *Error) Error() string { return e.Message }

func (e *Error) Unwrap() error { return e.Kind }

// errorf makes an *Error of kind with a formatted message.
func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}
