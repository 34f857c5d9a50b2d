package blockstore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dataimage/dataimage/blockstore/internal/format"
)

// Options configure a pool. Zero values pick the defaults.
type Options struct {
	// BlockSize is the pool's block size, fixed at creation: a power of two from 4 KiB to
	// 64 KiB. Default 4 KiB (see BENCHMARKS.md for why).
	BlockSize int
	// Size is the size in bytes of a pool file to create. Ignored for block devices, which are
	// used whole.
	Size int64
	// Preallocate reserves the pool file's space at creation instead of leaving it sparse, and
	// makes the pool thick: freed blocks keep their space in the file. Writes to new blocks of
	// a sparse file wait for the file system to allocate (ext4 serializes them), so a thick
	// pool serves first writes into clones faster at the cost of never returning space.
	Preallocate bool
	// JournalSize is the size of the journal region at creation. Default: 1/64 of the pool,
	// between 1 MiB and 256 MiB.
	JournalSize int64
	// OverProvisionRatio bounds the sum of volume sizes to this multiple of the pool's data
	// capacity. Set at creation (default 10); a non-zero value on Open replaces it.
	OverProvisionRatio float64
	// DirectIO opens the pool with O_DIRECT, bypassing the page cache.
	DirectIO bool
	// NodeCacheBytes bounds the memory spent on clean tree nodes. Default 64 MiB.
	NodeCacheBytes int64
	// RefcountCacheBytes bounds the memory spent on clean refcount pages (each covers 1020
	// blocks of 4 KiB). Default 16 MiB.
	RefcountCacheBytes int64
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger

	fanout int              // tests: fewer entries per node, for deep trees on small volumes
	now    func() time.Time // tests: a fixed clock
}

// Pool is a node-local thin block store: volumes, snapshots and clones in one file or device.
// A Pool is safe for concurrent use.
//
// Locks, in the order they are taken: commitMu, writeGate, ioGate, a volume's write stripes
// (volume.go), mu. Each says below what it guards and when it is held; functions that need one
// held say so with "REQUIRES", and a "Locked" suffix means p.mu.
type Pool struct {
	// Fixed at Open; read without a lock.
	f        File
	bs       int
	fanout   int
	geo      format.Superblock // geometry of the pool: fixed at creation, but Version (REQUIRES p.mu)
	log      *slog.Logger
	now      func() time.Time
	direct   bool     // O_DIRECT: no sub-block writes
	recovery Recovery // what Open replayed; not changed afterwards
	// jfile is where journal blocks are written: f, or its WriteAtCached when it has one, so
	// that they go through the kernel's page cache (journal.go).
	jfile io.WriterAt
	boot  [16]byte // f's Boot (zero: unknown), recorded by every checkpoint

	// No lock: each is safe for concurrent use.

	// health is Health's answer, kept apart from mu so that Health neither waits for nor
	// blocks anything that holds mu (Close and the exclusive Check hold it across their
	// writes and syncs): nil while the pool works, else the error wrapping ErrClosed or
	// ErrFailed. Written by publishHealthLocked (fail, Close, the end of Open) and by a
	// refcount page that fails to load.
	health atomic.Pointer[error]
	// wrote is set after every data write completes and swapped to false by the commit that
	// syncs the data (journal.go).
	wrote atomic.Bool
	bufs  sync.Pool // block-sized buffers aligned for direct I/O

	// commitMu serializes everything that writes the journal region or a superblock: commits
	// (Flush), checkpoints, durable changes (Create*, Delete*, Clone*, Revert, GrowVolume),
	// Close and the exclusive Check. It is held across their writes and fdatasyncs, so each of
	// these waits for the one before it; data reads and writes never take it.
	commitMu sync.Mutex

	// writeGate keeps checkpoints and unfinished writes apart. It is held shared by every data
	// write and discard from before it looks up or allocates blocks until it has mapped them
	// (Volume.write, Volume.unmap), and exclusively by a checkpoint from before it lists what to
	// write until it has published it (checkpoint), across its writes and both fdatasyncs, and
	// by DiffVolume: neither may see a block allocated but not yet mapped, nor a tree node
	// change under it. Reads do not take it, so they go on during a checkpoint.
	writeGate sync.RWMutex

	// ioGate keeps changes to what blocks hold apart from the data I/O that uses them. It is
	// held shared by every data read and write for its whole duration, data I/O included, and
	// exclusively, to wait for the data I/O in flight on every volume, by: a change with a
	// barrier while it applies in memory (CreateSnapshot, CloneVolume, Revert and the deletes;
	// not while it commits: durableChange), the end of a commit or checkpoint that makes freed
	// blocks reusable (a read may still be reading one), and Close and the exclusive Check
	// across their checkpoint.
	ioGate sync.RWMutex

	// mu guards the fields below. It is held for work in memory, for reading the tree nodes and
	// refcount pages missing from their caches, and for punching out blocks as they become
	// free; never across a data read or write or an fdatasync, except by Close, the exclusive
	// Check and Open, which hold the whole pool across their checkpoint. Reads of cached
	// mappings hold it shared; everything else exclusively.
	mu sync.RWMutex

	failed error // sticky: set when a metadata write or sync fails
	closed bool

	// hostFull is set when a write met a file system without space or quota left for it
	// (ErrHostFull), and cleared when new blocks could be written again, a checkpoint
	// succeeded or freed blocks were punched out. While set, commits skip the checkpoints they
	// may take (needCheckpoint) and take only those they must (the journal is full).
	hostFull bool

	// checks counts read-only Checks in progress. While it is non-zero no checkpoint
	// completes, so the last one stays on disk as they read it: commits skip the checkpoints
	// they may take, and those that must happen wait (ckptWaiting counts them, from before
	// they wait until they are published or failed; no read-only Check starts while it is
	// non-zero). unpinned is broadcast on mu when either drops to 0. See check.go.
	checks      int
	ckptWaiting int
	unpinned    *sync.Cond

	vols      map[VolumeID]*volState
	volNames  map[string]VolumeID
	snaps     map[SnapshotID]*snapState
	snapNames map[string]SnapshotID
	nextVol   uint64
	nextSnap  uint64
	overProv  float64

	rc                *refcounts
	rcCacheBytes      int64
	pendingCommit     []uint64            // data blocks freed since the last commit
	pendingCheckpoint []uint64            // blocks the last checkpoint references, freed since
	reserved          map[uint64]struct{} // during replay: blocks later records map
	replaying         bool
	// replayVolatile is set while replay applies a record past the last RecCommit, durable in
	// no state yet (journal.go): until the recovery checkpoint, the data blocks it frees are
	// not reused (dataFreeMark) and those it unshares are not overwritten in place (decref).
	replayVolatile bool

	// unshared holds blocks (data blocks and tree nodes) whose refcount dropped to 1 by a
	// change not yet durable, with the commit sequence at the time. The holder left may not
	// overwrite data under them in place: if the change were lost in a crash, the block would
	// be shared again, and the other holder would read the new data (lookup). A block is
	// unshared-but-not-durable while its tag >= durableSeq.
	unshared   map[uint64]uint64
	cutSeq     uint64 // commits started (a commit covers every change made before its start)
	durableSeq uint64 // the cutSeq of the last commit that completed

	// The node cache: every dirty node, and clean ones up to the budget.
	// INVARIANT: between a checkpoint's prepare and publish steps (checkpoint.go), which hold
	// writeGate exclusively and commitMu, no dirty node and no dirty refcount page changes, so
	// its write step reads them without mu.
	nodes         map[uint64]*node
	dirtyNodes    int
	cleanNodes    int
	maxCleanNodes int
	nodeBlocks    uint64 // blocks held by tree nodes
	maxHeight     uint8  // tallest volume tree seen since Open (sizes the metadata reserve)
	catalogBlocks []uint64

	lsn        uint64 // last LSN assigned
	generation uint64 // generation of the last durable checkpoint
	ckptLSN    uint64

	// The journal's tail (journal.go). Records are placed here as they are appended, and
	// written to the journal region (writeJournal) before the change they describe returns.
	// jmu guards jpend and jpendAt; the other fields of the tail change holding both mu and
	// jmu, so either suffices to read them. It is taken last, and held only to copy bytes:
	// writeJournal takes it, not mu, so that it does not wait for writers looking up blocks.
	jmu     sync.Mutex
	jpos    uint64          // journal block of the tail (JournalBlocks: the journal is full)
	jused   int             // bytes of the tail block holding records
	jpend   []byte          // journal blocks jpendAt..jpos: full ones not written yet, then the tail
	jpendAt uint64          // journal block of jpend[0]
	jlast   uint64          // LSN of the last record placed in the journal
	jover   []format.Record // records that did not fit in the journal: only a checkpoint makes them durable
	// committedLSN is the LSN up to which the last commit made the records durable with their
	// data, which its RecCommit record (at commitRecLSN) states; both are the checkpoint's LSN
	// after a checkpoint.
	committedLSN uint64
	commitRecLSN uint64

	// jw serializes the writes of the journal region (writeJournal); it is taken before jmu
	// (and before mu where it meets it: a failed journal write fails the pool). written is the
	// LSN up to which every record placed has been written (read without jw); jwbuf is
	// writeJournal's buffer (REQUIRES jw).
	jw      sync.Mutex
	written atomic.Uint64
	jwbuf   []byte

	diffVisits uint64 // nodes compared by diffs (tests show diffs cost what changed)
}

// Recovery reports what Open replayed from the journal.
type Recovery struct {
	CheckpointLSN uint64        // the checkpoint recovery started from
	Records       int           // journal records replayed (RecCommit records aside: they change nothing)
	LastLSN       uint64        // LSN of the last record replayed (CheckpointLSN if none)
	Duration      time.Duration // time spent replaying
	// SameBoot is set when the journal was written under the boot that is running (File.Boot):
	// no power loss came between, and every record the last process wrote was replayed,
	// whether a commit covered it or not.
	SameBoot bool
	// Dropped counts the records found past the last commit that were not replayed because
	// the journal was written under another boot: a power loss or a reboot came between, and
	// their data may not have reached the disk (journal.go).
	Dropped int
	// DamagedRefcountPages lists refcount page slots that failed verification (each a
	// *CorruptionError naming its block). Refcounts were then rebuilt from the trees and
	// written anew, so the pool is consistent again.
	DamagedRefcountPages []error
}

// Stats describe a pool's space.
type Stats struct {
	BlockSize          int
	PhysicalBytes      int64   // data region: what volumes and metadata can use
	UsedBytes          int64   // blocks held by data, tree nodes and the catalog
	FreeBytes          int64   // PhysicalBytes - UsedBytes
	ProvisionedBytes   int64   // sum of volume sizes
	ProvisionLimit     int64   // PhysicalBytes × over-provisioning ratio
	MetadataBytes      int64   // tree nodes, catalog, refcount pages, journal, superblocks
	OverProvisionRatio float64 // configured ratio
	Volumes            int
	Snapshots          int
	LSN                uint64 // last log position assigned
	CheckpointLSN      uint64 // log position of the last checkpoint
}

// Geometry is how a pool is laid out, fixed when it was created. It explains what Stats
// reports (MetadataBytes is 2 superblocks, the journal, 2 slots per refcount page and the tree
// nodes and catalog blocks; PhysicalBytes is the data region) and what a tree costs: a leaf maps
// NodeEntries blocks, an inner node NodeEntries children.
type Geometry struct {
	BlockSize        int    // bytes per block
	NodeEntries      int    // entries per tree node
	RefcountsPerPage int    // data blocks whose refcounts one refcount page holds
	RefcountPages    uint64 // refcount pages, each kept in two slots (blocks)
	JournalBlocks    uint64 // blocks of the journal region
	DataStart        uint64 // first block of the data region: blocks before it are the fixed regions
	Blocks           uint64 // blocks of the pool, fixed regions included
}

// Geometry returns the pool's layout. It takes no lock: the layout never changes.
func (p *Pool) Geometry() Geometry {
	return Geometry{
		BlockSize:        p.bs,
		NodeEntries:      p.fanout,
		RefcountsPerPage: format.RCPerPage(p.bs),
		RefcountPages:    p.geo.RCPages,
		JournalBlocks:    p.geo.JournalBlocks,
		DataStart:        p.geo.DataStart,
		Blocks:           p.geo.PoolBlocks,
	}
}

const defaultOverProvision = 10

