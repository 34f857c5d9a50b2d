package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Files Start writes into the runtime directory.
const (
	hbaFileName   = "pg_hba.conf"
	identFileName = "pg_ident.conf"
	pidFileName   = "postgres.pid"
	logFileName   = "server.log"
)

// maxSocketPath is the longest Unix socket path Linux takes (sun_path less the NUL).
const maxSocketPath = 107

// Timing of Start and Stop.
const (
	pollInterval   = 50 * time.Millisecond
	followInterval = 100 * time.Millisecond
	// quitGrace is how long Stop waits after SIGQUIT (immediate shutdown) before SIGKILL.
	quitGrace = 5 * time.Second
)

// logTailLines is how many lines of the server's log errors carry.
const logTailLines = 30

// Start starts postgres on the instance under root and waits until it accepts connections,
// which after RestorePhysical means until recovery is over. The server runs as the server's
// user, with the settings below on its command line (they win over postgresql.conf,
// its includes and postgresql.auto.conf), plus opts.Settings (which may not change these):
//
//   - listen_addresses: opts.ListenAddress ("*" when empty) if opts.Port > 0, else none;
//   - port: opts.Port, or 5432 for a server on its Unix socket only (the socket's name
//     carries the port);
//   - unix_socket_directories, hba_file, ident_file, external_pid_file: in opts.RuntimeDir,
//     which Start gives to the server's user with mode 0700 (the socket trusts whoever can
//     reach it); the access rules are generated there, and admit nobody over TCP until
//     SetPassword (see hbaRules);
//   - logging_collector=off, log_destination=stderr: the log goes to
//     opts.RuntimeDir/server.log (appended) and, line by line, to opts.Output;
//   - the isolation settings (isolationSettings): no WAL archived, restored or streamed, no
//     subscription applied, no commit waiting for a synchronous standby;
//   - with opts.Volatile, volatileSettings: nothing is flushed to disk (fsync=off, which also
//     skips the fsync of every file of the data directory that crash recovery starts with, a
//     second per GiB restored through a volume) and commits do not wait for the WAL
//     (synchronous_commit=off).
//
// Before the server starts, Start removes standby.signal, recovery.signal and recovery.conf
// from the data directory: the server comes up as a primary, recovering from its own pg_wal only.
// Once it accepts connections, subscriptions that are enabled or own a slot on their publisher
// are disabled and detached from it (slot_name = NONE), as PrepareImage does. Start is the same
// for builds and clones: no server the adapter runs archives, replicates or connects anywhere.
//
// If the server exits before it accepts connections, or ctx ends first (the server is then
// killed), the error is a *engine.ServerError with the tail of the log.
//
// An instance without a role called AdminUser (a base backup of a cluster whose bootstrap
// superuser has another name, like the official container image's with POSTGRES_USER set) gets
// one: Start stops the server, creates the role (SUPERUSER LOGIN) in single-user mode, says so
// in the log, and starts the server again.
func (e *pgEngine) Start(ctx context.Context, root string, opts engine.StartOptions) (engine.Instance, error) {
	for attempt := 1; ; attempt++ {
		inst, err := e.start(ctx, root, opts, nil)
		switch {
		case err == nil:
			return inst, nil
		case !errors.Is(err, errNoAdminRole):
			return nil, err
		case attempt > 1:
			inst.kill()
			<-inst.followDone
			return nil, &engine.ServerError{Op: "start", Err: fmt.Errorf("the instance still has no role %q after creating it", AdminUser), LogTail: inst.LogTail(logTailLines)}
		}
		if err := e.createAdminRole(ctx, inst); err != nil {
			return nil, err
		}
	}
}

// lockFileName is the lock file a postmaster keeps in its data directory, naming its process.
const lockFileName = "postmaster.pid"

// PrepareClone removes the lock file (postmaster.pid) of the data directory under root: in a
// copy of a running server's data it names that server, which may well still run (another
// clone's), and postgres refuses to start on a data directory whose lock names a live process.
// The caller guarantees that nothing runs on root (see engine.Engine), so the lock is stale.
func (e *pgEngine) PrepareClone(root string) error {
	p := filepath.Join(engine.DataDir(root), lockFileName)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("postgres: remove the stale lock file: %w", err)
	}
	return nil
}

