package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/builder/wire"
)

// The HTTP API: JSON over the home's Unix socket.
//
//	GET    /v1/health                   {"pid": N}
//	POST   /v1/images                   BuildRequest -> a stream of buildLine (NDJSON)
//	GET    /v1/images                   -> []Image
//	GET    /v1/images/{name}            -> Image
//	DELETE /v1/images/{name}            -> 204
//	POST   /v1/images/from-clone        ImageFromCloneRequest -> Image
//	POST   /v1/clones                   CloneRequest -> Clone
//	GET    /v1/clones                   -> []Clone
//	GET    /v1/clones/{name}            -> Clone
//	DELETE /v1/clones/{name}            -> 204
//	POST   /v1/clones/{name}/stop       -> Clone
//	POST   /v1/clones/{name}/start      -> Clone
//	POST   /v1/clones/{name}/reset      resetRequest -> Clone
//	POST   /v1/clones/{name}/save       saveRequest -> Revision
//	GET    /v1/pool                     -> PoolStatus
//	POST   /v1/pool/check               checkRequest -> CheckReport
//	POST   /v1/images/{name}/push       PushRequest -> a stream of buildLine (NDJSON)
//	POST   /v1/remote/pull              PullRequest -> a stream of buildLine (NDJSON)
//	POST   /v1/remote/list              Remote -> []RemoteImage
//	POST   /v1/remote/delete            remoteDeleteRequest -> RemoteDeletion
//
// Failures are a wireError ({"kind", "message"}) with the HTTP status of the kind (errors.go).
// A build, a push and a pull answer 200 once they have started and stream one buildLine per
// line: progress events, then the image or the error. Registry requests are POSTs: they carry
// the client's credentials, which never go in a URL.

type resetRequest struct {
	To string `json:"to,omitempty"`
}

type saveRequest struct {
	Revision string `json:"revision,omitempty"`
}

type checkRequest struct {
	Repair bool `json:"repair,omitempty"`
}

type remoteDeleteRequest struct {
	Ref    string `json:"ref"`
	Remote Remote `json:"remote,omitzero"`
}

type healthResponse struct {
	PID int `json:"pid"`
}

// buildLine is one line of a build's stream: exactly one field is set. Event is a build event
// in the builder's wire format (wire.Event), which the client decodes with wire.DecodeEvent:
// a daemon and a client of different versions read each other's events by its rules.
type buildLine struct {
	Event json.RawMessage `json:"event,omitempty"`
	Image *Image          `json:"image,omitempty"`
	Error *wireError      `json:"error,omitempty"`
}

// maxRequestBody bounds request bodies (a definition is at most 1 MiB, base64 in JSON).
const maxRequestBody = 4 << 20

