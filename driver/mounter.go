package driver

import (
	"sync"

	"k8s.io/mount-utils"
)

// serialMounter is a mount.Interface whose mount calls run one at a time. mount-utils' Mounter
// records on every mount call whether systemd is in use (Mounter.hasSystemd writes a field
// without a lock), so mounts of different volumes in parallel race on it. The mount system call
// itself takes milliseconds; what is slow around it (export, mkfs, fsck) stays parallel.
type serialMounter struct {
	mount.Interface
	mu sync.Mutex // serializes the Mount* methods
}

func newMounter() *serialMounter { return &serialMounter{Interface: mount.New("")} }

func (m *serialMounter) Mount(source, target, fstype string, options []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Interface.Mount(source, target, fstype, options)
}

func (m *serialMounter) MountSensitive(source, target, fstype string, options, sensitive []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Interface.MountSensitive(source, target, fstype, options, sensitive)
}

func (m *serialMounter) MountSensitiveWithoutSystemd(source, target, fstype string, options, sensitive []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Interface.MountSensitiveWithoutSystemd(source, target, fstype, options, sensitive)
}

func (m *serialMounter) MountSensitiveWithoutSystemdWithMountFlags(source, target, fstype string, options, sensitive, flags []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Interface.MountSensitiveWithoutSystemdWithMountFlags(source, target, fstype, options, sensitive, flags)
}