// errNoAdminRole is start's error for an instance that has no role AdminUser; the server is
// left running.
var errNoAdminRole = errors.New("no administrative role")

// createAdminRole stops inst, which lacks AdminUser, and creates the role in single-user mode.
func (e *pgEngine) createAdminRole(ctx context.Context, inst *instance) error {
	note := fmt.Sprintf("dataimage: the instance has no role %q: stopping the server to create it (SUPERUSER LOGIN) in single-user mode\n", AdminUser)
	if f, err := os.OpenFile(inst.logPath, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		_, _ = f.WriteString(note)
		f.Close()
	}
	if err := inst.Stop(ctx); err != nil {
		return err
	}
	cmd := inst.user.Command(ctx, "", e.tool("postgres"), []string{"--single", "-D", inst.dataDir, "-c", "exit_on_error=on", "-c", "listen_addresses=", "template1"})
	cmd.Stdin = strings.NewReader("CREATE ROLE " + quoteIdent(AdminUser) + " SUPERUSER LOGIN\n")
	if _, err := engine.Run(cmd); err != nil {
		return fmt.Errorf("postgres: start: create role %s in single-user mode: %w", AdminUser, err)
	}
	return nil
}

// start is Start but for the missing role: then it returns the running instance and
// errNoAdminRole. With recovery (only recoverTo gives it), the server runs an archive recovery:
// recovery.signal is written once the recovery files are removed, and the recovery settings
// replace the isolation settings of the same names.
func (e *pgEngine) start(ctx context.Context, root string, opts engine.StartOptions, recovery map[string]string) (*instance, error) {
	u, err := e.User(opts.RunAs)
	if err != nil {
		return nil, err
	}
	dataDir := engine.DataDir(root)
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
		return nil, fmt.Errorf("postgres: start: no PostgreSQL data directory at %s: %w", dataDir, err)
	}
	rd := opts.RuntimeDir
	if rd == "" || !filepath.IsAbs(rd) {
		return nil, fmt.Errorf("postgres: start: the runtime directory must be an absolute path, got %q", rd)
	}
	port := opts.Port
	if port <= 0 {
		port = socketOnlyPort
	}
	if sock := filepath.Join(rd, ".s.PGSQL."+strconv.Itoa(port)); len(sock) > maxSocketPath {
		return nil, fmt.Errorf("postgres: start: socket path %s is longer than %d bytes: use a shorter runtime directory", sock, maxSocketPath)
	}
	settings, err := serverSettings(rd, port, majorNumber(e.version), opts)
	if err != nil {
		return nil, err
	}
	if recovery != nil {
		// PostgreSQL refuses a second recovery_target_* setting even when empty.
		for _, name := range []string{"recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid"} {
			delete(settings, name)
		}
		maps.Copy(settings, recovery)
	}
	if err := prepareRuntimeDir(u, rd); err != nil {
		return nil, fmt.Errorf("postgres: start: runtime directory %s: %w", rd, err)
	}

	logPath := filepath.Join(rd, logFileName)
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("postgres: start: open the server log: %w", err)
	}
	defer logFile.Close() // the server has its own descriptor once started
	st, err := logFile.Stat()
	if err != nil {
		return nil, fmt.Errorf("postgres: start: server log: %w", err)
	}
	logStart := st.Size()
	removed, err := removeRecoveryFiles(dataDir)
	if len(removed) > 0 {
		fmt.Fprintf(logFile, "dataimage: removed %s from the data directory: the server starts as a primary that follows nothing\n", strings.Join(removed, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: start: %w", err)
	}
	if recovery != nil {
		if err := u.WriteFile(filepath.Join(dataDir, "recovery.signal"), nil, 0o600); err != nil {
			return nil, fmt.Errorf("postgres: start: %w", err)
		}
	}

	args := []string{"-D", dataDir}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	// Not the start's context: the server outlives it, until Stop.
	cmd := u.Command(context.Background(), dataDir, e.tool("postgres"), args)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("postgres: start %s: %w", e.tool("postgres"), err)
	}
	inst := &instance{
		eng:        e,
		user:       u,
		dataDir:    dataDir,
		runtimeDir: rd,
		logPath:    logPath,
		port:       port,
		proc:       cmd.Process,
		done:       make(chan struct{}),
		followDone: make(chan struct{}),
		flushReq:   make(chan chan struct{}),
	}
	inst.mu.conn = engine.ConnInfo{
		Engine:   imagebuilder.EnginePostgres,
		Socket:   rd,
		User:     AdminUser,
		Database: defaultDatabase,
	}
	if opts.Port > 0 {
		inst.mu.conn.Host, inst.mu.conn.Port = connectHost(opts.ListenAddress), opts.Port
	}
	go func() {
		inst.waitErr = cmd.Wait()
		close(inst.done)
	}()
	if opts.Output != nil {
		go inst.follow(logStart, opts.Output)
	} else {
		close(inst.followDone)
	}

	if err := inst.waitReady(ctx); err != nil {
		if errors.Is(err, errNoAdminRole) {
			return inst, err
		}
		inst.kill()
		<-inst.followDone
		return nil, err
	}
	inst.flushLog()
	return inst, nil
}

