package builder

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
	"github.com/dataimage/dataimage/internal/units"
)

// openBackupRoot opens the backup root, which every backup and script path is relative to.
func (b *build) openBackupRoot() (*os.Root, error) {
	if b.req.Env.BackupRoot == "" {
		return nil, fmt.Errorf("the definition names files but the request has no backup root")
	}
	root, err := os.OpenRoot(b.req.Env.BackupRoot)
	if err != nil {
		return nil, fmt.Errorf("open the backup root: %w", err)
	}
	return root, nil
}

// resolveBackups resolves the definition's backups under the backup root: the path of each on
// this machine (found through the os.Root, so that no path or link leads out of the root), its
// size, and its format (detected from the content when the definition names none).
func (b *build) resolveBackups() ([]engine.BackupFile, error) {
	root, err := b.openBackupRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	files := make([]engine.BackupFile, 0, len(b.def.Backups))
	for i, bk := range b.def.Backups {
		rel := bk.NormalizedPath()
		fail := func(err error) error { return fmt.Errorf("backups[%d] %s: %w", i, rel, err) }
		p, size, err := resolve(root, b.req.Env.BackupRoot, rel)
		if err != nil {
			return nil, fail(err)
		}
		format := bk.NormalizedFormat()
		if format == imagebuilder.FormatDetect {
			if format, err = b.eng.Detect(p); err != nil {
				return nil, fail(err)
			}
			b.log.Info("backup format detected", "backup", rel, "format", format)
		}
		files = append(files, engine.BackupFile{Path: p, Format: format, Size: size})
	}
	return files, nil
}

// resolve returns the path on this machine of rel under root (rootPath), with its size (the
// sum of the regular files' sizes, for a directory).
func resolve(root *os.Root, rootPath, rel string) (string, int64, error) {
	f, err := root.Open(rel)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	// The kernel knows where the file opened through the root is, links resolved.
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil || !filepath.IsAbs(p) {
		p = filepath.Join(rootPath, filepath.FromSlash(rel))
	}
	if !st.IsDir() {
		return p, st.Size(), nil
	}
	var size int64
	err = fs.WalkDir(root.FS(), rel, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			size += info.Size()
		}
		return nil
	})
	return p, size, err
}

// script runs the script at rel (under the backup root; "" = none) as step, in database db
// ("" = the engine's default), through the engine's RunScript: as an account that cannot
// reach the server's files, programs or accounts, without client commands.
func (b *build) script(ctx context.Context, step, rel, db string) error {
	if rel == "" {
		return nil
	}
	where := "the default database"
	if db != "" {
		where = "database " + db
	}
	field := "preScript"
	if step == StepPostScript {
		field = "postScript"
	}
	return b.do(step, fmt.Sprintf("running %s in %s", rel, where), func() error {
		text, err := b.readScript(rel)
		if err != nil {
			return fmt.Errorf("%s %s: %w", field, rel, err)
		}
		return b.inst.RunScript(ctx, db, engine.Script{Name: field + " " + rel, SQL: text})
	})
}

// readScript reads the script at rel under the backup root, up to engine.MaxScriptSize.
func (b *build) readScript(rel string) ([]byte, error) {
	root, err := b.openBackupRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	text, err := io.ReadAll(io.LimitReader(f, engine.MaxScriptSize+1))
	if err != nil {
		return nil, err
	}
	if len(text) > engine.MaxScriptSize {
		return nil, fmt.Errorf("the script is larger than %s, the most a script may hold", units.FormatBytes(engine.MaxScriptSize))
	}
	return text, nil
}

// lineWriter calls emit with each complete line written to it, without the newline; a line
// longer than maxLogLine is cut there. Safe for concurrent writers.
type lineWriter struct {
	emit    func(string)
	mu      sync.Mutex
	pending []byte
	skip    bool // the line being written was cut: drop it up to its newline
}

// maxLogLine bounds a forwarded line.
const maxLogLine = 16 << 10

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		chunk := rest
		if i >= 0 {
			chunk, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if !w.skip {
			w.pending = append(w.pending, chunk...)
			if len(w.pending) > maxLogLine {
				w.emit(string(w.pending[:maxLogLine]))
				w.pending, w.skip = w.pending[:0], true
			}
		}
		if i >= 0 {
			if !w.skip {
				w.emit(string(bytes.TrimRight(w.pending, "\r")))
			}
			w.pending, w.skip = w.pending[:0], false
		}
	}
	return len(p), nil
}

// flush emits a last line without its newline.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.pending) > 0 && !w.skip {
		w.emit(string(w.pending))
	}
	w.pending, w.skip = w.pending[:0], false
}