// Serve serves the API on the home's socket, and runs the reaper, until ctx ends. It does not
// close the daemon: call Close after it returns.
func (d *Daemon) Serve(ctx context.Context) error {
	sock := d.cfg.socketPath()
	if len(sock) > 107 {
		return fmt.Errorf("local: socket path %s is longer than a Unix socket allows (107 bytes); choose a shorter home", sock)
	}
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("local: another daemon answers at %s", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("local: remove the stale socket: %w", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("local: listen: %w", err)
	}
	// Connection strings carry passwords: only the daemon's user (root) may ask.
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("local: socket permissions: %w", err)
	}
	srv := &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { d.runReaper(ctx) })
	wg.Go(func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close() // requests still running (a build): their contexts end
		}
	})
	d.log.Info("serving", "socket", sock)
	err = srv.Serve(l)
	cancel()
	wg.Wait()
	os.Remove(sock)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("local: serve %s: %w", sock, err)
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, healthResponse{PID: os.Getpid()})
	})
	mux.HandleFunc("POST /v1/images", streamHandler(d.BuildImage, nil))
	mux.HandleFunc("POST /v1/images/{name}/push", streamHandler(d.PushImage, func(req *PushRequest, r *http.Request) { req.Image = r.PathValue("name") }))
	mux.HandleFunc("POST /v1/remote/pull", streamHandler(d.PullImage, nil))
	mux.HandleFunc("POST /v1/remote/list", func(w http.ResponseWriter, r *http.Request) {
		var req Remote
		if decode(w, r, &req) {
			reply(d.RemoteImages(r.Context(), req))(w)
		}
	})
	mux.HandleFunc("POST /v1/remote/delete", func(w http.ResponseWriter, r *http.Request) {
		var req remoteDeleteRequest
		if decode(w, r, &req) {
			reply(d.DeleteRemoteImage(r.Context(), req.Ref, req.Remote))(w)
		}
	})
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		reply(d.Images(r.Context()))(w)
	})
	mux.HandleFunc("GET /v1/images/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(d.Image(r.Context(), r.PathValue("name")))(w)
	})
	mux.HandleFunc("DELETE /v1/images/{name}", func(w http.ResponseWriter, r *http.Request) {
		replyEmpty(w, d.DeleteImage(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/images/from-clone", func(w http.ResponseWriter, r *http.Request) {
		var req ImageFromCloneRequest
		if decode(w, r, &req) {
			reply(d.ImageFromClone(r.Context(), req))(w)
		}
	})
	mux.HandleFunc("POST /v1/clones", func(w http.ResponseWriter, r *http.Request) {
		var req CloneRequest
		if decode(w, r, &req) {
			reply(d.CreateClone(r.Context(), req))(w)
		}
	})
	mux.HandleFunc("GET /v1/clones", func(w http.ResponseWriter, r *http.Request) {
		reply(d.Clones(r.Context()))(w)
	})
	mux.HandleFunc("GET /v1/clones/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(d.Clone(r.Context(), r.PathValue("name")))(w)
	})
	mux.HandleFunc("DELETE /v1/clones/{name}", func(w http.ResponseWriter, r *http.Request) {
		replyEmpty(w, d.DeleteClone(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/clones/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		reply(d.StopClone(r.Context(), r.PathValue("name")))(w)
	})
	mux.HandleFunc("POST /v1/clones/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		reply(d.StartClone(r.Context(), r.PathValue("name")))(w)
	})
	mux.HandleFunc("POST /v1/clones/{name}/reset", func(w http.ResponseWriter, r *http.Request) {
		var req resetRequest
		if decode(w, r, &req) {
			reply(d.ResetClone(r.Context(), r.PathValue("name"), req.To))(w)
		}
	})
	mux.HandleFunc("POST /v1/clones/{name}/save", func(w http.ResponseWriter, r *http.Request) {
		var req saveRequest
		if decode(w, r, &req) {
			reply(d.SaveClone(r.Context(), r.PathValue("name"), req.Revision))(w)
		}
	})
	mux.HandleFunc("GET /v1/pool", func(w http.ResponseWriter, r *http.Request) {
		reply(d.PoolStatus(r.Context()))(w)
	})
	mux.HandleFunc("POST /v1/pool/check", func(w http.ResponseWriter, r *http.Request) {
		var req checkRequest
		if decode(w, r, &req) {
			reply(d.CheckPool(r.Context(), req.Repair))(w)
		}
	})
	return d.logRequests(mux)
}

// streamHandler serves a request whose answer is a stream (streamResult) of run; path, when
// set, takes what the request's path says into the decoded request.
func streamHandler[T any](run func(context.Context, T, func(wire.Event)) (*Image, error), path func(*T, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req T
		if !decode(w, r, &req) {
			return
		}
		if path != nil {
			path(&req, r)
		}
		streamResult(w, func(progress func(wire.Event)) (*Image, error) { return run(r.Context(), req, progress) })
	}
}

// streamResult runs a build, a push or a pull and streams its progress. The response's status is
// the error's when it fails before its first event (an invalid definition, an unknown image),
// else 200 with the stream.
func streamResult(w http.ResponseWriter, run func(progress func(wire.Event)) (*Image, error)) {
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	started, done := false, false
	send := func(line buildLine) {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if err := enc.Encode(line); err == nil {
			_ = rc.Flush()
		}
	}
	img, err := run(func(ev wire.Event) {
		b, err := json.Marshal(ev)
		if err != nil {
			panic(err) // unreachable: an event holds strings and numbers
		}
		send(buildLine{Event: b})
	})
	mu.Lock()
	first := !started
	mu.Unlock()
	if err != nil && first {
		replyEmpty(w, err)
		return
	}
	if err != nil {
		we, _ := toWire(err)
		send(buildLine{Error: &we})
	} else {
		send(buildLine{Image: img})
	}
	mu.Lock()
	done = true
	mu.Unlock()
}

// decode reads a request's JSON body into v (an empty body leaves v as is); on failure it
// answers ErrInvalid and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody)).Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return true
	}
	replyEmpty(w, errorf(ErrInvalid, "request body: %v", err))
	return false
}

// reply returns the function that answers with v (200) or err.
func reply[T any](v T, err error) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		if err != nil {
			replyEmpty(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// replyEmpty answers 204, or err.
func replyEmpty(w http.ResponseWriter, err error) {
	if err == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	we, status := toWire(err)
	if sw, ok := w.(*statusWriter); ok {
		sw.err = err
	}
	writeJSON(w, status, we)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// statusWriter records a response's status (and error) for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
	err    error
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (Flush for build streams).
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests logs every request: method, path, status, duration, and the error if any.
func (d *Daemon) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", sw.status, "took", time.Since(start)}
		switch {
		case sw.err != nil && sw.status >= 500:
			d.log.Error("request", append(attrs, "err", sw.err)...)
		case sw.err != nil:
			d.log.Info("request", append(attrs, "err", sw.err)...)
		case r.URL.Path == "/v1/health":
			d.log.Debug("request", attrs...)
		default:
			d.log.Info("request", attrs...)
		}
	})
}