func (o *Options) defaults() {
	if o.BlockSize == 0 {
		o.BlockSize = format.DefaultBlockSize
	}
	if o.NodeCacheBytes == 0 {
		o.NodeCacheBytes = 64 << 20
	}
	if o.RefcountCacheBytes == 0 {
		o.RefcountCacheBytes = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
}

// Create makes a new pool at path: a new file of opts.Size bytes, or an existing block device,
// whose previous contents are lost. Create does not look at what a device holds: callers check
// that it is blank first (package provision does). A file is made atomically: it is formatted
// under a temporary name beside path (".<name>.creating", which a crash may leave and the next
// Create replaces) and appears at path only once its superblock is durable; an existing path is
// never replaced.
func Create(path string, opts Options) (*Pool, error) {
	if !isDevice(path) {
		return createFile(path, opts)
	}
	f, err := openOSFile(path, false, 0, false, opts.DirectIO)
	if err != nil {
		return nil, fmt.Errorf("blockstore: create pool %s: %w", path, err)
	}
	p, err := CreateOn(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// Open opens the pool at path, recovering from the journal if it was not closed cleanly.
func Open(path string, opts Options) (*Pool, error) {
	f, err := openOSFile(path, false, 0, false, opts.DirectIO)
	if err != nil {
		return nil, fmt.Errorf("blockstore: open pool %s: %w", path, err)
	}
	p, err := OpenOn(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// CreateOn formats f as a new pool. The pool owns f from then on, also when this fails.
func CreateOn(f File, opts Options) (*Pool, error) {
	opts.defaults()
	bs := opts.BlockSize
	if !format.ValidBlockSize(bs) {
		return nil, invalidf("block size %d: must be a power of two from %d to %d", bs, format.MinBlockSize, format.MaxBlockSize)
	}
	size, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("blockstore: pool size: %w", err)
	}
	blocks := uint64(size) / uint64(bs)
	jblocks := uint64(opts.JournalSize) / uint64(bs)
	if opts.JournalSize == 0 {
		jblocks = min(max(blocks/64, (1<<20)/uint64(bs)), (256<<20)/uint64(bs))
	}
	if jblocks < 2 {
		return nil, invalidf("journal size %d: must hold at least 2 blocks", opts.JournalSize)
	}
	perPage := uint64(format.RCPerPage(bs))
	if blocks < 2+jblocks+16 {
		return nil, invalidf("pool size %d: too small for block size %d (at least %d bytes)", size, bs, (2+jblocks+16)*uint64(bs)*2)
	}
	// data + 2*ceil(data/perPage) = blocks - 2 - jblocks
	avail := blocks - 2 - jblocks
	pages := (avail + 2*perPage) / (perPage + 2)
	for pages > 0 && (avail-2*(pages-1)) <= (pages-1)*perPage {
		pages--
	}
	for (avail - 2*pages) > pages*perPage {
		pages++
	}
	ratio := opts.OverProvisionRatio
	if ratio == 0 {
		ratio = defaultOverProvision
	}
	if !validRatio(ratio) {
		return nil, invalidf("over-provisioning ratio %v: must be from 1 to 1000", ratio)
	}
	fanout := format.NodeCapacity(bs)
	if opts.fanout != 0 {
		fanout = opts.fanout
	}
	sb := format.Superblock{
		Version:       format.Version,
		BlockSize:     uint32(bs),
		Fanout:        uint32(fanout),
		PoolBlocks:    blocks,
		JournalStart:  2,
		JournalBlocks: jblocks,
		RCStart:       2 + jblocks,
		RCPages:       pages,
		DataStart:     2 + jblocks + 2*pages,
		NextVolumeID:  1,
		NextSnapID:    1,
		Created:       opts.now().UnixNano(),
		OverProvision: uint32(math.Round(ratio * 100)),
	}
	sb.Boot = fileBoot(f) // the journal is written before the first checkpoint (journal.go)
	if opts.Preallocate {
		sb.Flags |= format.FlagThick
	}
	// Zero the superblock slots, the first journal block and every refcount slot that could
	// hold stale bytes (a reused file or device), so no old structure can pass for ours.
	zero := make([]byte, 1<<20)
	for off, end := int64(0), int64(sb.DataStart)*int64(bs); off < end; off += int64(len(zero)) {
		n := min(int64(len(zero)), end-off)
		if _, err := f.WriteAt(zero[:n], off); err != nil {
			return nil, fmt.Errorf("blockstore: format pool: %w", err)
		}
	}
	buf := make([]byte, bs)
	format.EncodeSuperblock(buf, &sb)
	if _, err := f.WriteAt(buf, 0); err != nil {
		return nil, fmt.Errorf("blockstore: write superblock: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("blockstore: sync new pool: %w", err)
	}
	opts.Logger.Info("pool created", "blockSize", bs, "blocks", blocks, "journalBlocks", jblocks, "dataBlocks", blocks-sb.DataStart)
	return openOn(f, opts, true)
}

// OpenOn opens the pool stored in f. The pool owns f from then on, also when this fails.
func OpenOn(f File, opts Options) (*Pool, error) { return openOn(f, opts, false) }

// openOn opens the pool in f; fresh says that CreateOn just formatted it, so its journal holds
// nothing but zeros and recovery need not start a new epoch.
func openOn(f File, opts Options, fresh bool) (*Pool, error) {
	opts.defaults()
	// Recovery reads what the disk holds, not pages that a failed write-back left in the cache
	// marked clean (see File and osFile.DropCache). Dirty pages stay: what a killed process
	// wrote, its journal records included, is read back (journal.go). CreateOn has just
	// written and synced all.
	if d, ok := f.(interface{ DropCache() error }); ok && !fresh {
		if err := d.DropCache(); err != nil {
			opts.Logger.Warn("dropping the pool's cached pages failed; recovery may read pages a failed write-back left in the cache", "err", err)
		}
	}
	sb, slot, slotErr, err := readSuperblock(f)
	if err != nil {
		return nil, err
	}
	bs := int(sb.BlockSize)
	p := &Pool{
		f:          f,
		bs:         bs,
		fanout:     int(sb.Fanout),
		geo:        *sb,
		log:        opts.Logger,
		direct:     opts.DirectIO,
		now:        opts.now,
		vols:       make(map[VolumeID]*volState),
		volNames:   make(map[string]VolumeID),
		snaps:      make(map[SnapshotID]*snapState),
		snapNames:  make(map[string]SnapshotID),
		nextVol:    sb.NextVolumeID,
		nextSnap:   sb.NextSnapID,
		overProv:   float64(sb.OverProvision) / 100,
		nodes:      make(map[uint64]*node),
		unshared:   make(map[uint64]uint64),
		generation: sb.Generation,
		ckptLSN:    sb.CheckpointLSN,
		lsn:        sb.CheckpointLSN,
		nodeBlocks: sb.NodeBlocks,
		jfile:      journalWriter(f),
		boot:       fileBoot(f),
	}
	p.bufs.New = func() any { b := alignedBuf(bs); return &b }
	p.unpinned = sync.NewCond(&p.mu)
	p.restartJournalLocked(sb.CheckpointLSN)
	if opts.OverProvisionRatio != 0 {
		if !validRatio(opts.OverProvisionRatio) {
			return nil, invalidf("over-provisioning ratio %v: must be from 1 to 1000", opts.OverProvisionRatio)
		}
		p.overProv = opts.OverProvisionRatio
	}
	p.maxCleanNodes = max(int(opts.NodeCacheBytes/int64(bs+64+8*p.fanout)), 64)
	p.rcCacheBytes = opts.RefcountCacheBytes
	p.rc = p.newRefcounts(p.rcCacheBytes)
	if err := p.loadRefcounts(); err != nil {
		return nil, err
	}
	if err := p.loadCatalog(sb.CatalogHead); err != nil {
		if slotErr != nil {
			return nil, fmt.Errorf("%w (the newest superblock is damaged: %v; the older one, generation %d, no longer matches the pool)", err, slotErr, sb.Generation)
		}
		return nil, err
	}
	if len(p.recovery.DamagedRefcountPages) > 0 {
		if err := p.rebuildRefcounts(); err != nil {
			return nil, err
		}
	}
	p.log.Info("pool opened", "superblockSlot", slot, "generation", sb.Generation, "checkpointLSN", sb.CheckpointLSN,
		"volumes", len(p.vols), "snapshots", len(p.snaps))
	if err := p.recover(fresh); err != nil {
		if slotErr != nil {
			return nil, fmt.Errorf("%w (%w)", err, slotErr)
		}
		return nil, err
	}
	p.publishHealthLocked()
	return p, nil
}

// readSuperblock returns the valid superblock with the highest generation, its slot, and the
// error of the other slot if that one is damaged (not merely absent). With no valid superblock it
// fails with ErrCorrupt when a slot holds a damaged one, and with ErrNotPool only when neither
// slot holds anything of a pool. A read error is returned as such: never taken for "not a pool".
func readSuperblock(f File) (*format.Superblock, int, error, error) {
	buf := make([]byte, format.MinBlockSize)
	var best *format.Superblock
	slot := -1
	var errs []error    // every slot's error, for the error of the other slot
	var damaged []error // slots that hold something of a superblock, but no valid one
	for s := range 2 {
		// A slot lives at the start of block s; block size is unknown until one is read, so
		// slot B is looked for at every possible block size.
		offs := []int64{0}
		if s == 1 {
			offs = offs[:0]
			for bs := format.MinBlockSize; bs <= format.MaxBlockSize; bs *= 2 {
				offs = append(offs, int64(bs))
			}
		}
		for _, off := range offs {
			if _, err := f.ReadAt(buf, off); err != nil {
				if !errors.Is(err, io.EOF) {
					return nil, 0, nil, fmt.Errorf("blockstore: read superblock slot %d at byte %d: %w", s, off, err)
				}
				continue // past the end
			}
			sb, err := format.DecodeSuperblock(buf)
			if err != nil {
				err = fmt.Errorf("slot %d at byte %d: %w", s, off, err)
				if !errors.Is(err, format.ErrMagic) {
					damaged = append(damaged, err)
				}
				errs = append(errs, err)
				continue
			}
			if s == 1 && int64(sb.BlockSize) != off {
				continue
			}
			if best == nil || sb.Generation > best.Generation {
				best, slot = sb, s
			}
		}
	}
	if best == nil && len(damaged) > 0 {
		msgs := make([]string, len(damaged))
		for i, e := range damaged {
			msgs[i] = e.Error()
		}
		return nil, 0, nil, fmt.Errorf("%w: no valid superblock, and a damaged one: %s", ErrCorrupt, strings.Join(msgs, "; "))
	}
	if best == nil {
		return nil, 0, nil, fmt.Errorf("%w: neither superblock slot holds a superblock", ErrNotPool)
	}
	if size, err := f.Size(); err != nil || uint64(size) < best.PoolBlocks*uint64(best.BlockSize) {
		return nil, 0, nil, fmt.Errorf("%w: pool of %d blocks does not fit in %d bytes (%v)", ErrCorrupt, best.PoolBlocks, size, err)
	}
	var other error
	for _, e := range errs {
		if errors.Is(e, format.ErrChecksum) || errors.Is(e, format.ErrInvalid) {
			other = &CorruptionError{Block: uint64(1 - slot), What: "superblock", Err: e}
		}
	}
	return best, slot, other, nil
}

// loadRefcounts reads the durable copy of every refcount page.
func (p *Pool) loadRefcounts() error {
	bs := p.bs
	const chunkPages = 64
	buf := make([]byte, 2*chunkPages*bs)
	tmp := [2][]uint32{make([]uint32, p.rc.perPage), make([]uint32, p.rc.perPage)}
	for first := 0; first < len(p.rc.pages); first += chunkPages {
		n := min(chunkPages, len(p.rc.pages)-first)
		off := int64(p.geo.RCStart+2*uint64(first)) * int64(bs)
		if _, err := p.f.ReadAt(buf[:2*n*bs], off); err != nil {
			return fmt.Errorf("blockstore: read refcount pages: %w", err)
		}
		for i := 0; i < n; i++ {
			pg := first + i
			best, bestGen := -1, uint64(0)
			for s := range 2 {
				b := buf[(2*i+s)*bs : (2*i+s+1)*bs]
				gen, ok, err := format.DecodeRCPage(b, uint32(pg), tmp[s])
				if err != nil {
					blk := p.geo.RCStart + 2*uint64(pg) + uint64(s)
					p.log.Warn("refcount page slot damaged; refcounts will be rebuilt from the trees", "page", pg, "block", blk, "err", err)
					p.recovery.DamagedRefcountPages = append(p.recovery.DamagedRefcountPages,
						&CorruptionError{Block: blk, What: "refcount page", Err: err})
					continue
				}
				if ok && gen <= p.generation && (best < 0 || gen > bestGen) {
					best, bestGen = s, gen
				}
			}
			if best < 0 {
				// Never written is fine only if nothing was ever allocated in the page; a
				// checkpoint writes every page it changes, so a page that is needed and has
				// no valid slot is detected by Check as refcount mismatches.
				continue
			}
			p.rc.slot[pg] = uint8(best)
			used := int32(0)
			for _, c := range tmp[best][:p.pageLen(pg)] {
				if c > maxRefs {
					return &CorruptionError{Block: p.geo.RCStart + 2*uint64(pg) + uint64(best), What: "refcount page",
						Err: fmt.Errorf("%w: count %#x", format.ErrInvalid, c)}
				}
				if c != 0 {
					used++
				}
			}
			p.rc.used[pg] = used
			p.rc.inUse += uint64(used)
			if used > 0 && p.rc.resident < p.rc.maxResident {
				p.rc.insert(pg, append([]uint32(nil), tmp[best]...))
			}
		}
	}
	return nil
}

// newRefcounts returns empty refcounts for this pool's data region, loading pages from their
// durable slots on demand.
func (p *Pool) newRefcounts(cacheBytes int64) *refcounts {
	r := newRefcounts(p.geo.DataStart, p.geo.PoolBlocks-p.geo.DataStart, format.RCPerPage(p.bs))
	r.maxResident = max(int(cacheBytes/int64(4*r.perPage+48)), 2)
	buf := make([]byte, p.bs)
	r.load = func(pg int, dst []uint32) error {
		blk := p.geo.RCStart + 2*uint64(pg) + uint64(r.slot[pg])
		if _, err := p.f.ReadAt(buf, int64(blk)*int64(p.bs)); err != nil {
			return fmt.Errorf("blockstore: read refcount page %d at block %d: %w", pg, blk, err)
		}
		_, ok, err := format.DecodeRCPage(buf, uint32(pg), dst[:p.pageLen(pg)])
		if err == nil && !ok {
			err = fmt.Errorf("%w: slot is empty", format.ErrInvalid)
		}
		if err != nil {
			return &CorruptionError{Block: blk, What: "refcount page", Err: err}
		}
		return nil
	}
	load := r.load
	r.load = func(pg int, dst []uint32) error {
		err := load(pg, dst)
		if err != nil { // r.err is set from it: Health reports the pool failed from now on
			failed := fmt.Errorf("%w: %w", ErrFailed, err)
			p.health.CompareAndSwap(nil, &failed)
		}
		return err
	}
	return r
}

// validRatio reports whether an over-provisioning ratio is in [1, 1000] (NaN is not).
func validRatio(r float64) bool { return r >= 1 && r <= 1000 }

// blockBuf returns a block-sized buffer aligned for direct I/O.
func (p *Pool) blockBuf() []byte     { return *p.bufs.Get().(*[]byte) }
func (p *Pool) putBlockBuf(b []byte) { p.bufs.Put(&b) }

// checkLocked returns the error that stops any change: closed or failed. REQUIRES p.mu.
func (p *Pool) checkLocked() error {
	if p.closed {
		return ErrClosed
	}
	if p.failed == nil && p.rc.err != nil {
		p.fail(p.rc.err)
	}
	if p.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, p.failed)
	}
	return nil
}

// fail records a metadata I/O error; the pool refuses changes from then on. REQUIRES p.mu.
func (p *Pool) fail(err error) error {
	if p.failed == nil {
		p.failed = err
		p.log.Error("pool failed; reopen to recover", "err", err)
		p.publishHealthLocked()
		p.forgetBootLocked()
	}
	return fmt.Errorf("%w: %w", ErrFailed, err)
}

// forgetBootLocked rewrites the superblock that recovery loads (generation p.generation)
// without its boot, so that recovery takes only what commits covered, as after a power loss
// (journal.go): once a write or fdatasync failed, the kernel may have dropped pages it could
// not write back, and the page cache no longer holds everything the pool wrote. It is best
// effort: a pool failing for lack of a working disk may not manage this write either.
// REQUIRES p.mu.
func (p *Pool) forgetBootLocked() {
	if p.geo.Version < 3 || p.boot == [16]byte{} {
		return // a pool not upgraded yet (every record is committed), or no boot to forget
	}
	buf := p.blockBuf()
	defer p.putBlockBuf(buf)
	off := int64(p.generation%2) * int64(p.bs)
	if _, err := p.f.ReadAt(buf, off); err != nil {
		p.log.Warn("the failed pool's superblock could not be read to forget its boot", "err", err)
		return
	}
	sb, err := format.DecodeSuperblock(buf)
	if err != nil || sb.Generation != p.generation || sb.Boot == [16]byte{} {
		return
	}
	sb.Boot = [16]byte{}
	format.EncodeSuperblock(buf, sb)
	if _, err := p.f.WriteAt(buf, off); err != nil {
		p.log.Warn("the failed pool's superblock could not be rewritten without its boot: after a restart under the same boot, recovery trusts the page cache", "err", err)
	}
}

// Health returns nil while the pool works, an error wrapping ErrClosed once it is closed, or
// one wrapping ErrFailed once a metadata write or sync failed (reopen to recover). It changes
// nothing, does no I/O and takes no lock: it answers at once also while a flush, a checkpoint
// or a Check is under way (a failure shows once the write or sync that failed returned).
func (p *Pool) Health() error {
	if err := p.health.Load(); err != nil {
		return *err
	}
	return nil
}

// publishHealthLocked makes Health answer what the pool's state says. REQUIRES p.mu.
func (p *Pool) publishHealthLocked() {
	if err := p.healthLocked(); err != nil {
		p.health.Store(&err)
	} else {
		p.health.Store(nil)
	}
}

// healthLocked is Health's answer from the state. REQUIRES p.mu.
func (p *Pool) healthLocked() error {
	if p.closed {
		return ErrClosed
	}
	if p.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, p.failed)
	}
	if p.rc.err != nil {
		return fmt.Errorf("%w: %w", ErrFailed, p.rc.err)
	}
	return nil
}

// Recovery reports what Open replayed.
func (p *Pool) Recovery() Recovery { return p.recovery }

// BlockSize returns the pool's block size in bytes.
func (p *Pool) BlockSize() int { return p.bs }

// Stats returns the pool's space accounting.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	bs := int64(p.bs)
	phys := int64(p.rc.n) * bs
	used := int64(p.rc.inUse) * bs
	st := Stats{
		BlockSize:          p.bs,
		PhysicalBytes:      phys,
		UsedBytes:          used,
		FreeBytes:          phys - used,
		ProvisionedBytes:   int64(p.provisioned()),
		ProvisionLimit:     int64(float64(phys) * p.overProv),
		OverProvisionRatio: p.overProv,
		Volumes:            len(p.vols),
		Snapshots:          len(p.snaps),
		LSN:                p.lsn,
		CheckpointLSN:      p.ckptLSN,
	}
	st.MetadataBytes = (int64(p.nodeBlocks) + int64(len(p.catalogBlocks)) + 2 + int64(p.geo.JournalBlocks) + 2*int64(p.geo.RCPages)) * bs
	return st
}

