package postgres

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// RestoreLogical restores a dump through the running server:
//
//   - FormatPgDumpCustom, FormatPgDumpDir and FormatPgDumpTar (pg_dump's archive formats) with
//     pg_restore --exit-on-error --no-tablespaces into opts.Database (created if missing; "" =
//     postgres), or, with opts.RecordedDatabase, into the database the archive was dumped from
//     (its "dbname" header);
//   - FormatSQL with psql (ON_ERROR_STOP) on opts.Database, plain or compressed (gzip, lz4,
//     zstd): a plain dump records no database name, so RecordedDatabase does not change where
//     it goes;
//   - FormatPgDumpAll with psql on the postgres database (the dump makes its own databases).
//
// Roles: a single-database dump (an archive, or plain with pg_dump's header) keeps the ownership
// and privileges it records. pg_dump does not dump roles, so the roles it names that the
// instance lacks are created first, as NOLOGIN roles with a comment saying why (restore a
// pg_dumpall --globals-only dump first, or create them in the preScript, to have them as in the
// source). A pg_dumpall dump creates its roles itself; its "CREATE ROLE r;" statements for roles
// that already exist (AdminUser always does) are skipped, and so is "DROP ROLE postgres;"
// (--clean), each by itself: every other statement still stops the restore at its first error.
//
// The data's point in time is the archive's creation time (pg_restore -l) or a plain dump's
// "-- Started on" comment (pg_dump --verbose writes it); otherwise it is zero and Source says so.
// A dump records no log position: LogPosition stays empty.
func (i *instance) RestoreLogical(ctx context.Context, b engine.BackupFile, opts engine.RestoreOptions) (engine.DataState, error) {
	defer i.flushLog()
	switch b.Format {
	case imagebuilder.FormatPgDumpCustom, imagebuilder.FormatPgDumpDir, imagebuilder.FormatPgDumpTar:
		return i.restoreArchive(ctx, b, opts)
	case imagebuilder.FormatSQL:
		return i.restorePlain(ctx, b, opts, false)
	case imagebuilder.FormatPgDumpAll:
		return i.restorePlain(ctx, b, opts, true)
	case imagebuilder.FormatBaseBackupTar, imagebuilder.FormatWAL:
		return engine.DataState{}, fmt.Errorf("%w: %s is a base backup or WAL, restored with RestorePhysical before the server starts", engine.ErrFormat, b.Path)
	}
	return engine.DataState{}, fmt.Errorf("%w: %s: %q is not a format PostgreSQL restores through the server", engine.ErrFormat, b.Path, b.Format)
}

// formatNames are the pg_dump --format names of the archive formats, for messages.
var formatNames = map[imagebuilder.BackupFormat]string{
	imagebuilder.FormatPgDumpCustom: "custom",
	imagebuilder.FormatPgDumpDir:    "directory",
	imagebuilder.FormatPgDumpTar:    "tar",
}

// restoreArchive restores a pg_dump archive (custom, directory or tar format) with pg_restore.
func (i *instance) restoreArchive(ctx context.Context, b engine.BackupFile, opts engine.RestoreOptions) (engine.DataState, error) {
	list, err := i.pgRestoreOutput(ctx, b, "-l")
	if err != nil {
		return engine.DataState{}, fmt.Errorf("%w: %s: pg_restore cannot read it as a pg_dump %s archive: %w", engine.ErrFormat, b.Path, formatNames[b.Format], err)
	}
	state := archiveState(list)

	roles, err := i.archiveRoles(ctx, b)
	if err != nil {
		return state, err
	}
	if err := i.createMissingRoles(ctx, roles, b.Path); err != nil {
		return state, err
	}
	db := targetDatabase(opts)
	if opts.RecordedDatabase {
		recorded := archiveDBName(list)
		if recorded == "" {
			return state, fmt.Errorf("%w: %s: the archive records no database name (pg_restore -l has no dbname line), so it cannot go into a database of its own", engine.ErrFormat, b.Path)
		}
		db = recorded
	}
	if db != defaultDatabase {
		if err := i.CreateDatabase(ctx, db); err != nil {
			return state, err
		}
	}

	cmd, f, err := i.pgRestore(ctx, b, "-d", i.conninfo(db), "--exit-on-error", "--no-tablespaces")
	if err != nil {
		return state, fmt.Errorf("postgres: restore %s: %w", b.Path, err)
	}
	stop := func() {}
	if f != nil {
		defer f.Close()
		stop = pollOffset(f, opts.Progress)
	}
	_, err = engine.Run(cmd)
	stop()
	if err != nil {
		return state, i.serverError("pg_restore "+b.Path, err)
	}
	if f != nil {
		reportSize(f, opts.Progress)
	} else if opts.Progress != nil {
		opts.Progress(b.Size)
	}
	return state, nil
}