// Adopt returns the postmaster an earlier process started on the instance under root with
// opts (engine.Engine.Adopt): the one postmaster.pid names, when it says "ready" and the
// process runs postgres on this data directory (a pid that was reused is not it).
func (e *pgEngine) Adopt(ctx context.Context, root string, opts engine.StartOptions) (engine.Instance, error) {
	u, err := e.User(opts.RunAs)
	if err != nil {
		return nil, err
	}
	dataDir := engine.DataDir(root)
	rd := opts.RuntimeDir
	if rd == "" || !filepath.IsAbs(rd) {
		return nil, fmt.Errorf("postgres: adopt: the runtime directory must be an absolute path, got %q", rd)
	}
	port := opts.Port
	if port <= 0 {
		port = socketOnlyPort
	}
	pidFile := filepath.Join(dataDir, lockFileName)
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("postgres: adopt %s: %w: %w", dataDir, engine.ErrNotRunning, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil || !postmasterReady(pidFile, pid) {
		return nil, fmt.Errorf("postgres: adopt %s: %w: %s names no ready postmaster", dataDir, engine.ErrNotRunning, pidFile)
	}
	if args := engine.CommandLine(pid); !slices.Contains(args, dataDir) {
		return nil, fmt.Errorf("postgres: adopt %s: %w: process %d (%q) is not its postmaster", dataDir, engine.ErrNotRunning, pid, args)
	}
	proc, exited, err := engine.WatchPID(pid)
	if err != nil {
		return nil, fmt.Errorf("postgres: adopt %s: %w", dataDir, err)
	}
	inst := &instance{
		eng:        e,
		user:       u,
		dataDir:    dataDir,
		runtimeDir: rd,
		logPath:    filepath.Join(rd, logFileName),
		port:       port,
		proc:       proc,
		done:       make(chan struct{}),
		followDone: make(chan struct{}),
		flushReq:   make(chan chan struct{}),
	}
	close(inst.followDone)
	inst.mu.conn = engine.ConnInfo{Engine: imagebuilder.EnginePostgres, Socket: rd, User: AdminUser, Database: defaultDatabase}
	if opts.Port > 0 {
		inst.mu.conn.Host, inst.mu.conn.Port = connectHost(opts.ListenAddress), opts.Port
	}
	go func() {
		<-exited
		close(inst.done)
	}()
	if _, err := inst.Query(ctx, "", "SELECT 1"); err != nil {
		return nil, &engine.ServerError{Op: "adopt", Err: fmt.Errorf("postgres (pid %d) runs but does not answer: %w", pid, err), LogTail: inst.LogTail(logTailLines)}
	}
	return inst, nil
}

// volatileSettings are the settings of a server started with StartOptions.Volatile.
var volatileSettings = map[string]string{"fsync": "off", "synchronous_commit": "off"}

// serverSettings returns the -c settings of a server of major version major: Start's own
// (isolationSettings among them) and the caller's.
func serverSettings(rd string, port, major int, opts engine.StartOptions) (map[string]string, error) {
	listen := ""
	if opts.Port > 0 {
		listen = opts.ListenAddress
		if listen == "" {
			listen = "*"
		}
	}
	s := isolationSettings(major)
	if opts.Volatile {
		maps.Copy(s, volatileSettings)
	}
	maps.Copy(s, map[string]string{
		"listen_addresses":        listen,
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": rd,
		"hba_file":                filepath.Join(rd, hbaFileName),
		"ident_file":              filepath.Join(rd, identFileName),
		"external_pid_file":       filepath.Join(rd, pidFileName),
		"logging_collector":       "off",
		"log_destination":         "stderr",
	})
	for k, v := range opts.Settings {
		name := strings.ToLower(strings.TrimSpace(k))
		if _, ok := s[name]; ok {
			return nil, fmt.Errorf("postgres: start: setting %s is Start's own (see StartOptions)", k)
		}
		if name == "" || strings.ContainsAny(name, "= \t\n") {
			return nil, fmt.Errorf("postgres: start: bad setting name %q", k)
		}
		s[name] = v
	}
	return s, nil
}

// connectHost is the address clients use to reach a server listening on listen.
func connectHost(listen string) string {
	first, _, _ := strings.Cut(listen, ",")
	switch first = strings.TrimSpace(first); first {
	case "", "*", "0.0.0.0":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return first
}

// prepareRuntimeDir gives the runtime directory to u with mode 0700 and writes the access rules.
func prepareRuntimeDir(u *engine.User, rd string) error {
	st, err := os.Stat(rd)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("not a directory")
	}
	if err := os.Chmod(rd, 0o700); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(rd, u.UID, u.GID); err != nil {
			return err
		}
	}
	if err := writeHBA(u, rd, false); err != nil {
		return err
	}
	return u.WriteFile(filepath.Join(rd, identFileName), []byte("# Generated by dataimage: no user name maps.\n"), 0o600)
}

