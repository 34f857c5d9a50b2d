package local

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// Client is Service over a daemon's socket. Its errors are *Error with the kind the daemon
// reported, so errors.Is(err, ErrHasClones) works as it does in the daemon; a daemon that does
// not answer is ErrUnavailable.
type Client struct {
	socket string
	hc     *http.Client
}

var (
	_ Service = (*Client)(nil)
	_ Service = (*Daemon)(nil)
)

// ConnectOptions are Connect's options.
type ConnectOptions struct {
	// Start starts a daemon when none answers: Executable with DaemonArgs, detached (its own
	// session), its output appended to the home's daemon.log.
	Start bool
	// Executable is the daemon's program ("" = this program).
	Executable string
	DaemonArgs []string
	// Timeout bounds the wait for a started daemon to answer (default 60s: a daemon restarts
	// its clones before it answers).
	Timeout time.Duration
}

// Connect returns a client of the daemon serving home ("" = DefaultHome), starting one if asked
// and none answers.
func Connect(ctx context.Context, home string, opts ConnectOptions) (*Client, error) {
	if home == "" {
		home = DefaultHome
	}
	home, err := filepath.Abs(home)
	if err != nil {
		return nil, fmt.Errorf("local: home: %w", err)
	}
	c := newClient(SocketPath(home))
	err = c.ping(ctx)
	if err == nil || !opts.Start || !errors.Is(err, ErrUnavailable) {
		if err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	if err := startDaemon(ctx, c, home, opts); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func newClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Close releases the client's idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// ping asks the daemon whether it answers.
func (c *Client) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var h healthResponse
	return c.do(ctx, http.MethodGet, "/v1/health", nil, &h)
}

// startDaemon starts a daemon for home and waits until it answers at c's socket (spawn.start).
func startDaemon(ctx context.Context, c *Client, home string, opts ConnectOptions) error {
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	return spawn{what: "dataimage daemon", home: home, executable: opts.Executable, args: opts.DaemonArgs, logPath: LogPath(home),
		timeout: timeout, ready: c.ping, held: func() bool { return lockHeld(home) }}.start(ctx)
}

// lockHeld reports whether a daemon holds home's lock.
func lockHeld(home string) bool {
	f, err := os.Open(filepath.Join(home, "daemon.lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	return false
}

// do sends a request with body (JSON, if not nil) and decodes the answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return responseError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("local: %s %s: decode the daemon's answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("local: encode request: %w", err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://dataimage"+path, r)
	if err != nil {
		return nil, fmt.Errorf("local: %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("local: %s %s: %w", method, path, ctx.Err())
		}
		return nil, &Error{Kind: ErrUnavailable, Message: fmt.Sprintf("no dataimage daemon answers at %s: %v", c.socket, unwrapURLError(err))}
	}
	return resp, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// responseError decodes a failure's wireError.
func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var we wireError
	if err := json.Unmarshal(b, &we); err != nil || we.Message == "" {
		return fmt.Errorf("local: the daemon answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return we.err()
}

// BuildImage implements Service. The daemon's events are decoded by the builder's wire format's
// rules (package wire): of a daemon of a newer minor format, what this client knows; events of
// kinds it does not know are skipped. Events it cannot read at all (another major format) are
// skipped too, and the first of them is reported to progress as an event without a step whose
// message says why progress is not shown; the build goes on.
func (c *Client) BuildImage(ctx context.Context, req BuildRequest, progress func(wire.Event)) (*Image, error) {
	return c.stream(ctx, "build", "/v1/images", req, progress)
}

// PushImage implements Service; its events are read as BuildImage's.
func (c *Client) PushImage(ctx context.Context, req PushRequest, progress func(wire.Event)) (*Image, error) {
	return c.stream(ctx, "push", "/v1/images/"+url.PathEscape(req.Image)+"/push", req, progress)
}

// PullImage implements Service; its events are read as BuildImage's.
func (c *Client) PullImage(ctx context.Context, req PullRequest, progress func(wire.Event)) (*Image, error) {
	return c.stream(ctx, "pull", "/v1/remote/pull", req, progress)
}

// RemoteImages implements Service.
func (c *Client) RemoteImages(ctx context.Context, r Remote) ([]RemoteImage, error) {
	var out []RemoteImage
	err := c.do(ctx, http.MethodPost, "/v1/remote/list", r, &out)
	return out, err
}

// DeleteRemoteImage implements Service.
func (c *Client) DeleteRemoteImage(ctx context.Context, ref string, r Remote) (*RemoteDeletion, error) {
	var out RemoteDeletion
	if err := c.do(ctx, http.MethodPost, "/v1/remote/delete", remoteDeleteRequest{Ref: ref, Remote: r}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// stream sends a request whose answer is a stream of buildLine (a build, a push, a pull) and
// reads it: events to progress, then the image or the error. what names it in messages.
func (c *Client) stream(ctx context.Context, what, path string, req any, progress func(wire.Event)) (*Image, error) {
	resp, err := c.send(ctx, http.MethodPost, path, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nil, responseError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	unreadable := false // an event could not be read, and progress was told
	for sc.Scan() {
		var line buildLine
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return nil, fmt.Errorf("local: %s: decode the daemon's stream: %w", what, err)
		}
		switch {
		case line.Event != nil:
			ev, err := wire.DecodeEvent(line.Event)
			switch {
			case progress == nil, errors.Is(err, wire.ErrUnknownKind):
			case err == nil:
				progress(ev)
			case !unreadable:
				unreadable = true
				progress(wire.Event{Message: fmt.Sprintf("%s progress not shown: %v", what, err)})
			}
		case line.Image != nil:
			return line.Image, nil
		case line.Error != nil:
			return nil, line.Error.err()
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("local: %s: %w", what, ctx.Err())
		}
		return nil, &Error{Kind: ErrUnavailable, Message: fmt.Sprintf("the daemon's %s stream broke: %v", what, err)}
	}
	return nil, &Error{Kind: ErrUnavailable, Message: fmt.Sprintf("the daemon's %s stream ended without a result (did the daemon stop?)", what)}
}

// Images implements Service.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var out []Image
	return out, c.do(ctx, http.MethodGet, "/v1/images", nil, &out)
}

// Image implements Service.
func (c *Client) Image(ctx context.Context, name string) (*Image, error) {
	var out Image
	if err := c.do(ctx, http.MethodGet, "/v1/images/"+url.PathEscape(name), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteImage implements Service.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/images/"+url.PathEscape(name), nil, nil)
}

// ImageFromClone implements Service.
func (c *Client) ImageFromClone(ctx context.Context, req ImageFromCloneRequest) (*Image, error) {
	var out Image
	if err := c.do(ctx, http.MethodPost, "/v1/images/from-clone", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateClone implements Service.
func (c *Client) CreateClone(ctx context.Context, req CloneRequest) (*Clone, error) {
	return c.clone(ctx, http.MethodPost, "/v1/clones", req)
}

// Clones implements Service.
func (c *Client) Clones(ctx context.Context) ([]Clone, error) {
	var out []Clone
	return out, c.do(ctx, http.MethodGet, "/v1/clones", nil, &out)
}

// Clone implements Service.
func (c *Client) Clone(ctx context.Context, name string) (*Clone, error) {
	return c.clone(ctx, http.MethodGet, "/v1/clones/"+url.PathEscape(name), nil)
}

// DeleteClone implements Service.
func (c *Client) DeleteClone(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/clones/"+url.PathEscape(name), nil, nil)
}

// StopClone implements Service.
func (c *Client) StopClone(ctx context.Context, name string) (*Clone, error) {
	return c.clone(ctx, http.MethodPost, "/v1/clones/"+url.PathEscape(name)+"/stop", nil)
}

// StartClone implements Service.
func (c *Client) StartClone(ctx context.Context, name string) (*Clone, error) {
	return c.clone(ctx, http.MethodPost, "/v1/clones/"+url.PathEscape(name)+"/start", nil)
}

// ResetClone implements Service.
func (c *Client) ResetClone(ctx context.Context, name, to string) (*Clone, error) {
	return c.clone(ctx, http.MethodPost, "/v1/clones/"+url.PathEscape(name)+"/reset", resetRequest{To: to})
}

// SaveClone implements Service.
func (c *Client) SaveClone(ctx context.Context, name, revision string) (*Revision, error) {
	var out Revision
	if err := c.do(ctx, http.MethodPost, "/v1/clones/"+url.PathEscape(name)+"/save", saveRequest{Revision: revision}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) clone(ctx context.Context, method, path string, body any) (*Clone, error) {
	var out Clone
	if err := c.do(ctx, method, path, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PoolStatus implements Service.
func (c *Client) PoolStatus(ctx context.Context) (*PoolStatus, error) {
	var out PoolStatus
	if err := c.do(ctx, http.MethodGet, "/v1/pool", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CheckPool implements Service.
func (c *Client) CheckPool(ctx context.Context, repair bool) (*CheckReport, error) {
	var out CheckReport
	if err := c.do(ctx, http.MethodPost, "/v1/pool/check", checkRequest{Repair: repair}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
