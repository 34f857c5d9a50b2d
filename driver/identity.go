package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dataimage/dataimage/dataplane"
)

// identityServer is the CSI Identity service.
type identityServer struct {
	csi.UnimplementedIdentityServer

	cfg   *Config
	store dataplane.Store
}

// pluginCapabilities is what the plugin offers: the controller service; topology for volumes
// and snapshots (both live in one node's pool); online expansion, node-only: NodeExpandVolume
// grows a staged or published volume in the pool and then its file system (the controller
// service does not offer EXPAND_VOLUME).
var pluginCapabilities = []*csi.PluginCapability{
	service(csi.PluginCapability_Service_CONTROLLER_SERVICE),
	service(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
	service(csi.PluginCapability_Service_SNAPSHOT_ACCESSIBILITY_CONSTRAINTS),
	{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
		Type: csi.PluginCapability_VolumeExpansion_ONLINE,
	}}},
}

func service(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
	return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
}

func (s *identityServer) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.cfg.DriverName, VendorVersion: s.cfg.Version}, nil
}

func (s *identityServer) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: pluginCapabilities}, nil
}

// Probe reports ready while the pool works. A pool that failed (an earlier write or sync
// failed; it refuses changes until reopened), was closed, or whose data plane does not answer
// is FAILED_PRECONDITION, not "not ready": the spec's ProbeResponse keeps ready=false for a
// plugin still initializing and wants an error for one that "is in an unhealthy state and MAY
// need restarting" — a restart of the data plane reopens the pool, and recovery restores its
// last durable state. The server only starts once the data plane answered, so there is no
// initializing state.
//
// The answer comes from the pool's state (Pool.Health: no I/O, no lock, one call to the data
// plane), so Probe — and the livenessprobe sidecar's /healthz that calls it — answers at once
// also while a flush, a checkpoint or a Check holds the pool. It does not test the device: a
// pool whose device stopped working shows as failed once a write or sync of its own has failed.
func (s *identityServer) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if err := s.store.Health(ctx); err != nil {
		return nil, unhealthyError(err)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}