func (p *Pool) provisioned() uint64 {
	var s uint64
	for _, v := range p.vols {
		s += v.size
	}
	return s
}

// Close checkpoints the pool and releases the file. Volumes and views of it stop working.
func (p *Pool) Close() error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	p.ioGate.Lock()
	defer p.ioGate.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.waitChecksLocked() // read-only Checks read the file
	var err error
	if p.failed == nil {
		err = p.checkpointLocked()
	}
	p.closed = true
	p.publishHealthLocked()
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// recoveryCheckpoint takes the checkpoint that ends Open's recovery. When the file system
// holding the pool file has no room for it (ErrHostFull), Open goes on without it: the
// journal keeps the records just replayed and counts as full, so the next change must take the
// checkpoint, and fails with ErrHostFull until space is freed, while reads and writes into
// blocks that have their space go on. So does a commit, if records replayed past committed
// (the last LSN a commit covered: journal.go) wait for it to make them durable. REQUIRES
// exclusive use (Open).
func (p *Pool) recoveryCheckpoint(committed uint64) error {
	err := p.checkpointLocked()
	if errors.Is(err, ErrHostFull) {
		p.jmu.Lock()
		p.jpos = p.geo.JournalBlocks // full: records go to p.jover, and commits checkpoint
		p.jlast = p.lsn
		p.jmu.Unlock()
		p.written.Store(p.lsn)
		p.committedLSN = min(committed, p.lsn)
		p.commitRecLSN = p.committedLSN
		p.log.Warn("pool opened without its recovery checkpoint: the file system holding it is full; commits fail until space is freed", "err", err)
		return nil
	}
	return err
}
