//go:build ignore

// mkold writes a pool of an older format version whose journal holds records past its last
// checkpoint, as a build of that version leaves it when its process dies after a Flush. Copied
// to cmd/mkold of a checkout of an older commit (go run ./cmd/mkold pool-vN.img && gzip -9
// pool-vN.img), it made testdata/pool-v1.img.gz with the block store of commit 9a2af88 (format
// version 1) and testdata/pool-v2.img.gz with that of commit 335548b (format version 2).
package main

import (
	"fmt"
	"os"

	"github.com/dataimage/dataimage/blockstore"
)

func fill(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

func run(path string) error {
	opts := blockstore.Options{Size: 1 << 20, JournalSize: 16 * 4096}
	p, err := blockstore.Create(path, opts)
	if err != nil {
		return err
	}
	v, err := p.CreateVolume("v", 64*4096)
	if err != nil {
		return err
	}
	vol, _ := p.Volume(v.ID)
	if _, err := vol.WriteAt(fill(1, 16*4096), 0); err != nil {
		return err
	}
	if _, err := p.CreateSnapshot(v.ID, "s"); err != nil {
		return err
	}
	if err := p.Close(); err != nil {
		return err
	}
	p, err = blockstore.Open(path, blockstore.Options{})
	if err != nil {
		return err
	}
	vol, _ = p.Volume(v.ID)
	if _, err := vol.WriteAt(fill(2, 8*4096), 4*4096); err != nil {
		return err
	}
	if _, err := vol.WriteAt(fill(3, 4*4096), 40*4096); err != nil {
		return err
	}
	if err := vol.Discard(12*4096, 2*4096); err != nil {
		return err
	}
	if err := p.Flush(); err != nil {
		return err
	}
	fmt.Println("LSN", p.Stats().LSN, "checkpoint LSN", p.Stats().CheckpointLSN)
	return nil // no Close: the journal keeps the records
}

func main() {
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
