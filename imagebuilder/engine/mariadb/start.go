package mariadb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Files of a running server in its runtime directory.
const (
	socketName  = "mysqld.sock"
	pidFileName = "mysqld.pid"
	logFileName = "server.log"
	tmpDirName  = "tmp"
)

// maxSocketPath is the longest Unix socket path Linux takes (sun_path is 108 bytes with the NUL).
const maxSocketPath = 107

// maxAllowedPacket lets dumps with long extended INSERTs through, on the server and the client.
const maxAllowedPacket = "1073741824"

// stopGrace is how long a server that failed to start gets to shut down before it is killed.
const stopGrace = 30 * time.Second

// readyPoll is how often Start checks whether the server accepts connections.
const readyPoll = 100 * time.Millisecond

// reservedOptions are the server options Start sets itself; Settings may not name them.
var reservedOptions = map[string]bool{
	"basedir": true, "datadir": true, "socket": true, "pid-file": true, "log-error": true,
	"port": true, "bind-address": true, "skip-networking": true, "networking": true, "user": true,
	"no-defaults": true, "defaults-file": true, "defaults-extra-file": true,
	"defaults-group-suffix": true, "print-defaults": true, "mysqlx": true,
}

func init() {
	for _, o := range isolationOptions {
		reservedOptions[o] = true
	}
}

var settingNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)

