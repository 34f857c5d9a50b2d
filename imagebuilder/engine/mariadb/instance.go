package mariadb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// logTailLines is how many lines of the server's log an error carries.
const logTailLines = 20

// followPoll is how often the log is read for StartOptions.Output.
const followPoll = 200 * time.Millisecond

// instance is a running server: an engine.Instance.
type instance struct {
	srv     *server
	dataDir string
	socket  string
	// logFile is the server's log; logStart its size when this server started, where LogTail
	// and the follower begin.
	logFile  string
	logStart int64
	// host and port of the TCP listener (port 0: none).
	host string
	port int
	// clientUser runs the client, which logs in as clientName (see server.clientUser).
	clientUser *engine.User
	clientName string

	// proc is the server: started by this process (Start), or by an earlier one (Adopt).
	proc *os.Process
	// exited is closed when the server has exited, after waitErr is set: its exit status, nil
	// for an adopted server (not this process's child: the status is not known).
	exited  chan struct{}
	waitErr error
	// done is closed after exited, once the follower has written the log's last line.
	done chan struct{}
	// drained asks the follower to write what the log has now; it closes the channel sent when
	// it has.
	drained chan chan struct{}

	// mu guards password and database.
	mu       sync.Mutex
	password string
	database string
}

var _ engine.Instance = (*instance)(nil)

// wait waits for the server started by cmd (Start) and records its exit status.
func (in *instance) wait(cmd *exec.Cmd) {
	in.waitErr = cmd.Wait()
	close(in.exited)
}

// exitError returns how the server exited; valid once exited is closed.
func (in *instance) exitError() error {
	if in.waitErr == nil {
		return errors.New("exit status 0")
	}
	return in.waitErr
}

// follow copies the server's log, line by line, to out until the server exits, then closes done.
func (in *instance) follow(out io.Writer) {
	defer close(in.done)
	idle := func() {
		for {
			select {
			case <-in.exited:
				return
			case reply := <-in.drained:
				close(reply)
			}
		}
	}
	if out == nil {
		idle()
		return
	}
	f, err := os.Open(in.logFile)
	if err != nil {
		idle()
		return
	}
	defer f.Close()
	if _, err := f.Seek(in.logStart, io.SeekStart); err != nil {
		idle()
		return
	}
	var pending []byte
	buf := make([]byte, 32<<10)
	failed := false
	drain := func() {
		for {
			n, err := f.Read(buf)
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				if !failed {
					_, werr := out.Write(pending[:i+1])
					failed = werr != nil
				}
				pending = pending[i+1:]
			}
			if err != nil || n == 0 {
				return
			}
		}
	}
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	for {
		select {
		case <-in.exited:
			drain()
			if len(pending) > 0 && !failed {
				_, _ = out.Write(append(pending, '\n'))
			}
			return
		case reply := <-in.drained:
			drain()
			close(reply)
		case <-tick.C:
			drain()
		}
	}
}

// flushLog returns once the follower has written the log's lines so far (or the server exited).
func (in *instance) flushLog() {
	reply := make(chan struct{})
	select {
	case in.drained <- reply:
		<-reply
	case <-in.done:
	}
}

// Conn says how to reach the server: root over TCP (once SetPassword has run) or through the
// socket; Database is the database CreateDatabase or RestoreLogical last made or filled.
func (in *instance) Conn() engine.ConnInfo {
	in.mu.Lock()
	defer in.mu.Unlock()
	return engine.ConnInfo{
		Engine:   in.srv.kind,
		Host:     in.host,
		Port:     in.port,
		Socket:   in.socket,
		User:     "root",
		Password: in.password,
		Database: in.database,
	}
}

func (in *instance) Done() <-chan struct{} { return in.done }

func (in *instance) PID() int { return in.proc.Pid }

// LogTail returns the last n lines this server wrote to its log.
func (in *instance) LogTail(n int) string {
	return tailFrom(in.logFile, in.logStart, n)
}

// serverError wraps err, of operation op, with the tail of the server's log.
func (in *instance) serverError(op string, err error) error {
	return &engine.ServerError{Op: op, Err: err, LogTail: in.LogTail(logTailLines)}
}

// client returns the client command for database db ("" = none), logged in through the socket.
// Scripts and dumps run through it in binary mode, which turns the client's own commands
// (source, system, \!, ...) off but DELIMITER, and without LOAD DATA LOCAL: what they hold
// reaches the server only, never the builder's files or shell.
func (in *instance) client(ctx context.Context, db string, args ...string) *exec.Cmd {
	a := []string{
		"--no-defaults", "--protocol=socket", "--socket=" + in.socket, "--user=" + in.clientName,
		"--default-character-set=utf8mb4", "--max-allowed-packet=" + maxAllowedPacket, "--connect-timeout=10",
		"--binary-mode", "--local-infile=0",
	}
	if db != "" {
		a = append(a, "--database="+db)
	}
	return in.clientUser.Command(ctx, "", in.srv.client, append(a, args...))
}

// Exec runs the script read from r in database db with the client, which stops at the first
// error.
func (in *instance) Exec(ctx context.Context, db string, r io.Reader) error {
	cmd := in.client(ctx, db)
	cmd.Stdin = r
	if _, err := engine.Run(cmd); err != nil {
		return in.serverError("exec", fmt.Errorf("script in database %q: %w", db, err))
	}
	return nil
}

// execSQL runs a script given as text, for op.
func (in *instance) execSQL(ctx context.Context, op, db, sql string) error {
	cmd := in.client(ctx, db)
	cmd.Stdin = strings.NewReader(sql)
	if _, err := engine.Run(cmd); err != nil {
		return in.serverError(op, err)
	}
	return nil
}

