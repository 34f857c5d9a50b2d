package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/dataimage/dataimage/dataplane"
)

// gracePeriod bounds how long Serve waits for calls in flight after its context ends before
// it closes their connections.
const gracePeriod = 30 * time.Second

// Server serves the CSI services of one node's pool on a gRPC server. The pool is the data
// plane's (a dataplane.Client of the data plane process, or a dataplane.Local in this process):
// the server holds no pool and no export itself.
type Server struct {
	cfg     Config
	store   dataplane.Store
	grpc    *grpc.Server
	metrics *metrics
	node    *nodeServer // nil until RegisterNode
	checker *poolChecker
	// controller is the Controller service; images its registry side (nil: no registry or
	// no Node service).
	controller *controllerServer
	images     *images
}

// NewServer checks cfg (filling in defaults) and registers the Identity and Controller
// services for the pool of store on a new gRPC server with the logging and the metrics
// interceptors first in the chain. It asks store for the pool's block size (a Client's data
// plane must answer: dataplane.Client.WaitReady). Register the Node service (RegisterNode)
// before calling Serve.
func NewServer(ctx context.Context, cfg Config, store dataplane.Store, opts ...grpc.ServerOption) (*Server, error) {
	cfg, err := cfg.complete()
	if err != nil {
		return nil, err
	}
	if store == nil {
		return nil, errors.New("driver: no data plane")
	}
	st, err := store.Stats(ctx)
	if err != nil {
		return nil, fmt.Errorf("driver: the pool's block size: %w", err)
	}
	s := &Server{cfg: cfg, store: store}
	s.checker = newPoolChecker(&s.cfg, store)
	s.metrics = newMetrics(&s.cfg, store, s.checker)
	opts = append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(logCalls(cfg.Logger), s.metrics.observeCalls())}, opts...)
	s.grpc = grpc.NewServer(opts...)
	csi.RegisterIdentityServer(s.grpc, &identityServer{cfg: &s.cfg, store: store})
	cs := newControllerServer(&s.cfg, store, st.BlockSize)
	cs.checker = s.checker
	s.controller = cs
	csi.RegisterControllerServer(s.grpc, cs)
	return s, nil
}

// Config returns the server's configuration with defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// GRPC returns the gRPC server, to register more services (Node) before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Serve listens on endpoint (Listen) and serves on it (ServeListener) until ctx ends.
func (s *Server) Serve(ctx context.Context, endpoint string) error {
	lis, err := s.Listen(endpoint)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, lis)
}

// Listen listens on endpoint — "unix:///path/csi.sock" or a plain path. A stale socket file at
// the path is removed first (a previous run that died leaves one). Once Listen returns, clients
// can connect: their calls wait for ServeListener.
func (s *Server) Listen(endpoint string) (net.Listener, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("driver: listen on %s: %w", path, err)
	}
	return lis, nil
}

// removeStaleSocket removes a socket file at path; anything else there is left for Listen to
// fail on.
func removeStaleSocket(path string) error {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("driver: remove stale socket %s: %w", path, err)
		}
	}
	return nil
}

// ServeListener serves the CSI services on lis until ctx ends, then stops gracefully: no new
// calls, calls in flight get gracePeriod to finish. It returns nil after a stop caused by ctx.
// The exports' I/O is the data plane's: it goes on whatever this server does.
// Meanwhile it checks the pool every Config.PoolCheckInterval (a read-only Check) and, with a
// registry and the Node service, syncs with the registry every Config.RegistrySync
// (driver/images.go).
func (s *Server) ServeListener(ctx context.Context, lis net.Listener) error {
	s.cfg.Logger.Info("serving CSI", "endpoint", lis.Addr().String(), "driver", s.cfg.DriverName,
		"version", s.cfg.Version, "node", s.cfg.NodeID)

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		s.checker.run(ctx)
	}()
	defer func() { <-checked }()
	if s.images != nil {
		synced := make(chan struct{})
		go func() {
			defer close(synced)
			s.images.run(ctx, s.cfg.RegistrySync)
		}()
		defer func() { <-synced }()
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(gracePeriod):
			s.cfg.Logger.Warn("calls still running after the grace period; closing them", "grace", gracePeriod)
			s.grpc.Stop()
			<-done
		}
	}()
	err := s.grpc.Serve(lis)
	cancel()
	<-stopped
	if parent.Err() != nil {
		return nil
	}
	return fmt.Errorf("driver: serve: %w", err)
}

// socketPath turns a CSI endpoint into a socket path.
func socketPath(endpoint string) (string, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok && strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("driver: endpoint %q: only unix sockets are served", endpoint)
	}
	if path == "" {
		return "", fmt.Errorf("driver: endpoint %q: no socket path", endpoint)
	}
	return path, nil
}