// Start starts mariadbd (mysqld) on DataDir(root), as the server's OS user, and waits until a
// client connects through the socket. The server's log goes to RuntimeDir/server.log (appended
// to) and, line by line, to opts.Output. The runtime directory, which holds the socket, becomes
// the server user's with mode 0700.
//
// The server is isolated (see isolate.go): no binary log, no replica thread started at startup,
// and a replica configuration found in the data directory is removed once the server is up
// (RESET SLAVE ... ALL). A server with a TCP listener locks every account TCP clients could log
// in with before it accepts any connection (--init-file), so that it admits nobody over TCP
// until SetPassword; Start checks that they are locked and fails (stopping the server) if not.
//
// opts.Volatile changes nothing: the server keeps its durability settings (InnoDB flushes its
// log at each commit).
func (s *server) Start(ctx context.Context, root string, opts engine.StartOptions) (engine.Instance, error) {
	u, err := s.User(opts.RunAs)
	if err != nil {
		return nil, err
	}
	dataDir := engine.DataDir(root)
	if st, err := os.Stat(dataDir); err != nil {
		return nil, fmt.Errorf("%s: start: data directory: %w", s.kind, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s: start: data directory %s is not a directory", s.kind, dataDir)
	}
	if opts.RuntimeDir == "" {
		return nil, fmt.Errorf("%s: start %s: no runtime directory", s.kind, dataDir)
	}
	runtimeDir, err := filepath.Abs(opts.RuntimeDir)
	if err != nil {
		return nil, fmt.Errorf("%s: start: runtime directory: %w", s.kind, err)
	}
	if st, err := os.Stat(runtimeDir); err != nil {
		return nil, fmt.Errorf("%s: start: runtime directory: %w", s.kind, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s: start: runtime directory %s is not a directory", s.kind, runtimeDir)
	}
	socket := filepath.Join(runtimeDir, socketName)
	if len(socket) > maxSocketPath {
		return nil, fmt.Errorf("%s: start: socket path %s is %d bytes, more than the %d a Unix socket takes: use a shorter runtime directory",
			s.kind, socket, len(socket), maxSocketPath)
	}
	// The runtime directory itself is given to the server's user below; its parents must let
	// that user through.
	for _, dir := range []string{dataDir, filepath.Dir(runtimeDir)} {
		if err := checkTraversable(u, dir); err != nil {
			return nil, fmt.Errorf("%s: start: %w", s.kind, err)
		}
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: start %s: a server already listens on %s", s.kind, dataDir, socket)
	}
	args, err := s.serverArgs(dataDir, runtimeDir, opts)
	if err != nil {
		return nil, err
	}
	clientUser, clientName, err := s.clientUser()
	if err != nil {
		return nil, err
	}
	// The server writes its pid file, socket, log and temporary files into the runtime
	// directory, which becomes its user's.
	if os.Geteuid() == 0 {
		if err := os.Chown(runtimeDir, u.UID, u.GID); err != nil {
			return nil, fmt.Errorf("%s: start: runtime directory: %w", s.kind, err)
		}
	}
	// The socket lets OS users in by name (unix_socket): only the server's user and root may
	// reach it.
	if err := os.Chmod(runtimeDir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: start: runtime directory: %w", s.kind, err)
	}
	readySQL := "SELECT 1"
	if opts.Port > 0 {
		initFile, err := writeInitFile(u, runtimeDir)
		if err != nil {
			return nil, fmt.Errorf("%s: start: init file: %w", s.kind, err)
		}
		args = append(args, "--init-file="+initFile)
		readySQL = s.openTCPAccountsSQL()
	}
	replicas, err := s.hasReplicaConfig(dataDir)
	if err != nil {
		return nil, fmt.Errorf("%s: start: %w", s.kind, err)
	}
	if err := u.MkdirAll(filepath.Join(runtimeDir, tmpDirName), 0o700); err != nil {
		return nil, fmt.Errorf("%s: start: temporary directory: %w", s.kind, err)
	}
	logFile := filepath.Join(runtimeDir, logFileName)
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("%s: start: server log: %w", s.kind, err)
	}
	defer logf.Close() // the server has its own descriptor once started
	st, err := logf.Stat()
	if err == nil && os.Geteuid() == 0 {
		err = logf.Chown(u.UID, u.GID)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: start: server log: %w", s.kind, err)
	}

	// The server outlives ctx, which bounds the start only.
	cmd := u.Command(context.Background(), "", s.bin, args)
	// Option errors are printed on stderr before the server opens its log: both go to the log.
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", s.kind, s.bin, err)
	}
	in := &instance{
		srv:        s,
		dataDir:    dataDir,
		socket:     socket,
		logFile:    logFile,
		logStart:   st.Size(),
		host:       connectHost(opts),
		port:       opts.Port,
		clientUser: clientUser,
		clientName: clientName,
		proc:       cmd.Process,
		exited:     make(chan struct{}),
		done:       make(chan struct{}),
		drained:    make(chan chan struct{}),
	}
	go in.wait(cmd)
	go in.follow(opts.Output)
	out, err := in.waitReady(ctx, readySQL)
	if err != nil {
		return nil, err
	}
	if opts.Port > 0 && strings.TrimSpace(out) != "0" {
		in.terminate(stopGrace)
		return nil, in.serverError("start", fmt.Errorf("%s account(s) that TCP clients could log in with are not locked after the init file (see the log): the server was stopped", strings.TrimSpace(out)))
	}
	if replicas {
		if err := in.resetReplicas(ctx); err != nil {
			in.terminate(stopGrace)
			return nil, err
		}
	}
	in.flushLog() // the start's lines reach Output before Start returns
	slog.Debug("mariadb: server accepts connections", "engine", s.kind, "version", s.version,
		"pid", in.PID(), "datadir", dataDir, "socket", socket, "port", opts.Port)
	return in, nil
}

