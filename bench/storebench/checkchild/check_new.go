//go:build !oldcheck

package main

import (
	"fmt"

	"github.com/dataimage/dataimage/blockstore"
)

func check(p *blockstore.Pool, mode string, budget int64) (summary, error) {
	o := blockstore.CheckOptions{MemoryBytes: budget}
	switch mode {
	case "exclusive":
	case "readonly":
		o.ReadOnly = true
	default:
		return summary{}, fmt.Errorf("mode %q: exclusive or readonly", mode)
	}
	rep, err := p.CheckWith(o)
	if rep == nil {
		return summary{}, err
	}
	return summary{passes: rep.Passes, nodes: rep.Nodes, data: rep.DataBlocks, used: rep.UsedBlocks, ok: rep.OK()}, err
}
