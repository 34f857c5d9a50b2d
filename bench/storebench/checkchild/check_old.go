//go:build oldcheck

package main

import (
	"fmt"

	"github.com/dataimage/dataimage/blockstore"
)

// check runs the Check of a tree from before CheckOptions: exclusive, one map of every used
// block.
func check(p *blockstore.Pool, mode string, _ int64) (summary, error) {
	if mode != "exclusive" {
		return summary{}, fmt.Errorf("mode %q: the old Check is exclusive only", mode)
	}
	rep, err := p.Check(false)
	if rep == nil {
		return summary{}, err
	}
	return summary{passes: 1, nodes: rep.Nodes, data: rep.DataBlocks, used: rep.UsedBlocks, ok: rep.OK()}, err
}