// serverArgs returns the server's command line: the options the adapter owns, then the
// defaults and opts.Settings, by name.
func (s *server) serverArgs(dataDir, runtimeDir string, opts engine.StartOptions) ([]string, error) {
	args := []string{
		"--no-defaults", // first, or the server ignores it
		"--basedir=" + s.basedir(),
		"--datadir=" + dataDir,
		"--socket=" + filepath.Join(runtimeDir, socketName),
		"--pid-file=" + filepath.Join(runtimeDir, pidFileName),
		"--log-error=" + filepath.Join(runtimeDir, logFileName),
		"--skip-name-resolve",
	}
	args = append(args, s.isolationArgs()...)
	if opts.Port == 0 {
		args = append(args, "--skip-networking")
	} else {
		if opts.Port < 0 || opts.Port > 65535 {
			return nil, fmt.Errorf("%s: start: port %d out of range", s.kind, opts.Port)
		}
		addr := opts.ListenAddress
		if addr == "" {
			addr = "127.0.0.1"
		}
		args = append(args, "--port="+strconv.Itoa(opts.Port), "--bind-address="+addr)
	}
	// A server removes every temporary table file it finds in its tmpdir when it starts, other
	// servers' too: each gets its own.
	settings := map[string]string{"max-allowed-packet": maxAllowedPacket, "tmpdir": filepath.Join(runtimeDir, tmpDirName)}
	if s.mariaDB() {
		settings["character-set-server"] = "utf8mb4"
		settings["collation-server"] = "utf8mb4_general_ci"
	} else {
		// The X protocol listens on a port and a socket of its own; packaged builds default
		// secure_file_priv to a directory that may not exist, which stops the server.
		args = append(args, "--mysqlx=OFF")
		settings["secure-file-priv"] = "NULL"
	}
	for name, value := range opts.Settings {
		key := normalizeOption(name)
		if !settingNameRE.MatchString(name) {
			return nil, fmt.Errorf("%w: %q: names are letters, digits, '_' and '-'", ErrSetting, name)
		}
		if reservedOptions[strings.TrimPrefix(key, "loose-")] {
			return nil, fmt.Errorf("%w: %q is set by the image builder", ErrSetting, name)
		}
		if strings.ContainsFunc(value, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return nil, fmt.Errorf("%w: %s: value %q has control characters", ErrSetting, name, value)
		}
		settings[key] = value
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--"+k+"="+settings[k])
	}
	return args, nil
}

// normalizeOption spells an option name the way the server's own defaults do: lower case with
// '-', so that "max_allowed_packet" replaces the default "max-allowed-packet".
func normalizeOption(name string) string {
	return strings.ToLower(strings.ReplaceAll(name, "_", "-"))
}

// connectHost is the address a client reaches the TCP listener at.
func connectHost(opts engine.StartOptions) string {
	if opts.Port == 0 {
		return ""
	}
	switch opts.ListenAddress {
	case "", "*", "0.0.0.0", "::":
		return "127.0.0.1"
	}
	return opts.ListenAddress
}

// clientUser returns the OS user the client runs as and the account it logs in with: OS root
// and root when the process is root (unix_socket authentication), else the current OS user and
// the account of the same name, which mariadb-install-db makes for the server's OS user. MySQL's
// root@localhost has an empty password and serves both.
func (s *server) clientUser() (*engine.User, string, error) {
	if os.Geteuid() == 0 {
		u, err := engine.ResolveUser("root", "")
		return u, "root", err
	}
	u, err := engine.ResolveUser("", "")
	if err != nil {
		return nil, "", err
	}
	if !s.mariaDB() {
		return u, "root", nil
	}
	return u, u.Name, nil
}

// waitReady waits until the server answers query through its socket, the server exits, or
// ctx ends, and returns the answer; in the last two cases the server is stopped and the error
// has the log's tail.
func (in *instance) waitReady(ctx context.Context, query string) (string, error) {
	start := time.Now()
	bin := filepath.Base(in.srv.bin)
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		select {
		case <-in.exited:
			<-in.done
			return "", in.serverError("start", fmt.Errorf("%s exited before accepting connections: %w", bin, in.exitError()))
		default:
		}
		if _, err := os.Stat(in.socket); err == nil {
			out, err := in.query(ctx, "", query)
			if err == nil {
				return out, nil
			}
			if !retryable(err) && ctx.Err() == nil {
				select {
				case <-in.exited:
					continue // the exit is the story
				default:
				}
				in.terminate(stopGrace)
				return "", in.serverError("start", fmt.Errorf("%s runs, but the client cannot connect: %w", bin, err))
			}
		}
		select {
		case <-ctx.Done():
			killed := in.terminate(stopGrace)
			err := fmt.Errorf("%s not accepting connections after %s: %w", bin, time.Since(start).Round(time.Millisecond), ctx.Err())
			if killed {
				err = fmt.Errorf("%w (and it did not stop within %s of SIGTERM: killed)", err, stopGrace)
			}
			return "", in.serverError("start", err)
		case <-in.exited:
		case <-tick.C:
		}
	}
}

