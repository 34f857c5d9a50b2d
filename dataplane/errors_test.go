package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// roundTrip sends err across the wire's encoding (JSON included) and back.
func roundTrip(t *testing.T, err error) error {
	t.Helper()
	b, merr := json.Marshal(encodeError(err))
	require.NoError(t, merr)
	var w wireError
	require.NoError(t, json.Unmarshal(b, &w))
	return w.decode()
}

// TestErrorsCrossTheWire: every error of the table keeps its meaning across the socket (errors.Is
// matches it, and what it matches, after the round trip) and its message, under any wrapping,
// with several sentinels at once, and with the errno it wraps; an error that matches none stays
// an error with its message and matches none.
func TestErrorsCrossTheWire(t *testing.T) {
	for _, c := range errorCodes {
		for _, err := range []error{c.err, fmt.Errorf("volume 7: %w", c.err)} {
			got := roundTrip(t, err)
			require.ErrorIs(t, got, c.err, "%s", c.code)
			require.Equal(t, err.Error(), got.Error())
			for _, other := range errorCodes {
				require.Equal(t, errors.Is(err, other.err), errors.Is(got, other.err), "%s: matches %s", c.code, other.code)
			}
		}
	}
	for _, tc := range []struct {
		name string
		err  error
		want []error
	}{
		{"host full is a full pool", fmt.Errorf("%w: write block 7: %w", blockstore.ErrHostFull, &os.PathError{Op: "write", Path: "pool", Err: syscall.EDQUOT}),
			[]error{blockstore.ErrHostFull, blockstore.ErrNoSpace, syscall.ENOSPC, syscall.EDQUOT}},
		{"leftovers and busy", fmt.Errorf("%w: %w: /dev/loop3 still mounted at /x", export.ErrLeftovers, export.ErrBusy),
			[]error{export.ErrLeftovers, export.ErrBusy}},
		{"export error with errno", &export.Error{Op: "detach loop device", ID: "dv-x", Device: "/dev/loop9", Err: fmt.Errorf("%w: %w", export.ErrBusy, syscall.EBUSY)},
			[]error{export.ErrBusy, syscall.EBUSY}},
		{"unmount EBUSY", &os.PathError{Op: "unmount", Path: "/x", Err: syscall.EBUSY}, []error{syscall.EBUSY}},
		{"corruption", &blockstore.CorruptionError{Block: 9, What: "tree node", Err: errors.New("bad crc")}, []error{blockstore.ErrCorrupt}},
		{"failed pool, full", fmt.Errorf("%w: sync: %w", blockstore.ErrFailed, syscall.ENOSPC), []error{blockstore.ErrFailed, syscall.ENOSPC}},
		{"canceled", fmt.Errorf("lock: %w", context.Canceled), []error{context.Canceled}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := roundTrip(t, tc.err)
			require.Equal(t, tc.err.Error(), got.Error())
			for _, w := range tc.want {
				require.ErrorIs(t, got, w)
			}
			require.NotErrorIs(t, got, blockstore.ErrNotFound)
		})
	}
	got := roundTrip(t, errors.New("mkfs: exit status 1"))
	require.Equal(t, "mkfs: exit status 1", got.Error())
	for _, c := range errorCodes {
		require.NotErrorIs(t, got, c.err)
	}
	// A code this version does not know (a newer data plane's) is dropped; the message stays.
	got = (&wireError{Codes: []string{"from_the_future", "not_found"}, Message: "m"}).decode()
	require.ErrorIs(t, got, blockstore.ErrNotFound)
	require.Equal(t, "m", got.Error())
}

// TestErrorCodesUnique: a code names one error, and an error has one code.
func TestErrorCodesUnique(t *testing.T) {
	codes, errs := map[string]bool{}, map[error]bool{}
	for _, c := range errorCodes {
		require.False(t, codes[c.code], "code %s twice", c.code)
		require.False(t, errs[c.err], "error %v twice", c.err)
		codes[c.code], errs[c.err] = true, true
	}
}