// instance is a running postgres.
type instance struct {
	eng        *pgEngine
	user       *engine.User
	dataDir    string
	runtimeDir string
	logPath    string
	port       int // the port in the socket's name, also without a TCP listener
	// proc is the postmaster: started by this process (Start), or by an earlier one (Adopt).
	proc *os.Process

	// done is closed when the process has exited; waitErr is its exit status, written before
	// (nil for an adopted server, whose status is not known).
	done    chan struct{}
	waitErr error
	// followDone is closed when the log follower has written every line to the output (at
	// once when there is no output).
	followDone chan struct{}
	// flushReq asks the log follower to copy what the log holds now, and closes the channel
	// sent once it has.
	flushReq chan chan struct{}

	mu struct {
		sync.Mutex
		conn     engine.ConnInfo // Password changes with SetPassword
		stopping bool            // Stop was called
	}
}

// waitReady waits until the postmaster says it is ready in postmaster.pid (as pg_ctl -w does)
// and a client gets an answer over the socket, then detaches the subscriptions that could
// connect to their publishers.
func (i *instance) waitReady(ctx context.Context) error {
	pidFile := filepath.Join(i.dataDir, lockFileName)
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-i.done:
			return &engine.ServerError{Op: "start", Err: fmt.Errorf("postgres exited before accepting connections: %w", exitError(i.waitErr)), LogTail: i.LogTail(logTailLines)}
		case <-ctx.Done():
			return &engine.ServerError{Op: "start", Err: fmt.Errorf("postgres was not accepting connections when the start's deadline passed (killed): %w", ctx.Err()), LogTail: i.LogTail(logTailLines)}
		case <-t.C:
		}
		if postmasterReady(pidFile, i.proc.Pid) {
			break
		}
	}
	out, err := i.Query(ctx, "", i.readySQL())
	if err != nil {
		if strings.Contains(err.Error(), fmt.Sprintf("role %q does not exist", AdminUser)) {
			return errNoAdminRole
		}
		return &engine.ServerError{Op: "start", Err: fmt.Errorf("postgres is up but does not answer: %w", err), LogTail: i.LogTail(logTailLines)}
	}
	subs, err := parseSubscriptions(out)
	if err != nil {
		return err
	}
	if len(subs) > 0 {
		return i.detachSubscriptions(ctx, subs)
	}
	return nil
}

