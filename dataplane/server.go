package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dataimage/dataimage/blockstore"
)

// Server serves a Store's API (wire.go) on a unix socket.
type Server struct {
	store   Store
	version string
	log     *slog.Logger
}

// NewServer returns a server of store; version is the data plane's build, which GET /v1/version
// reports. A nil log discards.
func NewServer(store Store, version string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{store: store, version: version, log: log}
}

// maxRequestBytes bounds a request's body: the largest is an Export with its attrs.
const maxRequestBytes = 1 << 20

// serveGrace bounds how long Serve waits for calls in flight after its context ends.
const serveGrace = 30 * time.Second

// Listen listens on a unix socket at path that only this process's user can connect to (mode
// 0600; the data plane runs as root): the directory is made (0700) if missing, a stale socket
// at path is removed, and the socket appears at path with its mode already set (it is made
// under a temporary name and renamed). Anything but a socket at path is left alone, and Listen
// fails.
func Listen(path string) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, wrapf(ErrInvalid, "socket %q: want an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("dataplane: socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, wrapf(ErrInvalid, "socket %s: a %s is there", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("dataplane: remove the stale socket %s: %w", path, err)
		}
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("dataplane: remove %s: %w", tmp, err)
	}
	lis, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("dataplane: listen on %s: %w", path, err)
	}
	ul := lis.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // the socket file is renamed: Close removes it at its new path below
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("dataplane: socket mode: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("dataplane: socket %s: %w", path, err))
	}
	return &socketListener{UnixListener: ul, path: path}, nil
}

// socketListener removes its socket file when closed.
type socketListener struct {
	*net.UnixListener
	path string
}

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

// Serve serves the API on lis until ctx ends, then stops: no new calls, calls in flight get
// 30 s to finish. It returns nil after a stop caused by ctx, and closes lis (removing a socket
// Listen made).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.log.Info("serving the data plane API", "socket", lis.Addr().String(), "api", APIVersion, "version", s.version)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), serveGrace)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			s.log.Warn("calls still running after the grace period; closing them", "grace", serveGrace)
			hs.Close()
		}
	}()
	err := hs.Serve(lis)
	if ctx.Err() != nil {
		<-stopped
		return nil
	}
	lis.Close()
	return fmt.Errorf("dataplane: serve: %w", err)
}

// ServeHTTP answers one call (wire.go).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	prefix := fmt.Sprintf("/v%d/", APIVersion)
	name, ok := strings.CutPrefix(r.URL.Path, prefix)
	switch {
	case !ok:
		s.reply(w, nil, wrapf(ErrProtocol, "path %s: this data plane serves API version %d (%s...)", r.URL.Path, APIVersion, prefix))
		return
	case name == "version" && r.Method == http.MethodGet:
		s.reply(w, versionInfo{API: APIVersion, Version: s.version, Methods: methodNames}, nil)
		return
	case r.Method != http.MethodPost:
		s.reply(w, nil, wrapf(ErrProtocol, "%s %s: methods are called with POST", r.Method, r.URL.Path))
		return
	}
	if slices.Contains(dataMethods, name) {
		s.serveData(w, r, name)
		return
	}
	h, ok := methods[name]
	if !ok {
		s.reply(w, nil, wrapf(ErrProtocol, "%s: %v (this data plane has API version %d, version %s)", name, errUnknownMethod, APIVersion, s.version))
		return
	}
	var req request
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	switch {
	case err != nil:
		s.reply(w, nil, fmt.Errorf("dataplane: %s: read the request: %w", name, err))
		return
	case len(body) > maxRequestBytes:
		s.reply(w, nil, wrapf(ErrInvalid, "%s: request larger than %d bytes", name, maxRequestBytes))
		return
	case len(body) > 0:
		if err := json.Unmarshal(body, &req); err != nil {
			s.reply(w, nil, wrapf(ErrProtocol, "%s: decode the request: %v", name, err))
			return
		}
	}
	start := time.Now()
	res, err := h(r.Context(), s.store, req)
	s.log.Debug("data plane call", "method", name, "took", time.Since(start), "err", err)
	s.reply(w, res, err)
}

