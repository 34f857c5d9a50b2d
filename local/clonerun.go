package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/imagebuilder/engine/registry"
)

// runtimeDir makes a server's runtime directory anew (a previous run's socket and pid file are
// stale). The engine's Start gives it to the server's user.
func runtimeDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("local: clear runtime directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("local: make runtime directory: %w", err)
	}
	return nil
}

// runtime returns the clone's run-time state, making it. REQUIRES d.mu.
func (d *Daemon) runtimeLocked(name string) *cloneRuntime {
	rt := d.mu.clones[name]
	if rt == nil {
		rt = &cloneRuntime{}
		d.mu.clones[name] = rt
	}
	return rt
}

// activate makes a clone serve: it attaches the clone's volume (unless attached) and starts its
// server (unless it runs) with the clone's password, on r.Port when that is free (strictPort:
// or fails) or else on a free port. It returns the running server. On failure the volume stays
// attached and the clone's failure says why. REQUIRES the clone's name lock.
func (d *Daemon) activate(ctx context.Context, r *cloneRecord, strictPort bool) (engine.Instance, error) {
	d.mu.Lock()
	rt := d.runtimeLocked(r.Name)
	dev, inst := rt.dev, rt.inst
	d.mu.Unlock()
	if inst != nil {
		return inst, nil
	}
	fail := func(err error) (engine.Instance, error) {
		d.mu.Lock()
		rt.failure = err.Error()
		d.mu.Unlock()
		return nil, err
	}
	mnt := d.cfg.cloneMount(r.Name)
	if dev == nil {
		vol, err := d.lookupVolume(cloneObject(r.Name), "clone "+r.Name)
		if err != nil {
			return fail(err)
		}
		if dev, err = d.attach(ctx, cloneExportID(r.Name), vol.ID, mnt, false); err != nil {
			return fail(fmt.Errorf("local: clone %s: %w", r.Name, err))
		}
		d.mu.Lock()
		rt.dev = dev
		d.mu.Unlock()
	}
	eng, err := d.lookupEngine(r.Engine, r.Version)
	if err != nil {
		return fail(&kindError{kind: ErrInvalid, err: fmt.Errorf("local: clone %s: image %s was built with %s %s, which this machine cannot run: %w",
			r.Name, r.Image, r.Engine, r.Version, err)})
	}
	port, err := d.pickPort(r.Port, strictPort)
	if err != nil {
		return fail(fmt.Errorf("local: clone %s: %w", r.Name, err))
	}
	// What is left of a server that died (its children) must be gone before another starts.
	if err := killUnder(mnt+"/", nil); err != nil {
		return fail(fmt.Errorf("local: clone %s: %w", r.Name, err))
	}
	// Revisions and images made from clones are snapshots of running servers: what a server
	// keeps in its data to lock it (PostgreSQL's postmaster.pid) names the server of another
	// clone, which may well still run. It is stale: the daemon is the only one to start servers
	// on a clone's mount, one at a time under the clone's lock, and no process works there now
	// (killUnder above; a previous daemon's were killed at start).
	if err := eng.PrepareClone(mnt); err != nil {
		return fail(fmt.Errorf("local: clone %s: %w", r.Name, err))
	}
	run := d.cfg.cloneRun(r.Name)
	if err := runtimeDir(run); err != nil {
		return fail(fmt.Errorf("local: clone %s: %w", r.Name, err))
	}
	inst, err = eng.Start(ctx, mnt, engine.StartOptions{RuntimeDir: run, ListenAddress: d.cfg.ListenAddress, Port: port})
	if err != nil {
		return fail(fmt.Errorf("local: clone %s: start the %s %s server on port %d: %w", r.Name, r.Engine, eng.Version(), port, err))
	}
	if err := inst.SetPassword(ctx, r.Password); err != nil {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		return fail(errors.Join(fmt.Errorf("local: clone %s: set the server's password: %w", r.Name, err), inst.Stop(stopCtx)))
	}
	d.mu.Lock()
	rt.inst, rt.failure = inst, ""
	d.mu.Unlock()
	d.watch(r.Name, rt, inst)
	d.log.Info("clone server started", "clone", r.Name, "port", port, "pid", inst.PID())
	return inst, nil
}

