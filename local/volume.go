package local

import (
	"context"
	"fmt"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/nodevolume"
)

// fsType is the file system of image volumes. Clones of one image share its UUID, which ext4
// (unlike xfs) mounts without complaint.
const fsType = "ext4"

// attach attaches a pool volume (package nodevolume) as export id, its file system mounted at
// mnt, making the file system first when format is set (a new build volume; a clone's volume
// has the image's and is never formatted). On failure nothing is left attached.
func (d *Daemon) attach(ctx context.Context, id string, vol blockstore.VolumeID, mnt string, format bool) (*nodevolume.Attachment, error) {
	at, err := d.vols.Attach(ctx, nodevolume.Spec{ID: id, Volume: vol, MountPoint: mnt, FSType: fsType, Format: format})
	if err != nil {
		return nil, fmt.Errorf("local: volume %d: %w", vol, err)
	}
	return at, nil
}

// detach unmounts the file system at mnt (if mounted), removes the mount point and tears the
// export id down (this daemon's, or what a previous daemon left). It runs to the end also when
// the operation's context has ended (a cancelled build cleans up): the caller's name lock keeps
// the export's lock free.
func (d *Daemon) detach(id, mnt string) error {
	if err := d.vols.Detach(context.Background(), id, mnt); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}