// serveData answers a call of ReadVolume or WriteVolume (wire.go).
func (s *Server) serveData(w http.ResponseWriter, r *http.Request, name string) {
	q := r.URL.Query()
	arg := func(key string) (int64, error) {
		v, err := strconv.ParseInt(q.Get(key), 10, 64)
		if err != nil || v < 0 {
			return 0, wrapf(ErrInvalid, "%s: %s=%q: want a non-negative integer", name, key, q.Get(key))
		}
		return v, nil
	}
	vol, err := arg("volume")
	var off int64
	if err == nil {
		off, err = arg("offset")
	}
	if err != nil {
		s.reply(w, nil, err)
		return
	}
	start := time.Now()
	defer func() { s.log.Debug("data plane call", "method", name, "took", time.Since(start), "err", err) }()
	if name == "ReadVolume" {
		var size int64
		if size, err = arg("size"); err != nil {
			s.reply(w, nil, err)
			return
		}
		if size > MaxDataBytes {
			err = wrapf(ErrInvalid, "%s: size=%d: want at most %d", name, size, MaxDataBytes)
			s.reply(w, nil, err)
			return
		}
		buf := dataBuffer(int(size))
		defer dataBuffers.Put(buf)
		b := (*buf)[:size]
		if err = s.store.ReadVolume(r.Context(), blockstore.VolumeID(vol), off, b); err != nil {
			s.reply(w, nil, err)
			return
		}
		w.Header().Set("Content-Type", dataContentType)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
		return
	}
	if r.ContentLength < 0 || r.ContentLength > MaxDataBytes {
		err = wrapf(ErrInvalid, "%s: a body of %d bytes: want a length, at most %d", name, r.ContentLength, MaxDataBytes)
		s.reply(w, nil, err)
		return
	}
	buf := dataBuffer(int(r.ContentLength))
	defer dataBuffers.Put(buf)
	b := (*buf)[:r.ContentLength]
	if _, err = io.ReadFull(r.Body, b); err != nil {
		err = fmt.Errorf("dataplane: %s: read the data: %w", name, err)
		s.reply(w, nil, err)
		return
	}
	err = s.store.WriteVolume(r.Context(), blockstore.VolumeID(vol), off, b)
	s.reply(w, struct{}{}, err)
}

// dataBuffers keeps the buffers of ReadVolume and WriteVolume calls for the next ones: a
// pull writes hundreds of chunks of the same size, and a new buffer each time is zeroed and
// collected for nothing.
var dataBuffers sync.Pool

// dataBuffer returns a buffer of dataBuffers of at least n bytes (Put it back).
func dataBuffer(n int) *[]byte {
	if p, ok := dataBuffers.Get().(*[]byte); ok && cap(*p) >= n {
		return p
	}
	b := make([]byte, n)
	return &b
}

// dataContentType is the content type of raw volume data on the wire.
const dataContentType = "application/octet-stream"

// reply writes an answer: the result, or the error with the HTTP status of its first code.
func (s *Server) reply(w http.ResponseWriter, res any, err error) {
	w.Header().Set("Content-Type", "application/json")
	var body []byte
	var merr error
	if err != nil {
		we := encodeError(err)
		w.WriteHeader(errorStatus(we))
		body, merr = json.Marshal(answer[any]{Error: we})
	} else {
		body, merr = json.Marshal(answer[any]{Result: res})
	}
	if merr != nil { // unreachable: the wire types marshal
		s.log.Error("encode an answer", "err", merr)
		return
	}
	_, _ = w.Write(body)
}

// errorStatus is the HTTP status of an error answer: informative only (the codes carry the
// meaning).
func errorStatus(w *wireError) int {
	if len(w.Codes) == 0 {
		return http.StatusInternalServerError
	}
	switch w.Codes[0] {
	case "not_found", "not_exported":
		return http.StatusNotFound
	case "exists", "export_exists", "export_busy", "export_leftovers":
		return http.StatusConflict
	case "invalid_argument", "out_of_range", "invalid", "export_invalid", "protocol":
		return http.StatusBadRequest
	case "no_space", "over_provisioned":
		return http.StatusInsufficientStorage
	case "closed":
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
