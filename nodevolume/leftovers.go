package nodevolume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/dataimage/dataimage/blockstore/export"
)

// Leftover is what an earlier process left on this node for one id: an export that the data
// plane does not serve (its server died with an earlier data plane, so its I/O fails), and
// where its block devices are still mounted.
type Leftover struct {
	export.Leftover
	// MountPoints are where its devices' file systems are mounted, and where its device nodes
	// are bind-mounted (a published block volume), in this mount namespace, when New found it.
	MountPoints []string
}

// Leftovers returns the leftovers New found that no Attach or Detach has torn down since, by id.
func (a *Attacher) Leftovers() []Leftover {
	a.mu.Lock()
	out := make([]Leftover, 0, len(a.mu.left))
	for _, l := range a.mu.left {
		out = append(out, l)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Leftover returns what an earlier data plane left for id, as the data plane reports it now:
// found by New, or left since by a data plane that restarted under this Attacher (the
// attachment of id then serves no I/O any more).
func (a *Attacher) Leftover(ctx context.Context, id string) (Leftover, bool, error) {
	left, err := a.findLeftovers(ctx)
	if err != nil {
		return Leftover{}, false, err
	}
	i := slices.IndexFunc(left, func(l Leftover) bool { return l.ID == id })
	if i < 0 {
		return Leftover{}, false, nil
	}
	return left[i], true, nil
}

// findLeftovers lists the exporter's leftovers with their mount points.
func (a *Attacher) findLeftovers(ctx context.Context) ([]Leftover, error) {
	left, err := a.devs.Leftovers(ctx)
	if err != nil {
		return nil, fmt.Errorf("nodevolume: find what an earlier process left: %w", err)
	}
	out := make([]Leftover, 0, len(left))
	for _, l := range left {
		points, err := mountsOf(l.Devices)
		if err != nil {
			return nil, fmt.Errorf("nodevolume: find what an earlier process left: %w", err)
		}
		out = append(out, Leftover{Leftover: l, MountPoints: points})
	}
	return out, nil
}

// tearDownLeftover tears down what an earlier process left for id, unless its devices are still
// mounted or bind-mounted: then it fails (export.ErrLeftovers, export.ErrBusy) and changes
// nothing. A loop device whose node is bind-mounted is not held open by that mount, so the
// export could tear it down: the bind mount would then reach whatever volume the device number
// serves next. Nothing left is not an error. REQUIRES the id's lock.
func (a *Attacher) tearDownLeftover(ctx context.Context, id string) error {
	left, err := a.devs.Leftovers(ctx)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(left, func(l export.Leftover) bool { return l.ID == id })
	if i < 0 {
		a.forgetLeftover(id)
		return nil // only an earlier data plane leaves state behind: none can appear meanwhile
	}
	points, err := mountsOf(left[i].Devices)
	if err != nil {
		return err
	}
	if len(points) > 0 {
		return fmt.Errorf("%w: %w: %v still mounted at %v", export.ErrLeftovers, export.ErrBusy, left[i].Devices, points)
	}
	if err := a.devs.CleanupLeftover(ctx, id); err != nil {
		if !errors.Is(err, export.ErrLeftovers) {
			err = fmt.Errorf("%w: %w", export.ErrLeftovers, err)
		}
		return err
	}
	a.log.Info("torn down what an earlier process left", "id", id, "devices", left[i].Devices)
	a.forgetLeftover(id)
	return nil
}

func (a *Attacher) forgetLeftover(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.mu.left, id)
}

// mountInfoPath is this process's mount table (proc(5)).
const mountInfoPath = "/proc/self/mountinfo"

// mountsOf returns the mount points, in this mount namespace, of the file systems on the block
// devices (by device number) and of bind mounts of the device nodes themselves. It reads the
// mount table and stats only the candidate bind mounts (device nodes, never a file system that
// may hang).
func mountsOf(devices []string) ([]string, error) {
	rdevs := map[uint64]bool{}
	names := map[string]bool{}
	for _, d := range devices {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("stat %s: %w", d, err)
		}
		rdevs[st.Rdev] = true
		names[path.Base(d)] = true
	}
	if len(rdevs) == 0 {
		return nil, nil
	}
	infos, err := mount.ParseMountInfo(mountInfoPath)
	if err != nil {
		return nil, fmt.Errorf("read the mount table: %w", err)
	}
	var out []string
	for _, mi := range infos {
		point := unescapeMountInfo(mi.MountPoint)
		if rdevs[unix.Mkdev(uint32(mi.Major), uint32(mi.Minor))] {
			out = append(out, point) // a file system on the device
			continue
		}
		if !names[path.Base(unescapeMountInfo(mi.Root))] {
			continue
		}
		var st unix.Stat_t // a bind mount of a file named like the device: is it its node?
		if err := unix.Lstat(point, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && rdevs[st.Rdev] {
			out = append(out, point)
		}
	}
	sort.Strings(out)
	return out, nil
}

// unescapeMountInfo undoes the escapes of paths in the mount table: the kernel writes space, tab,
// newline and backslash as \040, \011, \012 and \134.
var unescapeMountInfo = strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace
