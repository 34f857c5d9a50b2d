// Package driver is Dataimage's CSI driver: the Identity, Controller and Node services over one
// node-local pool, the kubelet's plugin registration (registration.go) and the plugin's
// Prometheus metrics (metrics.go). The pool and its exports are the node's data plane's
// (package dataplane, a process of its own), which the driver reaches through a
// dataplane.Store: the plugin's restarts never touch the volumes' I/O.
//
// Every node runs the controller and the node service for its own pool (like TopoLVM's
// node-deployment mode): a volume or snapshot lives in exactly one node's pool, carries that
// node's topology segment (Config.TopologyKey = Config.NodeID), and its CSI ID names the node
// (see ids.go). The package validates requests, keeps CreateVolume and CreateSnapshot
// idempotent by name (the CSI name is the block store object's unique name), serializes
// operations per name and per ID (internal/keylock, never one lock around every RPC), and maps
// block store, export, mount and file system errors to gRPC codes in one place (errors.go),
// keeping their chain. The node service decides the CSI side of staging and publishing; making a
// volume a device and a file system on the node, and undoing it, is package nodevolume's.
//
// With a registry (Config.Registry, images.go) images are not bound to their node: the plugin
// pushes the snapshots that the cluster's placements name, pulls the image of a snapshot ID its
// pool lacks before cloning it (exportset/poolvol through its attachments), pre-pulls placed
// images and reports what it holds (exportset/cluster).
//
// Server registers the services on a gRPC server and serves them on a unix socket. Volume
// expansion is node-only: NodeExpandVolume grows the volume in the pool, then its file system;
// the controller service does not offer it.
//
// It must not know the on-disk format, image building, engines or the single-machine product: it
// calls the store and package nodevolume, and answers in gRPC codes.
package driver
