package driver

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// csiVersions are the CSI versions the plugin tells the kubelet it speaks.
var csiVersions = []string{"1.0.0"}

// registrationSocket is the name of the registration socket of a driver in the kubelet's
// plugin registration directory.
func registrationSocket(driverName string) string { return driverName + "-reg.sock" }

// ServeRegistration registers the plugin with the kubelet, as node-driver-registrar would: it
// serves the kubelet's plugin registration API (k8s.io/kubelet/pkg/apis/pluginregistration/v1)
// on dir/registrationSocket(DriverName), where dir is the kubelet's plugins_registry directory
// as this process sees it. The kubelet finds the socket, asks GetInfo (a CSIPlugin of this
// driver at endpoint, the CSI socket's path as the kubelet sees it, speaking CSI 1.0.0), calls
// NodeGetInfo on that endpoint and reports the outcome with NotifyRegistrationStatus.
//
// Call it once the CSI endpoint listens (Server.Listen). A stale socket is removed first. It
// serves until ctx ends (then it removes the socket, so that the kubelet unregisters the
// plugin, and returns nil) or until the kubelet refuses the registration: then it returns an
// error matching ErrRegistrationRefused, and the plugin should exit so that a new pod retries.
func (s *Server) ServeRegistration(ctx context.Context, dir, endpoint string) error {
	if dir == "" || endpoint == "" {
		return fmt.Errorf("driver: registration: both the registration directory (%q) and the kubelet's CSI endpoint (%q) are required", dir, endpoint)
	}
	path := filepath.Join(dir, registrationSocket(s.cfg.DriverName))
	if err := removeStaleSocket(path); err != nil {
		return fmt.Errorf("driver: registration: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("driver: registration: listen on %s: %w", path, err)
	}
	defer func() {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			s.cfg.Logger.Warn("remove the registration socket", "socket", path, "err", err)
		}
	}()
	refused := make(chan error, 1)
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrationServer{s: s, endpoint: endpoint, refused: refused})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	s.cfg.Logger.Info("serving kubelet plugin registration", "socket", path, "endpoint", endpoint, "driver", s.cfg.DriverName)

	// GracefulStop lets the call in flight (the refusal) answer; the calls are instant.
	select {
	case <-ctx.Done():
		srv.GracefulStop()
		<-served
		return nil
	case err := <-refused:
		srv.GracefulStop()
		<-served
		return err
	case err := <-served:
		return fmt.Errorf("driver: registration: serve on %s: %w", path, err)
	}
}

// registrationServer answers the kubelet's plugin watcher.
type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	s        *Server
	endpoint string
	refused  chan<- error // receives the refusal; buffered, one is enough
}

func (r *registrationServer) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	r.s.cfg.Logger.Info("kubelet asked for the plugin's registration info", "endpoint", r.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.s.cfg.DriverName,
		Endpoint:          r.endpoint,
		SupportedVersions: csiVersions,
	}, nil
}

func (r *registrationServer) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.GetPluginRegistered() {
		r.s.cfg.Logger.Info("registered with the kubelet", "driver", r.s.cfg.DriverName, "endpoint", r.endpoint)
		return &registerapi.RegistrationStatusResponse{}, nil
	}
	r.s.cfg.Logger.Error("the kubelet refused the plugin's registration", "driver", r.s.cfg.DriverName, "endpoint", r.endpoint, "err", st.GetError())
	select {
	case r.refused <- fmt.Errorf("%w: %s", ErrRegistrationRefused, st.GetError()):
	default: // a refusal is on its way already
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