// pickPort returns port when nothing listens on it, or else a free port (unless strict).
func (d *Daemon) pickPort(port int, strict bool) (int, error) {
	if port != 0 {
		l, err := net.Listen("tcp", net.JoinHostPort(d.cfg.ListenAddress, strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port, nil
		}
		if strict {
			return 0, &kindError{kind: ErrInvalid, err: fmt.Errorf("port %d on %s is taken: %w", port, d.cfg.ListenAddress, err)}
		}
	}
	return engine.FreePort(d.cfg.ListenAddress)
}

// watch records the server's death when it was not stopped on purpose (release takes the
// instance out of the run-time state before stopping it).
func (d *Daemon) watch(name string, rt *cloneRuntime, inst engine.Instance) {
	go func() {
		<-inst.Done()
		d.mu.Lock()
		defer d.mu.Unlock()
		if rt.inst != inst {
			return // stopped on purpose
		}
		rt.inst = nil
		rt.failure = "the server exited unexpectedly; its log ends with:\n" + inst.LogTail(20)
		d.log.Warn("clone server exited", "clone", name, "pid", inst.PID(), "logTail", inst.LogTail(5))
	}()
}

// release stops a clone's server (if it runs) and detaches its volume (if attached): the clone
// uses no resources besides its data. REQUIRES the clone's name lock, or Close.
func (d *Daemon) release(ctx context.Context, name string) error {
	d.mu.Lock()
	rt := d.mu.clones[name]
	if rt == nil {
		d.mu.Unlock()
		return nil
	}
	inst := rt.inst
	rt.inst = nil // the watcher then knows the stop is on purpose
	d.mu.Unlock()
	var err error
	if inst != nil {
		if err = inst.Stop(ctx); err != nil {
			err = fmt.Errorf("local: clone %s: stop the server: %w", name, err)
			d.log.Warn("clone server did not stop cleanly", "clone", name, "err", err)
		} else {
			d.log.Info("clone server stopped", "clone", name)
		}
	}
	if derr := d.detach(cloneExportID(name), d.cfg.cloneMount(name)); derr != nil {
		d.mu.Lock()
		rt.failure = derr.Error()
		d.mu.Unlock()
		return errors.Join(err, fmt.Errorf("local: clone %s: %w", name, derr))
	}
	d.mu.Lock()
	delete(d.mu.clones, name)
	d.mu.Unlock()
	if rerr := os.RemoveAll(d.cfg.cloneRun(name)); rerr != nil {
		d.log.Warn("remove a clone's runtime directory", "clone", name, "err", rerr)
	}
	return nil // a server that had to be killed is stopped all the same; Stop said so in the log
}

// startClones starts the servers of the clones that should run (after a restart), a few at a
// time. A clone that fails to start is marked failed, with the reason.
func (d *Daemon) startClones() {
	var todo []cloneRecord
	d.mu.Lock()
	for _, r := range d.mu.cat.Clones {
		if r.Running && !r.Deleting {
			todo = append(todo, *r)
		}
	}
	d.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, r := range todo {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(d.ctx, startTimeout)
			defer cancel()
			inst, err := d.activate(ctx, &r, false)
			if err != nil {
				d.log.Error("clone did not start again", "clone", r.Name, "err", err)
				return
			}
			port := inst.Conn().Port
			if err := d.commit(func(c *catalog) error {
				if cr := c.Clones[r.Name]; cr != nil {
					cr.Port, cr.PID = port, inst.PID()
				}
				return nil
			}); err != nil {
				d.log.Error("record a restarted clone", "clone", r.Name, "err", err)
			}
		})
	}
	wg.Wait()
}

// startTimeout bounds a server's start (with crash recovery after a kill).
const startTimeout = 5 * time.Minute

// connection returns the connection string of a clone's server.
func connection(kind imagebuilder.Engine, user, password, host string, port int, db string) string {
	return registry.URL(engine.ConnInfo{Engine: kind, Host: host, Port: port, User: user, Password: password, Database: db})
}

// connectHost is the host clients reach a server listening on address at: the loopback address
// for an unspecified one (0.0.0.0, ::).
func connectHost(address string) string {
	ip := net.ParseIP(address)
	switch {
	case ip == nil || !ip.IsUnspecified():
		return address
	case ip.To4() != nil:
		return "127.0.0.1"
	}
	return "::1"
}