// pgRestore returns a pg_restore command with args reading the archive b. The client tools run
// as the server's user, who may not be allowed to open the backup: an archive file is given as
// their standard input, opened here (a regular file there is seekable, so pg_restore skips what
// it does not need), and returned for the caller to close. A directory archive cannot be: its
// pg_restore runs as this process's user (the server's, or root, who may enter the socket's
// directory), with the directory's path.
func (i *instance) pgRestore(ctx context.Context, b engine.BackupFile, args ...string) (*exec.Cmd, *os.File, error) {
	if b.Format == imagebuilder.FormatPgDumpDir {
		// pg_restore opens the directory's files by name with this process's rights: they must
		// be the regular files pg_dump writes, not links to files elsewhere.
		if err := checkDumpDir(b.Path); err != nil {
			return nil, nil, err
		}
		cmd := exec.CommandContext(ctx, i.eng.tool("pg_restore"), append(args, "--format=directory", b.Path)...)
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TZ=UTC", "PGCONNECT_TIMEOUT=30"}
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.WaitDelay = 5 * time.Second
		return cmd, nil, nil
	}
	f, err := os.Open(b.Path)
	if err != nil {
		return nil, nil, err
	}
	if b.Format == imagebuilder.FormatPgDumpTar {
		args = append(args, "--format=tar")
	}
	cmd := i.client(ctx, "pg_restore", args...)
	cmd.Stdin = f
	return cmd, f, nil
}

// checkDumpDir refuses a pg_dump directory archive holding anything but regular files (pg_dump
// writes toc.dat and one file per table's data, nothing else).
func checkDumpDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, ent := range entries {
		if !ent.Type().IsRegular() {
			return fmt.Errorf("%w: %s in the pg_dump directory archive %s is not a regular file (pg_dump writes only regular files there)",
				engine.ErrFormat, ent.Name(), dir)
		}
	}
	return nil
}