// retryable reports whether a client error means the server is not listening yet (as opposed
// to refusing the client).
func retryable(err error) bool {
	msg := err.Error()
	for _, code := range []string{"ERROR 2002", "ERROR 2003", "ERROR 2006", "ERROR 2013"} {
		if strings.Contains(msg, code) {
			return true
		}
	}
	return errors.Is(err, os.ErrNotExist)
}

// Adopt returns the server an earlier process started on the instance under root with opts
// (engine.Engine.Adopt): the one the pid file of the runtime directory names, when that
// process runs this server on this data directory (a pid that was reused is not it) and
// answers through the socket.
func (s *server) Adopt(ctx context.Context, root string, opts engine.StartOptions) (engine.Instance, error) {
	dataDir := engine.DataDir(root)
	if opts.RuntimeDir == "" {
		return nil, fmt.Errorf("%s: adopt %s: no runtime directory", s.kind, dataDir)
	}
	runtimeDir, err := filepath.Abs(opts.RuntimeDir)
	if err != nil {
		return nil, fmt.Errorf("%s: adopt: runtime directory: %w", s.kind, err)
	}
	pidFile := filepath.Join(runtimeDir, pidFileName)
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("%s: adopt %s: %w: %w", s.kind, dataDir, engine.ErrNotRunning, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("%s: adopt %s: %w: %s holds %q", s.kind, dataDir, engine.ErrNotRunning, pidFile, data)
	}
	if args := engine.CommandLine(pid); !slices.Contains(args, "--datadir="+dataDir) {
		return nil, fmt.Errorf("%s: adopt %s: %w: process %d (%q) is not its server", s.kind, dataDir, engine.ErrNotRunning, pid, args)
	}
	clientUser, clientName, err := s.clientUser()
	if err != nil {
		return nil, err
	}
	proc, exited, err := engine.WatchPID(pid)
	if err != nil {
		return nil, fmt.Errorf("%s: adopt %s: %w", s.kind, dataDir, err)
	}
	logFile := filepath.Join(runtimeDir, logFileName)
	var logStart int64
	if st, err := os.Stat(logFile); err == nil {
		logStart = st.Size() // LogTail shows what the server logs from now on
	}
	in := &instance{
		srv:        s,
		dataDir:    dataDir,
		socket:     filepath.Join(runtimeDir, socketName),
		logFile:    logFile,
		logStart:   logStart,
		host:       connectHost(opts),
		port:       opts.Port,
		clientUser: clientUser,
		clientName: clientName,
		proc:       proc,
		exited:     make(chan struct{}),
		done:       make(chan struct{}),
		drained:    make(chan chan struct{}),
	}
	go func() {
		<-exited
		close(in.exited)
	}()
	go in.follow(nil)
	if _, err := in.query(ctx, "", "SELECT 1"); err != nil {
		return nil, in.serverError("adopt", fmt.Errorf("server (pid %d) runs but does not answer: %w", pid, err))
	}
	return in, nil
}

// PrepareClone does nothing: the server keeps its pid file and socket in the runtime directory,
// which each start gets anew, and locks its data files with advisory locks that belong to the
// process, not to the files a copy holds.
func (s *server) PrepareClone(root string) error { return nil }