// Query runs one statement and returns what the client prints in batch mode without column
// names: one line per row, columns separated by tabs, without the last newline.
func (in *instance) Query(ctx context.Context, db, sql string) (string, error) {
	out, err := in.query(ctx, db, sql)
	if err != nil {
		return "", in.serverError("query", err)
	}
	return out, nil
}

func (in *instance) query(ctx context.Context, db, sql string) (string, error) {
	var out bytes.Buffer
	cmd := in.client(ctx, db, "--batch", "--skip-column-names", "--execute="+sql)
	cmd.Stdout = &out
	if _, err := engine.Run(cmd); err != nil {
		return "", fmt.Errorf("%q: %w", sql, err)
	}
	return strings.TrimSuffix(out.String(), "\n"), nil
}

// CreateDatabase creates database name, in the server's default character set, if it does not
// exist.
func (in *instance) CreateDatabase(ctx context.Context, name string) error {
	if err := checkDatabaseName(name); err != nil {
		return fmt.Errorf("%s: create database: %w", in.srv.kind, err)
	}
	if err := in.execSQL(ctx, "create database "+name, "", "CREATE DATABASE IF NOT EXISTS "+quoteIdent(name)+";\n"); err != nil {
		return err
	}
	in.mu.Lock()
	in.database = name
	in.mu.Unlock()
	return nil
}

// SetPassword lets root log in over TCP with password, and nobody else: every account a TCP
// client could log in with is locked (again: Start's init file did it already), then root@'%' is
// created (or altered) with the password and all privileges, and unlocked; root@localhost takes
// the password besides its socket authentication. The password travels to the client on its
// standard input, never on a command line, and errors do not repeat it.
func (in *instance) SetPassword(ctx context.Context, password string) error {
	if password == "" {
		return fmt.Errorf("%s: set password: empty password", in.srv.kind)
	}
	pw := quoteString(password)
	var sql strings.Builder
	sql.WriteString("SET SESSION sql_mode = '';\n") // quoteString's escapes need backslashes on
	sql.WriteString(lockTCPAccountsSQL)
	fmt.Fprintf(&sql, "CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY %s;\n", pw)
	fmt.Fprintf(&sql, "ALTER USER 'root'@'%%' IDENTIFIED BY %s ACCOUNT UNLOCK;\n", pw)
	sql.WriteString("GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
	if in.srv.mariaDB() {
		fmt.Fprintf(&sql, "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(%s);\n", pw)
	}
	cmd := in.client(ctx, "")
	cmd.Stdin = strings.NewReader(sql.String())
	if _, err := engine.Run(cmd); err != nil {
		msg := strings.ReplaceAll(err.Error(), password, "<password>")
		msg = strings.ReplaceAll(msg, pw, "<password>")
		return in.serverError("set password", errors.New(msg))
	}
	in.mu.Lock()
	in.password = password
	in.mu.Unlock()
	return nil
}

// Checkpoint flushes every table and makes the next shutdown a slow one (see the package
// documentation, Images).
func (in *instance) Checkpoint(ctx context.Context) error {
	return in.execSQL(ctx, "checkpoint", "", "SET GLOBAL innodb_fast_shutdown = 0;\nFLUSH TABLES;\n")
}

// Stop asks the server to shut down (SIGTERM, which mariadbd and mysqld take as a clean
// shutdown, like mariadb-admin shutdown but needing no login) and waits for it; when ctx ends
// first, it kills the server and says so. A server that had already exited cleanly stops
// without error; one that had died reports how.
func (in *instance) Stop(ctx context.Context) error {
	select {
	case <-in.exited:
		<-in.done
		if in.waitErr != nil {
			return in.serverError("stop", fmt.Errorf("server (pid %d) had already exited: %w", in.PID(), in.waitErr))
		}
		return nil
	default:
	}
	if ctx.Err() != nil {
		in.kill()
		return in.serverError("stop", fmt.Errorf("server (pid %d) not stopped: the context had ended (%w): killed with SIGKILL", in.PID(), ctx.Err()))
	}
	if err := in.proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return in.serverError("stop", fmt.Errorf("SIGTERM to pid %d: %w", in.PID(), err))
	}
	select {
	case <-in.exited:
		<-in.done
		if in.waitErr != nil {
			return in.serverError("stop", fmt.Errorf("server (pid %d) shut down with %w", in.PID(), in.waitErr))
		}
		return nil
	case <-ctx.Done():
		in.kill()
		return in.serverError("stop", fmt.Errorf("server (pid %d) not stopped when the context ended (%w): killed with SIGKILL", in.PID(), ctx.Err()))
	}
}

// terminate stops the server with SIGTERM, waiting up to grace before it kills it; it reports
// whether it had to kill.
func (in *instance) terminate(grace time.Duration) (killed bool) {
	_ = in.proc.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-in.exited:
		<-in.done
		return false
	case <-t.C:
		in.kill()
		return true
	}
}

// kill kills the server's process group and waits for it.
func (in *instance) kill() {
	_ = syscall.Kill(-in.PID(), syscall.SIGKILL) // u.Command made it a group leader
	<-in.exited
	<-in.done
}

// tailFrom returns the last n lines of the file at path from offset off on, reading at most its
// last 256 KiB ("" when it cannot be read).
func tailFrom(path string, off int64, n int) string {
	if n <= 0 {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	const maxTail = 256 << 10
	off = max(off, st.Size()-maxTail)
	if off >= st.Size() {
		return ""
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