// pgRestoreOutput runs pg_restore with args on the archive b and returns its output.
func (i *instance) pgRestoreOutput(ctx context.Context, b engine.BackupFile, args ...string) (string, error) {
	cmd, f, err := i.pgRestore(ctx, b, args...)
	if err != nil {
		return "", err
	}
	if f != nil {
		defer f.Close()
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	if _, err := engine.Run(cmd); err != nil {
		return "", err
	}
	return out.String(), nil
}

// archiveDBName returns the database name pg_restore -l's header records (";     dbname: app").
func archiveDBName(list string) string {
	for _, line := range strings.Split(list, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(strings.TrimPrefix(line, ";")), "dbname: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// archiveRoles returns the roles an archive names, from its schema rendered as SQL.
func (i *instance) archiveRoles(ctx context.Context, b engine.BackupFile) ([]string, error) {
	cmd, f, err := i.pgRestore(ctx, b, "--schema-only", "-f", "-")
	if err != nil {
		return nil, fmt.Errorf("postgres: restore %s: list roles: %w", b.Path, err)
	}
	if f != nil {
		defer f.Close()
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("postgres: restore %s: list roles: %w", b.Path, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("postgres: restore %s: list roles: %w", b.Path, err)
	}
	roles, scanErr := scanRoles(out)
	if scanErr != nil {
		_, _ = io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("postgres: restore %s: list roles: pg_restore --schema-only: %w: %s", b.Path, err, strings.TrimSpace(stderr.String()))
	}
	if scanErr != nil {
		return nil, fmt.Errorf("postgres: restore %s: list roles: %w", b.Path, scanErr)
	}
	return roles, nil
}

// createMissingRoles creates, as NOLOGIN roles, those of roles the instance lacks.
func (i *instance) createMissingRoles(ctx context.Context, roles []string, source string) error {
	if len(roles) == 0 {
		return nil
	}
	existing, err := i.roles(ctx)
	if err != nil {
		return err
	}
	var script strings.Builder
	var created []string
	for _, r := range roles {
		if existing[r] {
			continue
		}
		created = append(created, r)
		fmt.Fprintf(&script, "CREATE ROLE %s NOLOGIN;\nCOMMENT ON ROLE %s IS %s;\n", quoteIdent(r), quoteIdent(r),
			quoteLiteral("created by dataimage: "+source+" refers to it and the instance had no such role"))
	}
	if len(created) == 0 {
		return nil
	}
	if err := i.Exec(ctx, "", strings.NewReader(script.String())); err != nil {
		return fmt.Errorf("postgres: restore %s: create the roles it refers to (%s): %w", source, strings.Join(created, ", "), err)
	}
	return nil
}

// roles returns the names of the instance's roles.
func (i *instance) roles(ctx context.Context) (map[string]bool, error) {
	out, err := i.Query(ctx, "", "SELECT rolname FROM pg_catalog.pg_roles")
	if err != nil {
		return nil, fmt.Errorf("postgres: list roles: %w", err)
	}
	m := map[string]bool{}
	for _, r := range strings.Split(out, "\n") {
		if r != "" {
			m[r] = true
		}
	}
	return m, nil
}

// targetDatabase is the database a single-database dump goes into.
func targetDatabase(opts engine.RestoreOptions) string {
	if opts.Database == "" {
		return defaultDatabase
	}
	return opts.Database
}

// restorePlain restores a plain SQL dump (all: from pg_dumpall) with psql.
func (i *instance) restorePlain(ctx context.Context, b engine.BackupFile, opts engine.RestoreOptions, all bool) (engine.DataState, error) {
	head, compressed, err := textHead(b.Path)
	if err != nil {
		return engine.DataState{}, err
	}
	state := startedOnState(head)
	db := defaultDatabase // pg_dumpall's output connects to its databases itself
	if !all {
		db = targetDatabase(opts)
		if strings.Contains(head[:min(len(head), 4096)], headerPgDump) {
			roles, err := plainRoles(b.Path, compressed)
			if err != nil {
				return state, err
			}
			if err := i.createMissingRoles(ctx, roles, b.Path); err != nil {
				return state, err
			}
		}
		if db != defaultDatabase {
			if err := i.CreateDatabase(ctx, db); err != nil {
				return state, err
			}
		}
	}

	f, err := os.Open(b.Path)
	if err != nil {
		return state, fmt.Errorf("postgres: restore %s: %w", b.Path, err)
	}
	defer f.Close()
	cmd := i.psql(ctx, db, "-f", "-")
	stop := func() {}
	if !compressed && !all {
		cmd.Stdin = f // psql reads the file itself; its offset is the progress
		stop = pollOffset(f, opts.Progress)
	} else {
		pr := &engine.ProgressReader{R: f, Report: opts.Progress}
		var r io.Reader = pr
		if compressed {
			zr, closeZ, err := decompressor(pr)
			if err != nil {
				return state, fmt.Errorf("%w: %s: %v", engine.ErrFormat, b.Path, err)
			}
			defer closeZ()
			r = zr
		}
		if all {
			existing, err := i.roles(ctx)
			if err != nil {
				return state, err
			}
			r = newGlobalsFilter(r, existing)
		}
		cmd.Stdin = r
	}
	_, err = engine.Run(cmd)
	stop()
	if err != nil {
		return state, i.serverError("psql "+b.Path, err)
	}
	reportSize(f, opts.Progress)
	return state, nil
}

// textHead returns the first bytes of a plain dump, decompressed when it is compressed (gzip,
// lz4, zstd), and whether it is.
func textHead(p string) (string, bool, error) {
	head, err := engine.Sniff(p, sniffSize)
	if err != nil {
		return "", false, fmt.Errorf("postgres: restore %s: %w", p, err)
	}
	if compressionOf(head) == "" {
		return string(head), false, nil
	}
	head, err = decompressedHead(p)
	if err != nil {
		return "", false, err
	}
	return string(head), true, nil
}

// plainRoles returns the roles a plain pg_dump script names. It reads the whole script.
func plainRoles(p string, compressed bool) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("postgres: restore %s: %w", p, err)
	}
	defer f.Close()
	var r io.Reader = f
	if compressed {
		zr, closeZ, err := decompressor(f)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", engine.ErrFormat, p, err)
		}
		defer closeZ()
		r = zr
	}
	roles, err := scanRoles(r)
	if err != nil {
		return nil, fmt.Errorf("postgres: restore %s: list roles: %w", p, err)
	}
	return roles, nil
}

// archiveState takes the data's point in time from pg_restore -l's "Archive created at" line.
// The archive records the dumping machine's local wall clock without its time zone (pg_restore
// prints it as such, in UTC here), so the time is exact only for a dump taken in UTC.
func archiveState(list string) engine.DataState {
	const prefix = "; Archive created at "
	for _, line := range strings.Split(list, "\n") {
		v, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		t, _, err := parsePGTime(v)
		if err != nil {
			return engine.DataState{Source: "pg_dump archive header: creation time unreadable: " + err.Error()}
		}
		return engine.DataState{Time: t, Source: "pg_dump archive header (the dumping machine's local time; its time zone is not recorded, taken as UTC)"}
	}
	return engine.DataState{Source: "pg_dump archive header has no creation time"}
}

// startedOnState takes the data's point in time from a plain dump's "-- Started on" comment.
func startedOnState(head string) engine.DataState {
	const prefix = "-- Started on "
	for _, line := range strings.Split(head, "\n") {
		v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), prefix)
		if !ok {
			continue
		}
		t, note, err := parsePGTime(v)
		if err != nil {
			return engine.DataState{Source: "dump's \"-- Started on\" comment unreadable: " + err.Error()}
		}
		return engine.DataState{Time: t, Source: withNote("dump's \"-- Started on\" comment", note)}
	}
	return engine.DataState{Source: "plain SQL dump: no creation time recorded (pg_dump --verbose writes a \"-- Started on\" comment)"}
}

