package dataimage

import "errors"

var (
	// ErrInvalidOptions matches errors about the Options given to Setup.
	ErrInvalidOptions = errors.New("controller: invalid options")
	// ErrNotOwned matches the error of an object the controller would create (build PVC, build
	// Job, VolumeSnapshot) that exists under the same name but does not belong to the DataImage.
	ErrNotOwned = errors.New("controller: object exists and belongs to something else")
	// ErrPodLog matches errors reading a build pod's log.
	ErrPodLog = errors.New("controller: read pod log")
)
