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
	"github.com/dataimage/dataimage/blockstore"
	"google.golang.org/grpc"
)

// gracePeriod bounds how long Serve waits for calls in flight after its context ends before
// it closes their connections.
const gracePeriod = 30 * time.Second

// Server serves the CSI services of one node's pool on a gRPC server. The caller opens the
// pool before and closes it after the server stops.
type Server struct {
	cfg  Config
	grpc *grpc.Server
}

// NewServer checks cfg (filling in defaults) and registers the Identity and Controller
// services for pool on a new gRPC server with the logging interceptor first in the chain.
// Register the Node service on GRPC() before calling Serve.
func NewServer(cfg Config, pool *blockstore.Pool, opts ...grpc.ServerOption) (*Server, error) {
	cfg, err := cfg.complete()
	if err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, errors.New("driver: no pool")
	}
	s := &Server{cfg: cfg}
	opts = append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(logCalls(cfg.Logger))}, opts...)
	s.grpc = grpc.NewServer(opts...)
	csi.RegisterIdentityServer(s.grpc, &identityServer{cfg: &s.cfg, pool: pool})
	csi.RegisterControllerServer(s.grpc, newControllerServer(&s.cfg, pool))
	return s, nil
}

// Config returns the server's configuration with defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// GRPC returns the gRPC server, to register more services (Node) before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Serve listens on endpoint — "unix:///path/csi.sock" or a plain path — and serves until ctx
// ends, then stops gracefully: no new calls, calls in flight get gracePeriod to finish. A
// stale socket file at the path is removed first (a previous run that died leaves one).
// Serve returns nil after a stop caused by ctx.
func (s *Server) Serve(ctx context.Context, endpoint string) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("driver: remove stale socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("driver: listen: %w", err)
	}
	s.cfg.Logger.Info("serving CSI", "endpoint", path, "driver", s.cfg.DriverName,
		"version", s.cfg.Version, "node", s.cfg.NodeID)

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
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
	err = s.grpc.Serve(lis)
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