// pollOffset reports, through report, the offset of f, which a child process reads as its
// standard input (the two share the file offset), every 200ms until the returned stop is called.
func pollOffset(f *os.File, report func(int64)) (stop func()) {
	if report == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		var last int64
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			if off, err := f.Seek(0, io.SeekCurrent); err == nil && off > last {
				last = off
				report(off)
			}
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
	}
}

// reportSize reports f's size as the final progress of a restore that read it all.
func reportSize(f *os.File, report func(int64)) {
	if report == nil {
		return
	}
	if st, err := f.Stat(); err == nil {
		report(st.Size())
	}
}

// globalsFilter passes a pg_dumpall script through, leaving out the statements of its globals
// section (up to the first database) that cannot succeed on an instance that has roles already:
// "CREATE ROLE r;" for a role that exists (the ALTER ROLE that follows sets its attributes) and
// "DROP ROLE [IF EXISTS] postgres;" (--clean; the connected role cannot be dropped). Each is
// replaced by a comment, so that psql's line numbers still match the file.
type globalsFilter struct {
	br       *bufio.Reader
	existing map[string]bool
	pending  []byte
	pass     bool // past the globals section: copy as is
	err      error
}

func newGlobalsFilter(r io.Reader, existing map[string]bool) *globalsFilter {
	return &globalsFilter{br: bufio.NewReaderSize(r, 64<<10), existing: existing}
}

func (g *globalsFilter) Read(p []byte) (int, error) {
	for len(g.pending) == 0 {
		if g.err != nil {
			return 0, g.err
		}
		if g.pass {
			return g.br.Read(p)
		}
		line, err := g.br.ReadString('\n')
		g.pending = []byte(g.filter(line))
		g.err = err
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

// filter returns what to send for one line of the globals section.
func (g *globalsFilter) filter(line string) string {
	text := strings.TrimRight(line, "\r\n")
	eol := line[len(text):]
	if strings.HasPrefix(text, `\connect`) || text == headerPgDump {
		g.pass = true
		return line
	}
	toks := tokenize(text)
	switch {
	case len(toks) == 4 && toks[0].is("CREATE") && toks[1].is("ROLE") && toks[3].text == ";":
		if name := identName(toks[2]); g.existing[name] {
			return "-- dataimage: skipped, the role exists already: " + text + eol
		}
	case len(toks) >= 4 && toks[0].is("DROP") && toks[1].is("ROLE") && toks[len(toks)-1].text == ";":
		at := 2
		if len(toks) == 6 && toks[2].is("IF") && toks[3].is("EXISTS") {
			at = 4
		}
		if at == len(toks)-2 {
			name := identName(toks[at])
			if name == AdminUser {
				return "-- dataimage: skipped, the administrative role cannot be dropped: " + text + eol
			}
			delete(g.existing, name)
		}
	}
	return line
}

// identName is the name an identifier token stands for: as written when quoted, folded to lower
// case otherwise.
func identName(t token) string {
	if t.quoted {
		return t.text
	}
	return strings.ToLower(t.text)
}