// exitError describes a process's exit status; nil (exit status 0) reads as such.
func exitError(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// postmasterReady reports whether postmaster.pid names pid and says "ready" (line 8,
// LOCK_FILE_LINE_PM_STATUS).
func postmasterReady(pidFile string, pid int) bool {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 8 || strings.TrimSpace(lines[0]) != strconv.Itoa(pid) {
		return false
	}
	return strings.TrimSpace(lines[7]) == "ready"
}

// follow copies the lines appended to the log after offset to out, one Write per line, every
// followInterval and when flushLog asks, until the server has exited and the log is drained.
func (i *instance) follow(offset int64, out io.Writer) {
	defer close(i.followDone)
	f, err := os.Open(i.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return
	}
	var pending []byte
	buf := make([]byte, 32<<10)
	drain := func() {
		for {
			n, err := f.Read(buf)
			pending = append(pending, buf[:n]...)
			for {
				j := bytes.IndexByte(pending, '\n')
				if j < 0 {
					break
				}
				_, _ = out.Write(pending[:j+1])
				pending = pending[j+1:]
			}
			if n == 0 || err != nil {
				return
			}
		}
	}
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		select {
		case <-i.done:
			drain()
			if len(pending) > 0 {
				_, _ = out.Write(append(pending, '\n'))
			}
			return
		case ack := <-i.flushReq:
			drain()
			close(ack)
		case <-t.C:
			drain()
		}
	}
}

// flushLog returns once the log's lines written so far have reached StartOptions.Output, so
// that each operation's log lines reach it before the operation returns.
func (i *instance) flushLog() {
	ack := make(chan struct{})
	select {
	case i.flushReq <- ack:
		<-ack
	case <-i.followDone:
	}
}

func (i *instance) Conn() engine.ConnInfo {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.mu.conn
}

func (i *instance) Done() <-chan struct{} { return i.done }

func (i *instance) PID() int { return i.proc.Pid }

// LogTail returns the last n lines of RuntimeDir/server.log, which holds every run of the
// server with that runtime directory.
func (i *instance) LogTail(n int) string { return engine.TailFile(i.logPath, n) }

// Stop shuts the server down with SIGINT (fast shutdown: sessions are cut, a shutdown
// checkpoint is written) and waits for it to exit. When ctx ends first, it sends SIGQUIT
// (immediate shutdown) and, after 5 seconds, SIGKILL to the server's process group, and
// returns a *engine.ServerError saying so (the next start recovers). A server that had already
// exited is an error unless it was stopped cleanly. Stop returns once every log line has reached
// StartOptions.Output.
func (i *instance) Stop(ctx context.Context) error {
	i.mu.Lock()
	already := i.mu.stopping
	i.mu.stopping = true
	i.mu.Unlock()
	defer func() { <-i.followDone }()

	select {
	case <-i.done:
		if already && i.waitErr == nil {
			return nil
		}
		return &engine.ServerError{Op: "stop", Err: fmt.Errorf("postgres had exited: %w", exitError(i.waitErr)), LogTail: i.LogTail(logTailLines)}
	default:
	}
	if err := i.proc.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("postgres: stop: signal %d: %w", i.PID(), err)
	}
	select {
	case <-i.done:
		if i.waitErr != nil {
			return &engine.ServerError{Op: "stop", Err: fmt.Errorf("postgres exited with %w", i.waitErr), LogTail: i.LogTail(logTailLines)}
		}
		return nil
	case <-ctx.Done():
	}
	how := i.kill()
	return &engine.ServerError{Op: "stop", Err: fmt.Errorf("postgres did not shut down before the deadline (%w): %s; the next start recovers", ctx.Err(), how), LogTail: i.LogTail(logTailLines)}
}

// kill ends the server: SIGQUIT (immediate shutdown), then SIGKILL to its process group if it
// is still there after quitGrace. It returns once the process has exited, saying how.
func (i *instance) kill() string {
	pid := i.PID()
	_ = i.proc.Signal(syscall.SIGQUIT)
	select {
	case <-i.done:
		return "stopped with SIGQUIT (immediate shutdown)"
	case <-time.After(quitGrace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL) // the server's own process group (engine.User.Command)
	<-i.done
	return "killed with SIGKILL"
}
