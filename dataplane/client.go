package dataplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/dataimage/dataimage/blockstore"
	"github.com/dataimage/dataimage/blockstore/export"
)

// Client is a Store reached over the data plane's socket (wire.go). It connects when a call
// needs it and again after the data plane restarted; a call that cannot reach the data plane
// fails with ErrUnavailable. Its methods are safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

var _ Store = (*Client)(nil)

// NewClient returns a client of the data plane listening at socket. It connects nothing yet.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        16,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     time.Minute,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket returns the socket the client calls.
func (c *Client) Socket() string { return c.socket }

// Close releases the client's idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Version returns the API version and the build of the data plane.
func (c *Client) Version(ctx context.Context) (api int, version string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://dataplane/v%d/version", APIVersion), nil)
	if err != nil {
		return 0, "", fmt.Errorf("dataplane: version: %w", err)
	}
	var v versionInfo
	if err := c.do(ctx, "version", req, &v); err != nil {
		return 0, "", err
	}
	return v.API, v.Version, nil
}

// WaitReady waits until the data plane answers (its pool may still have failed: Health says),
// trying every 100 ms, and logging every 10 s that it waits, until ctx ends.
func (c *Client) WaitReady(ctx context.Context, log *slog.Logger) error {
	start, logged := time.Now(), time.Now()
	for {
		api, version, err := c.Version(ctx)
		if err == nil {
			if api != APIVersion {
				return wrapf(ErrProtocol, "the data plane at %s speaks API version %d, this program %d", c.socket, api, APIVersion)
			}
			if log != nil {
				log.Info("data plane answers", "socket", c.socket, "version", version, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("dataplane: wait for the data plane at %s: %w (last: %v)", c.socket, ctx.Err(), err)
		}
		if log != nil && time.Since(logged) >= 10*time.Second {
			log.Info("waiting for the data plane", "socket", c.socket, "waited", time.Since(start).Round(time.Second), "err", err)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// call calls method with r and decodes its result into out (nil: none).
func (c *Client) call(ctx context.Context, method string, r request, out any) error {
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("dataplane: %s: encode the request: %w", method, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://dataplane/v%d/%s", APIVersion, method), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("dataplane: %s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(ctx, method, req, out)
}

// do sends req and decodes the answer's result into out.
func (c *Client) do(ctx context.Context, method string, req *http.Request, out any) error {
	resp, err := c.send(ctx, method, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return c.answer(ctx, method, resp, out)
}

// send sends req, a call of method: a data plane that does not answer is ErrUnavailable.
func (c *Client) send(ctx context.Context, method string, req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dataplane: %s: %w", method, ctx.Err())
		}
		return nil, fmt.Errorf("%w: %s at %s: %v", ErrUnavailable, method, c.socket, err)
	}
	return resp, nil
}

// answer decodes the answer resp to a call of method: its result into out, or its error.
func (c *Client) answer(ctx context.Context, method string, resp *http.Response, out any) error {
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("dataplane: %s: %w", method, ctx.Err())
		}
		return fmt.Errorf("%w: %s at %s: read the answer: %v", ErrUnavailable, method, c.socket, err)
	}
	var a answer[json.RawMessage]
	if err := json.Unmarshal(data, &a); err != nil {
		return wrapf(ErrProtocol, "%s: HTTP %d, an answer that is not the data plane's: %.200q", method, resp.StatusCode, data)
	}
	if a.Error != nil {
		return a.Error.decode()
	}
	if resp.StatusCode != http.StatusOK {
		return wrapf(ErrProtocol, "%s: HTTP %d without an error", method, resp.StatusCode)
	}
	if out == nil || len(a.Result) == 0 {
		return nil
	}
	if err := json.Unmarshal(a.Result, out); err != nil {
		return wrapf(ErrProtocol, "%s: decode the result: %v", method, err)
	}
	return nil
}

func (c *Client) Health(ctx context.Context) error { return c.call(ctx, "Health", request{}, nil) }

func (c *Client) Stats(ctx context.Context) (blockstore.Stats, error) {
	var w wireStats
	err := c.call(ctx, "Stats", request{}, &w)
	return w.stats(), err
}

func (c *Client) Check(ctx context.Context, o blockstore.CheckOptions) (*blockstore.CheckReport, error) {
	var w wireCheck
	if err := c.call(ctx, "Check", request{Check: &wireCheckOptions{ReadOnly: o.ReadOnly, Repair: o.Repair, MemoryBytes: o.MemoryBytes}}, &w); err != nil {
		return nil, err
	}
	rep := w.Report.report()
	if w.Error != nil {
		return rep, w.Error.decode()
	}
	if rep == nil {
		return nil, wrapf(ErrProtocol, "Check: neither a report nor an error")
	}
	return rep, nil
}

// volumeCall calls a method whose result is a volume.
func (c *Client) volumeCall(ctx context.Context, method string, r request) (blockstore.VolumeInfo, error) {
	var w wireVolume
	if err := c.call(ctx, method, r, &w); err != nil {
		return blockstore.VolumeInfo{}, err
	}
	return w.info(), nil
}

// snapshotCall calls a method whose result is a snapshot.
func (c *Client) snapshotCall(ctx context.Context, method string, r request) (blockstore.SnapshotInfo, error) {
	var w wireSnapshot
	if err := c.call(ctx, method, r, &w); err != nil {
		return blockstore.SnapshotInfo{}, err
	}
	return w.info(), nil
}

func (c *Client) CreateVolume(ctx context.Context, name string, size int64) (blockstore.VolumeInfo, error) {
	return c.volumeCall(ctx, "CreateVolume", request{Name: name, Size: size})
}

func (c *Client) Clone(ctx context.Context, snap blockstore.SnapshotID, name string, size int64) (blockstore.VolumeInfo, error) {
	return c.volumeCall(ctx, "Clone", request{Snapshot: uint64(snap), Name: name, Size: size})
}

func (c *Client) CloneVolume(ctx context.Context, src blockstore.VolumeID, name string, size int64) (blockstore.VolumeInfo, error) {
	return c.volumeCall(ctx, "CloneVolume", request{Volume: uint64(src), Name: name, Size: size})
}

func (c *Client) GrowVolume(ctx context.Context, id blockstore.VolumeID, size int64) error {
	return c.call(ctx, "GrowVolume", request{Volume: uint64(id), Size: size}, nil)
}

func (c *Client) DeleteVolume(ctx context.Context, id blockstore.VolumeID) error {
	return c.call(ctx, "DeleteVolume", request{Volume: uint64(id)}, nil)
}

func (c *Client) DeleteVolumeSnapshots(ctx context.Context, id blockstore.VolumeID) (int, error) {
	var n int
	err := c.call(ctx, "DeleteVolumeSnapshots", request{Volume: uint64(id)}, &n)
	return n, err
}

func (c *Client) Revert(ctx context.Context, vol blockstore.VolumeID, snap blockstore.SnapshotID) error {
	return c.call(ctx, "Revert", request{Volume: uint64(vol), Snapshot: uint64(snap)}, nil)
}

func (c *Client) VolumeInfo(ctx context.Context, id blockstore.VolumeID) (blockstore.VolumeInfo, error) {
	return c.volumeCall(ctx, "VolumeInfo", request{Volume: uint64(id)})
}

func (c *Client) LookupVolume(ctx context.Context, name string) (blockstore.VolumeInfo, error) {
	return c.volumeCall(ctx, "LookupVolume", request{Name: name})
}

func (c *Client) ListVolumes(ctx context.Context) ([]blockstore.VolumeInfo, error) {
	var w []wireVolume
	if err := c.call(ctx, "ListVolumes", request{}, &w); err != nil {
		return nil, err
	}
	return convert(w, wireVolume.info), nil
}

func (c *Client) CreateSnapshot(ctx context.Context, vol blockstore.VolumeID, name string) (blockstore.SnapshotInfo, error) {
	return c.snapshotCall(ctx, "CreateSnapshot", request{Volume: uint64(vol), Name: name})
}

func (c *Client) DeleteSnapshot(ctx context.Context, id blockstore.SnapshotID) error {
	return c.call(ctx, "DeleteSnapshot", request{Snapshot: uint64(id)}, nil)
}

func (c *Client) SnapshotInfo(ctx context.Context, id blockstore.SnapshotID) (blockstore.SnapshotInfo, error) {
	return c.snapshotCall(ctx, "SnapshotInfo", request{Snapshot: uint64(id)})
}

func (c *Client) LookupSnapshot(ctx context.Context, name string) (blockstore.SnapshotInfo, error) {
	return c.snapshotCall(ctx, "LookupSnapshot", request{Name: name})
}

func (c *Client) ListSnapshots(ctx context.Context) ([]blockstore.SnapshotInfo, error) {
	var w []wireSnapshot
	if err := c.call(ctx, "ListSnapshots", request{}, &w); err != nil {
		return nil, err
	}
	return convert(w, wireSnapshot.info), nil
}

func (c *Client) DiffVolume(ctx context.Context, from blockstore.SnapshotID, vol blockstore.VolumeID) ([]blockstore.Extent, error) {
	var w []wireExtent
	if err := c.call(ctx, "DiffVolume", request{Snapshot: uint64(from), Volume: uint64(vol)}, &w); err != nil {
		return nil, err
	}
	return extents(w), nil
}

func (c *Client) AllocatedExtents(ctx context.Context, snap blockstore.SnapshotID) ([]blockstore.Extent, error) {
	var w []wireExtent
	if err := c.call(ctx, "AllocatedExtents", request{Snapshot: uint64(snap)}, &w); err != nil {
		return nil, err
	}
	return extents(w), nil
}

func (c *Client) Export(ctx context.Context, spec ExportSpec) (Export, error) {
	var w wireExport
	if err := c.call(ctx, "Export", request{ID: spec.ID, Volume: uint64(spec.Volume), Attrs: spec.Attrs}, &w); err != nil {
		return Export{}, err
	}
	return w.export(), nil
}

func (c *Client) Unexport(ctx context.Context, id string) error {
	return c.call(ctx, "Unexport", request{ID: id}, nil)
}

func (c *Client) ResizeExport(ctx context.Context, id string) error {
	return c.call(ctx, "ResizeExport", request{ID: id}, nil)
}

func (c *Client) ListExports(ctx context.Context) ([]Export, error) {
	var w []wireExport
	if err := c.call(ctx, "ListExports", request{}, &w); err != nil {
		return nil, err
	}
	return convert(w, wireExport.export), nil
}

func (c *Client) Leftovers(ctx context.Context) ([]export.Leftover, error) {
	var w []wireLeftover
	if err := c.call(ctx, "Leftovers", request{}, &w); err != nil {
		return nil, err
	}
	return convert(w, wireLeftover.leftover), nil
}

func (c *Client) CleanupLeftover(ctx context.Context, id string) error {
	return c.call(ctx, "CleanupLeftover", request{ID: id}, nil)
}

func (c *Client) IOStats(ctx context.Context) (IOStats, error) {
	var w wireIOStats
	err := c.call(ctx, "IOStats", request{}, &w)
	return w.stats(), err
}

func (c *Client) ZeroVolume(ctx context.Context, id blockstore.VolumeID, off, length int64) error {
	return c.call(ctx, "ZeroVolume", request{Volume: uint64(id), Offset: off, Size: length}, nil)
}

func (c *Client) FlushVolume(ctx context.Context, id blockstore.VolumeID) error {
	return c.call(ctx, "FlushVolume", request{Volume: uint64(id)}, nil)
}

func (c *Client) ReadVolume(ctx context.Context, id blockstore.VolumeID, off int64, b []byte) error {
	if len(b) > MaxDataBytes {
		return wrapf(ErrInvalid, "ReadVolume: %d bytes: want at most %d", len(b), MaxDataBytes)
	}
	url := fmt.Sprintf("http://dataplane/v%d/ReadVolume?volume=%d&offset=%d&size=%d", APIVersion, id, off, len(b))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return fmt.Errorf("dataplane: ReadVolume: %w", err)
	}
	return c.doData(ctx, "ReadVolume", req, b)
}

func (c *Client) WriteVolume(ctx context.Context, id blockstore.VolumeID, off int64, b []byte) error {
	if len(b) > MaxDataBytes {
		return wrapf(ErrInvalid, "WriteVolume: %d bytes: want at most %d", len(b), MaxDataBytes)
	}
	url := fmt.Sprintf("http://dataplane/v%d/WriteVolume?volume=%d&offset=%d", APIVersion, id, off)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("dataplane: WriteVolume: %w", err)
	}
	req.Header.Set("Content-Type", dataContentType)
	return c.do(ctx, "WriteVolume", req, nil)
}

// doData sends req, a ReadVolume, and reads the data it answers into b; an error answer is
// decoded as do decodes it.
func (c *Client) doData(ctx context.Context, method string, req *http.Request, b []byte) error {
	resp, err := c.send(ctx, method, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != dataContentType {
		return c.answer(ctx, method, resp, nil)
	}
	if resp.ContentLength != int64(len(b)) {
		return wrapf(ErrProtocol, "%s: %d bytes of data answered, %d asked", method, resp.ContentLength, len(b))
	}
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("dataplane: %s: %w", method, ctx.Err())
		}
		return fmt.Errorf("%w: %s at %s: read the data: %v", ErrUnavailable, method, c.socket, err)
	}
	return nil
}
