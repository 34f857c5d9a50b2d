package exportset

import (
	"sync"
	"sync/atomic"
)

// Progress is a push's or a pull's progress, reported after each chunk. Push: the chunks to
// read (changed since the parent, or mapped); pull: the chunks to write (different from the
// image the pull started from).
type Progress struct {
	// Phase is what happens: PhaseWaiting, PhasePlan, PhaseTransfer or PhaseCommit.
	Phase string
	// Chunks of TotalChunks are done; Bytes of TotalBytes (a push: bytes of the image to read;
	// a pull: stored bytes to download, once known).
	Chunks, TotalChunks int
	Bytes, TotalBytes   int64
	// Transferred is the stored (compressed) bytes uploaded or downloaded so far.
	Transferred int64
}

// Phases of Progress.
const (
	PhaseWaiting  = "waiting"  // a push waits for a garbage collection to end
	PhasePlan     = "plan"     // reading the manifests, the store's diff
	PhaseTransfer = "transfer" // moving chunks
	PhaseCommit   = "commit"   // writing the manifest (push), making the volume the image (pull)
)

// reporter keeps a push's or a pull's progress and reports every change of it.
type reporter struct {
	report func(Progress) // nil: nobody listens
	// transferred counts the stored bytes moved (the pusher's or puller's counter).
	transferred *atomic.Int64

	mu struct {
		sync.Mutex
		progress Progress
	}
}

// update changes the progress with f and reports it, one report at a time.
func (r *reporter) update(f func(*Progress)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.mu.progress)
	r.mu.progress.Transferred = r.transferred.Load()
	if r.report != nil {
		r.report(r.mu.progress)
	}
}
