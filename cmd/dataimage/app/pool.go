package app

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func (c *cli) poolCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Show the pool's use, check its consistency",
		Long: `The pool is the copy-on-write block store under the data home that holds every image and
clone. Its capacity is thin: clones share their image's blocks, so the sum of the volumes' sizes
(provisioned) can exceed the capacity; what counts is the bytes used.`,
		Example: `  dataimage pool status
  dataimage pool check`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(c.poolStatusCmd(), c.poolCheckCmd())
	return cmd
}

func (c *cli) poolStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the pool's capacity and use",
		Long: `Show the pool's capacity, the bytes used and free, the sum of the volumes' sizes, and how the
used bytes split between what the images hold and what the clones' writes added.`,
		Example: `  dataimage pool status
  dataimage pool status -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			st, err := svc.PoolStatus(cmd.Context())
			if err != nil {
				return fmt.Errorf("pool status: %w", err)
			}
			return c.emit(st, func(w io.Writer) error { return c.view().pool(w, st) })
		},
	}
}

func (c *cli) poolCheckCmd() *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:   "check [--repair]",
		Short: "Check the pool's consistency (exit status 1 on problems)",
		Long: `Check the pool's consistency: every tree, refcount and free block (the block store's fsck).
The check is read-only: it verifies the pool's last checkpoint while clones keep running, and
writes nothing. With --repair it holds the pool (clones' I/O waits), checkpoints, checks and
frees leaked blocks. The exit status is 1 when problems were found, repaired or not.`,
		Example: `  dataimage pool check
  dataimage pool check --repair`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, err := c.service(cmd)
			if err != nil {
				return err
			}
			rep, err := svc.CheckPool(cmd.Context(), repair)
			if err != nil {
				return fmt.Errorf("pool check: %w", err)
			}
			if err := c.emit(rep, func(w io.Writer) error { return c.view().check(w, rep) }); err != nil {
				return err
			}
			if !rep.OK || len(rep.Problems) > 0 {
				return fmt.Errorf("%w: %d problems, %d repaired", errProblems, len(rep.Problems), len(rep.Repaired))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "free leaked blocks")
	return cmd
}
