// Package cluster is what a Kubernetes cluster's DataImage controller and its nodes' CSI
// plugins tell each other through their registry (docs/kubernetes.md, "Images on every node"):
// placements, written by the controller (which image, by its CSI snapshot handle, should be in
// the registry and on which nodes), and node reports, written by each node's plugin (which of
// the placed images it holds, pushes or pulls, with progress and failures). The controller
// reads the reports into DataImage status; the plugins read the placements and push or pull.
//
// The registry is the channel because both sides already reach it and the plugins reach no
// API server: a plugin that restarts finds every placement again, and a node that is lost
// loses nothing the others need. Objects live under cluster/ beside the registry's images
// (package exportset leaves that directory alone: its collections read manifests and chunks
// only). It knows no pool and no Kubernetes type.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/dataimage/dataimage/exportset"
)

const (
	placementsDir = "cluster/placements/"
	nodesDir      = "cluster/nodes/"
	// maxObject bounds what is read of one placement or report.
	maxObject = 4 << 20
)

// keyPattern is what a handle or a node name must be to name an object: a Kubernetes node name
// (a DNS subdomain) or a CSI snapshot handle of the driver. No "/", no leading dot.
var keyPattern = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,251}[a-zA-Z0-9])?$`)

func checkKey(what, s string) error {
	if !keyPattern.MatchString(s) {
		return fmt.Errorf("%w: %s %.80q: want 1 to 253 letters, digits, '.', '_' or '-', starting and ending with a letter or a digit",
			exportset.ErrInvalid, what, s)
	}
	return nil
}

// Placement asks the nodes about one image: the node that made it pushes it into the registry,
// named by Handle; the nodes of Nodes pull it (pre-pull, so that clones there are instant).
type Placement struct {
	// Handle is the image's CSI snapshot handle (the VolumeSnapshotContent's): the node that
	// holds the snapshot pushes it under this name; every node resolves the name to the
	// image's digest.
	Handle string `json:"handle"`
	// Image is the manifest's image metadata for the push (name, engine, version, ...).
	Image exportset.Image `json:"image"`
	// Nodes should hold the image (sorted); the node that made it holds it anyway.
	Nodes []string `json:"nodes,omitempty"`
}

// States of an image on a node.
const (
	// StatePushing: the node holds the image and pushes it.
	StatePushing = "Pushing"
	// StatePulling: the node pulls the image.
	StatePulling = "Pulling"
	// StateHeld: the node holds the image (made it, or pulled it); Digest is set once known.
	StateHeld = "Held"
	// StateFailed: the node's last push or pull failed; Message says why. It tries again.
	StateFailed = "Failed"
)

// ImageState is one placed image on one node.
type ImageState struct {
	Handle string           `json:"handle"`
	Digest exportset.Digest `json:"digest,omitempty"`
	State  string           `json:"state"`
	// Message says what happens or what failed, for people.
	Message string `json:"message,omitempty"`
	// Pushed: the node made the image and its push is complete.
	Pushed bool `json:"pushed,omitempty"`
	// Done and Total are the chunks transferred of those to transfer, while pushing or pulling.
	Done  int `json:"done,omitempty"`
	Total int `json:"total,omitempty"`
}

// NodeReport is what a node says about the placed images, written after each of its syncs.
type NodeReport struct {
	Node    string    `json:"node"`
	Updated time.Time `json:"updated"`
	// Images are the placed images the node holds or moves, by handle.
	Images []ImageState `json:"images,omitempty"`
	// Error is what stopped the node's last sync, if anything did.
	Error string `json:"error,omitempty"`
}

// Image returns the node's state of the image of handle.
func (r NodeReport) Image(handle string) (ImageState, bool) {
	for _, s := range r.Images {
		if s.Handle == handle {
			return s, true
		}
	}
	return ImageState{}, false
}

// PutPlacement writes p, replacing the placement of its handle.
func PutPlacement(ctx context.Context, t exportset.Target, p Placement) error {
	if err := checkKey("placement handle", p.Handle); err != nil {
		return err
	}
	for _, n := range p.Nodes {
		if err := checkKey("placement node", n); err != nil {
			return err
		}
	}
	p.Nodes = slices.Compact(slices.Sorted(slices.Values(p.Nodes)))
	return put(ctx, t, placementsDir+p.Handle, p)
}

// GetPlacement reads the placement of handle; exportset.ErrNotFound when there is none.
func GetPlacement(ctx context.Context, t exportset.Target, handle string) (Placement, error) {
	var p Placement
	if err := checkKey("placement handle", handle); err != nil {
		return p, err
	}
	err := get(ctx, t, placementsDir+handle, &p)
	return p, err
}

// DeletePlacement removes the placement of handle (none is not an error).
func DeletePlacement(ctx context.Context, t exportset.Target, handle string) error {
	if err := checkKey("placement handle", handle); err != nil {
		return err
	}
	if err := t.Delete(ctx, placementsDir+handle); err != nil {
		return fmt.Errorf("cluster: delete placement %s: %w", handle, err)
	}
	return nil
}

// Placements lists every placement. One that does not decode is skipped and named in bad
// (written by a newer controller, or damaged), rather than failing the list.
func Placements(ctx context.Context, t exportset.Target) (ps []Placement, bad []error, err error) {
	err = list(ctx, t, placementsDir, func(key string) {
		var p Placement
		if err := get(ctx, t, key, &p); err != nil {
			if !errors.Is(err, exportset.ErrNotFound) { // deleted since the listing
				bad = append(bad, err)
			}
			return
		}
		ps = append(ps, p)
	})
	slices.SortFunc(ps, func(a, b Placement) int { return strings.Compare(a.Handle, b.Handle) })
	return ps, bad, err
}

// PutReport writes a node's report, replacing its last one.
func PutReport(ctx context.Context, t exportset.Target, r NodeReport) error {
	if err := checkKey("report node", r.Node); err != nil {
		return err
	}
	return put(ctx, t, nodesDir+r.Node, r)
}

// DeleteReport removes a node's report (a node that left the cluster).
func DeleteReport(ctx context.Context, t exportset.Target, node string) error {
	if err := checkKey("report node", node); err != nil {
		return err
	}
	return t.Delete(ctx, nodesDir+node)
}

// Reports lists every node's report, by node name; undecodable ones are named in bad.
func Reports(ctx context.Context, t exportset.Target) (rs []NodeReport, bad []error, err error) {
	err = list(ctx, t, nodesDir, func(key string) {
		var r NodeReport
		if err := get(ctx, t, key, &r); err != nil {
			if !errors.Is(err, exportset.ErrNotFound) {
				bad = append(bad, err)
			}
			return
		}
		rs = append(rs, r)
	})
	slices.SortFunc(rs, func(a, b NodeReport) int { return strings.Compare(a.Node, b.Node) })
	return rs, bad, err
}

func put(ctx context.Context, t exportset.Target, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("cluster: encode %s: %w", key, err)
	}
	if err := t.Put(ctx, key, b); err != nil {
		return fmt.Errorf("cluster: write %s in %s: %w", key, t, err)
	}
	return nil
}

// get reads and decodes key strictly (unknown fields are refused: a newer writer's object is
// named rather than half understood).
func get(ctx context.Context, t exportset.Target, key string, v any) error {
	b, err := t.Get(ctx, key, maxObject)
	if err != nil {
		return fmt.Errorf("cluster: read %s in %s: %w", key, t, err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: cluster: %s in %s: %w", exportset.ErrInvalid, key, t, err)
	}
	return nil
}

// list calls fn with the key of every object under dir whose name is a valid key.
func list(ctx context.Context, t exportset.Target, dir string, fn func(key string)) error {
	var keys []string
	if err := t.List(ctx, dir, func(o exportset.ObjectInfo) error {
		if name := strings.TrimPrefix(o.Key, dir); checkKey("", name) == nil {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("cluster: list %s in %s: %w", dir, t, err)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fn(k)
	}
	return nil
}
