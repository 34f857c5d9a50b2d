package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/internal/units"
	"github.com/dataimage/dataimage/local"
)

// allCommands returns every command of the tree under root, root included.
func allCommands(root *cobra.Command) []*cobra.Command {
	cmds := []*cobra.Command{root}
	for _, c := range root.Commands() {
		cmds = append(cmds, allCommands(c)...)
	}
	return cmds
}

func TestHelpForEveryCommand(t *testing.T) {
	h := newHarness(t)
	root := (&cli{env: h.env}).newRoot()
	root.InitDefaultHelpCmd()
	n := 0
	for _, cmd := range allCommands(root) {
		path := strings.Fields(cmd.CommandPath())[1:]
		ours := cmd.Name() != "help" && cmd.Name() != "completion" && (cmd.Parent() == nil || cmd.Parent().Name() != "completion")
		t.Run(strings.Join(append([]string{"dataimage"}, path...), " "), func(t *testing.T) {
			if code := h.run(append(path, "--help")...); code != 0 {
				t.Fatalf("--help: exit %d, stderr %q", code, h.stderr.String())
			}
			out := h.stdout.String()
			if !strings.Contains(out, "Usage:") || !strings.Contains(out, "dataimage") {
				t.Errorf("--help output has no usage:\n%s", out)
			}
			if len(h.connects) > 0 {
				t.Errorf("--help connected to the daemon")
			}
			if !ours {
				return
			}
			n++
			if cmd.Short == "" || cmd.Long == "" || cmd.Example == "" {
				t.Errorf("%s lacks a description or examples (Short %q, Long %d bytes, Example %d bytes)",
					cmd.CommandPath(), cmd.Short, len(cmd.Long), len(cmd.Example))
			}
			if !strings.Contains(out, cmd.Example) {
				t.Errorf("--help does not show the examples")
			}
			// Every flag has a description.
			cmd.LocalFlags().VisitAll(func(f *pflag.Flag) {
				if f.Usage == "" && !f.Hidden {
					t.Errorf("flag --%s has no description", f.Name)
				}
			})
		})
	}
	if n < 20 {
		t.Errorf("only %d commands checked", n)
	}
	// The daemon flags show on the daemon's help, and nowhere else.
	h.run("daemon", "--help")
	for _, name := range daemonFlagNames {
		if !strings.Contains(h.stdout.String(), "--"+name) {
			t.Errorf("daemon --help lacks --%s", name)
		}
	}
	h.run("image", "list", "--help")
	if strings.Contains(h.stdout.String(), "--pool-size") {
		t.Errorf("image list --help shows the daemon's flags")
	}
	// help COMMAND works too.
	if code := h.run("help", "clone", "create"); code != 0 || !strings.Contains(h.stdout.String(), "--lifetime") {
		t.Errorf("help clone create: exit %d\n%s", code, h.stdout.String())
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "image.yaml")
	if err := os.WriteFile(def, []byte("name: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus" for "dataimage"`},
		{[]string{"image", "bild"}, `unknown command "bild" for "dataimage image"; did you mean build?`},
		{[]string{"clone", "nope"}, `unknown command "nope" for "dataimage clone"`},
		{[]string{"pool", "stats"}, `unknown command "stats" for "dataimage pool"`},
		{[]string{"daemon", "restart"}, `dataimage daemon takes no arguments, got "restart"`},
		{[]string{"image", "list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"image", "list", "extra"}, `dataimage image list takes no arguments, got "extra"`},
		{[]string{"image", "get"}, "dataimage image get needs the image's name"},
		{[]string{"image", "get", "a", "b"}, "dataimage image get takes one image name, got 2 arguments"},
		{[]string{"image", "delete"}, "needs the image's name"},
		{[]string{"image", "build"}, "dataimage image build: --file is required"},
		{[]string{"image", "build", "-f"}, "flag needs an argument: 'f' in -f"},
		{[]string{"image", "build", "-f", def, "extra"}, "takes no arguments"},
		{[]string{"image", "create", "--name", "n"}, "--from-clone is required"},
		{[]string{"image", "create", "--from-clone", "c"}, "--name is required"},
		{[]string{"image", "create", "--from-clone", "c", "--name", "n", "--lifetime", "2d"}, `invalid argument "2d" for "--lifetime" flag`},
		{[]string{"clone", "create"}, "dataimage clone create: --image is required"},
		{[]string{"clone", "create", "--image", "i", "--port", "70000"}, "--port 70000: want 1 to 65535"},
		{[]string{"clone", "create", "--image", "i", "--port", "x"}, `invalid argument "x" for "--port" flag`},
		{[]string{"clone", "create", "--image", "i", "--lifetime", "-1h"}, `invalid argument "-1h" for "--lifetime" flag`},
		{[]string{"clone", "get"}, "needs the clone's name"},
		{[]string{"clone", "delete"}, "needs the clone's name"},
		{[]string{"clone", "stop"}, "needs the clone's name"},
		{[]string{"clone", "start", "a", "b"}, "takes one clone name"},
		{[]string{"clone", "reset"}, "needs the clone's name"},
		{[]string{"clone", "reset", "c", "--to", ""}, "--to is empty"},
		{[]string{"clone", "save"}, "needs the clone's name"},
		{[]string{"clone", "get", ""}, "the clone's name is empty"},
		{[]string{"pool", "check", "--repair=maybe"}, `invalid argument "maybe" for "--repair" flag`},
		{[]string{"pool", "status", "-o", "xml"}, `--output "xml": want table, json or yaml`},
		{[]string{"pool", "status", "--log-format", "logfmt"}, `--log-format "logfmt": want text or json`},
		{[]string{"pool", "status", "--home", ""}, "--home is empty"},
		{[]string{"image", "list", "--pool-size", "lots"}, `invalid argument "lots" for "--pool-size" flag: invalid size "lots"`},
		{[]string{"daemon", "--pool-size", "1Zi"}, `unknown unit "Zi"`},
		{[]string{"daemon", "--volume-size", "-1Gi"}, `invalid argument "-1Gi" for "--volume-size" flag: invalid size "-1Gi": must be positive`},
		{[]string{"daemon", "--image-lifetime", "forever"}, `invalid argument "forever" for "--image-lifetime" flag`},
		{[]string{"daemon", "--reap-interval", "often"}, `invalid argument "often" for "--reap-interval" flag`},
		{[]string{"daemon", "stop", "--timeout", "soon"}, `invalid argument "soon" for "--timeout" flag`},
		{[]string{"image", "push"}, "dataimage image push needs the image's name"},
		{[]string{"image", "push", "x", "--to", "http://bucket"}, `registry URL "http://bucket": want s3://bucket/prefix or file:///dir`},
		{[]string{"image", "pull", "x", "--from", "file:relative"}, "must be absolute"},
		{[]string{"image", "list", "--from", "s3://b"}, "dataimage image list: --from needs --remote"},
		{[]string{"image", "delete", "x", "--endpoint", "https://e"}, "dataimage image delete: --endpoint needs --remote"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			h := newHarness(t)
			code := h.run(tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, h.stderr.String())
			}
			if !strings.HasPrefix(h.stderr.String(), "dataimage: ") || !strings.Contains(h.stderr.String(), tc.want) {
				t.Errorf("stderr %q, want it to start with \"dataimage: \" and contain %q", h.stderr.String(), tc.want)
			}
			if !strings.Contains(h.stderr.String(), "--help'.") {
				t.Errorf("stderr %q does not point to --help", h.stderr.String())
			}
			if h.stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", h.stdout.String())
			}
			if len(h.connects) > 0 {
				t.Errorf("a usage error connected to the daemon")
			}
		})
	}
}

func TestGroupWithoutSubcommandShowsHelp(t *testing.T) {
	h := newHarness(t)
	for _, group := range [][]string{nil, {"image"}, {"clone"}, {"pool"}} {
		if code := h.run(group...); code != 0 || !strings.Contains(h.stdout.String(), "Available Commands:") {
			t.Errorf("dataimage %v: exit %d, stdout:\n%s", group, code, h.stdout.String())
		}
	}
}

func TestVerbsSendRequests(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "defs", "image.yaml")
	defText := []byte("name: sales-2024\nengine: postgres\nversion: \"15\"\nsourceType: empty\n")
	if err := os.MkdirAll(filepath.Dir(def), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(def, defText, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, tc := range []struct {
		args []string
		want call
	}{
		{[]string{"image", "build", "-f", "defs/image.yaml"},
			call{"BuildImage", []any{local.BuildRequest{Definition: defText, DefinitionPath: def, BackupRoot: filepath.Dir(def)}}}},
		{[]string{"image", "build", "--file=" + def, "--backup-root", "backups"},
			call{"BuildImage", []any{local.BuildRequest{Definition: defText, DefinitionPath: def, BackupRoot: filepath.Join(dir, "backups")}}}},
		{[]string{"image", "list"}, call{"Images", nil}},
		{[]string{"images", "ls"}, call{"Images", nil}},
		{[]string{"image", "get", "sales-2024"}, call{"Image", []any{"sales-2024"}}},
		{[]string{"image", "delete", "sales-2024"}, call{"DeleteImage", []any{"sales-2024"}}},
		{[]string{"image", "rm", "old"}, call{"DeleteImage", []any{"old"}}},
		{[]string{"image", "create", "--from-clone", "sales-dev", "--name", "sales-masked"},
			call{"ImageFromClone", []any{local.ImageFromCloneRequest{Name: "sales-masked", Clone: "sales-dev"}}}},
		{[]string{"image", "create", "--from-clone", "sales-dev", "--revision", "masked", "--name", "sales-masked", "--tags", "a,b", "--tags", "c", "--lifetime", "24h"},
			call{"ImageFromClone", []any{local.ImageFromCloneRequest{Name: "sales-masked", Clone: "sales-dev", Revision: "masked", Tags: []string{"a", "b", "c"}, Lifetime: "24h"}}}},
		{[]string{"clone", "create", "--image", "sales-2024"}, call{"CreateClone", []any{local.CloneRequest{Image: "sales-2024"}}}},
		{[]string{"clone", "create", "--image", "sales-2024", "--name", "dev", "--lifetime", "2h", "--port", "55432"},
			call{"CreateClone", []any{local.CloneRequest{Image: "sales-2024", Name: "dev", Lifetime: "2h", Port: 55432}}}},
		{[]string{"clone", "create", "--image=sales-2024", "--lifetime=0"}, call{"CreateClone", []any{local.CloneRequest{Image: "sales-2024", Lifetime: "0"}}}},
		{[]string{"clone", "list"}, call{"Clones", nil}},
		{[]string{"clones", "ls"}, call{"Clones", nil}},
		{[]string{"clone", "get", "dev"}, call{"Clone", []any{"dev"}}},
		{[]string{"clone", "delete", "dev"}, call{"DeleteClone", []any{"dev"}}},
		{[]string{"clone", "stop", "dev"}, call{"StopClone", []any{"dev"}}},
		{[]string{"clone", "start", "dev"}, call{"StartClone", []any{"dev"}}},
		{[]string{"clone", "reset", "dev"}, call{"ResetClone", []any{"dev", ""}}},
		{[]string{"clone", "reset", "dev", "--to", "image"}, call{"ResetClone", []any{"dev", local.ResetToImage}}},
		{[]string{"clone", "reset", "dev", "--to", "rev-2"}, call{"ResetClone", []any{"dev", "rev-2"}}},
		{[]string{"clone", "save", "dev"}, call{"SaveClone", []any{"dev", ""}}},
		{[]string{"clone", "save", "dev", "--revision", "before"}, call{"SaveClone", []any{"dev", "before"}}},
		{[]string{"pool", "status"}, call{"PoolStatus", nil}},
		{[]string{"pool", "check"}, call{"CheckPool", []any{false}}},
		{[]string{"pool", "check", "--repair"}, call{"CheckPool", []any{true}}},
		{[]string{"image", "push", "sales-2024"}, call{"PushImage", []any{local.PushRequest{Image: "sales-2024"}}}},
		{[]string{"image", "push", "sales-2024", "--to", "s3://images/team", "--endpoint", "https://minio:9000", "--path-style", "--region", "eu-1", "--ca-file", "/ca.pem", "--whole"},
			call{"PushImage", []any{local.PushRequest{Image: "sales-2024", Whole: true,
				Remote: local.Remote{URL: "s3://images/team", Endpoint: "https://minio:9000", PathStyle: true, Region: "eu-1", CAFile: "/ca.pem"}}}}},
		{[]string{"image", "pull", "sales-2024", "--from", "file:///mnt/images"}, call{"PullImage", []any{local.PullRequest{Ref: "sales-2024", Remote: local.Remote{URL: "file:///mnt/images"}}}}},
		{[]string{"image", "pull", "sha256:" + strings.Repeat("ab", 32), "--name", "copy"},
			call{"PullImage", []any{local.PullRequest{Ref: "sha256:" + strings.Repeat("ab", 32), Name: "copy"}}}},
		{[]string{"image", "list", "--remote"}, call{"RemoteImages", []any{local.Remote{}}}},
		{[]string{"image", "list", "--remote", "--from", "s3://b"}, call{"RemoteImages", []any{local.Remote{URL: "s3://b"}}}},
		{[]string{"image", "delete", "--remote", "old", "--from", "s3://b/p"}, call{"DeleteRemoteImage", []any{"old", local.Remote{URL: "s3://b/p"}}}},
	} {
		for _, out := range []string{"table", "json", "yaml"} {
			t.Run(strings.Join(tc.args, " ")+" -o "+out, func(t *testing.T) {
				h := newHarness(t)
				h.rec.check = local.CheckReport{OK: true, Summary: "no problems"}
				if code := h.run(append(tc.args, "-o", out)...); code != 0 {
					t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
				}
				if len(h.rec.calls) != 1 || !reflect.DeepEqual(h.rec.calls[0], tc.want) {
					t.Errorf("calls %+v, want [%+v]", h.rec.calls, tc.want)
				}
				if len(h.connects) != 1 || h.connects[0].home != local.DefaultHome || len(h.connects[0].daemonArgs) != 0 {
					t.Errorf("connections %+v, want one to %s with no daemon flags", h.connects, local.DefaultHome)
				}
				switch out {
				case "json":
					var v any
					if err := json.Unmarshal(h.stdout.Bytes(), &v); err != nil && h.stdout.Len() > 0 {
						t.Errorf("-o json output does not parse: %v\n%s", err, h.stdout.String())
					}
				case "table":
					if strings.HasPrefix(strings.TrimSpace(h.stdout.String()), "{") {
						t.Errorf("table output is JSON:\n%s", h.stdout.String())
					}
				}
			})
		}
	}
}

func TestCloneCreatePrintsConnection(t *testing.T) {
	h := newHarness(t)
	if code := h.run("clone", "create", "--image", "sales-2024"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	cl := testClones()[0]
	if h.stdout.String() != cl.Connection+"\n" {
		t.Errorf("stdout %q, want the connection string alone", h.stdout.String())
	}
	if want := "Clone sales-dev of image sales-2024 is running on port 55432 (created in 0.84s).\n"; h.stderr.String() != want {
		t.Errorf("stderr %q, want %q", h.stderr.String(), want)
	}
	if code := h.run("clone", "create", "--image", "sales-2024", "-o", "json"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	var got local.Clone
	if err := json.Unmarshal(h.stdout.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, cl) {
		t.Errorf("-o json gave %+v, want %+v", got, cl)
	}
}

func TestListOutputs(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		args   []string
		golden string
	}{
		{[]string{"image", "list"}, "images.table"},
		{[]string{"image", "list", "-o", "yaml"}, "images.yaml"},
		{[]string{"clone", "list", "--output=json"}, "clones.json"},
		{[]string{"clone", "get", "sales-dev"}, "clone-running.table"},
		{[]string{"pool", "status"}, "pool.table"},
		{[]string{"image", "build", "-f", "testdata/image.json"}, "built.table"}, // any file: the recorder does not parse it
		{[]string{"image", "list", "--remote"}, "remote-images.table"},
		{[]string{"image", "push", "sales-2024"}, "pushed.table"},
		{[]string{"image", "delete", "--remote", "sales-2023"}, "remote-deleted.table"},
	} {
		if code := h.run(tc.args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, h.stderr.String())
		}
		golden(t, tc.golden, h.stdout.Bytes())
	}
}

func TestBuildShowsProgress(t *testing.T) {
	h := newHarness(t)
	for _, te := range buildEvents() {
		h.rec.events = append(h.rec.events, te.e)
	}
	if code := h.run("image", "build", "-f", "testdata/definition.yaml"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	// The harness's clock stands still: no progress lines but the last, one per step.
	for _, want := range []string{"[  0.0s] volume     creating a 32 GiB volume\n", "[  0.0s] restore    1 GiB / 1 GiB  100%\n", "[  0.0s] freeze"} {
		if !strings.Contains(h.stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, h.stderr.String())
		}
	}
	if strings.Contains(h.stderr.String(), "LOG:") {
		t.Errorf("engine log shown without -v")
	}
	if code := h.run("image", "build", "-f", "testdata/definition.yaml", "-v"); code != 0 || !strings.Contains(h.stderr.String(), "| LOG:  redo done") {
		t.Errorf("-v: exit %d, engine log not shown:\n%s", code, h.stderr.String())
	}
	h.tty = true
	if code := h.run("image", "build", "-f", "testdata/definition.yaml"); code != 0 || !strings.Contains(h.stderr.String(), "\rrestore    [") {
		t.Errorf("terminal: exit %d, no bar:\n%q", code, h.stderr.String())
	}
}

func TestDaemonFlagsForwarded(t *testing.T) {
	h := newHarness(t)
	code := h.run("--pool-size", "1.5Gi", "image", "build", "-f", "testdata/definition.yaml", "--backup-root", "/b",
		"--preallocate", "--clone-lifetime=2h", "--reap-interval", "1m", "--listen-address", "0.0.0.0",
		"--image-lifetime", "0", "--volume-size", "8Gi", "--home", "/srv/di", "--max-archive-members", "5000")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	want := []string{"--pool-size=1536Mi", "--preallocate=true", "--volume-size=8Gi", "--listen-address=0.0.0.0",
		"--image-lifetime=0", "--clone-lifetime=2h", "--reap-interval=1m0s", "--max-archive-members=5000"}
	if len(h.connects) != 1 || h.connects[0].home != "/srv/di" || !reflect.DeepEqual(h.connects[0].daemonArgs, want) {
		t.Errorf("connections %+v, want one to /srv/di with daemon flags %q", h.connects, want)
	}
	if req := h.rec.calls[0].args[0].(local.BuildRequest); req.BackupRoot != "/b" {
		t.Errorf("build's backup root %q, want /b (the build's flag, not the daemon's)", req.BackupRoot)
	}
	// The daemon's --backup-root is forwarded from other commands.
	h.run("clone", "list", "--backup-root", "/backups")
	if want := []string{"--backup-root=/backups"}; len(h.connects) != 1 || !reflect.DeepEqual(h.connects[0].daemonArgs, want) {
		t.Errorf("connections %+v, want daemon flags %q", h.connects, want)
	}
}

func TestHome(t *testing.T) {
	h := newHarness(t)
	t.Chdir(t.TempDir())
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	h.env.getenv = func(k string) string {
		if k == homeEnv {
			return "/from/env"
		}
		return ""
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pool", "status"}, "/from/env"},
		{[]string{"pool", "status", "--home", "/from/flag"}, "/from/flag"},
		{[]string{"--home=rel/home", "pool", "status"}, filepath.Join(wd, "rel/home")},
	} {
		if code := h.run(tc.args...); code != 0 || len(h.connects) != 1 || h.connects[0].home != tc.want {
			t.Errorf("%v: exit %d, connections %+v, want home %s", tc.args, code, h.connects, tc.want)
		}
	}
}

func TestServiceErrors(t *testing.T) {
	h := newHarness(t)
	h.rec.err = &local.Error{Kind: local.ErrNotFound, Message: `clone "dev" not found`}
	for _, args := range [][]string{{"clone", "get", "dev"}, {"clone", "reset", "dev"}, {"clone", "delete", "dev"}, {"image", "list"}, {"pool", "check"}} {
		code := h.run(args...)
		if code != exitError || !strings.HasPrefix(h.stderr.String(), "dataimage: ") || !strings.HasSuffix(h.stderr.String(), "clone \"dev\" not found\n") {
			t.Errorf("%v: exit %d, stderr %q; want 1 and the daemon's message after \"dataimage: \"", args, code, h.stderr.String())
		}
		if strings.Contains(h.stderr.String(), "--help") {
			t.Errorf("%v: a failure is not a usage error, yet stderr points to --help: %q", args, h.stderr.String())
		}
	}
	// A message that does not name the object gets what the command was doing.
	h.rec.err = &local.Error{Kind: local.ErrInvalid, Message: "tags[0]: must not be empty"}
	if code := h.run("image", "create", "--from-clone", "dev", "--name", "dev-img", "--tags", ","); code != exitError ||
		h.stderr.String() != "dataimage: create image dev-img from clone dev: tags[0]: must not be empty\n" {
		t.Errorf("exit %d, stderr %q", code, h.stderr.String())
	}
	h.rec.err = &local.Error{Kind: local.ErrHasClones, Message: "image sales-2024 has 1 clone: dev; delete it first"}
	if code := h.run("image", "delete", "sales-2024"); code != exitError || h.stderr.String() != "dataimage: image sales-2024 has 1 clone: dev; delete it first\n" {
		t.Errorf("exit %d, stderr %q", code, h.stderr.String())
	}
	// A definition error names the file already; other build failures get it.
	def, err := filepath.Abs("testdata/definition.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h.rec.err = &local.Error{Kind: local.ErrInvalid, Message: "invalid image definition " + def + ": name: required"}
	if code := h.run("image", "build", "-f", "testdata/definition.yaml"); code != exitError || h.stderr.String() != "dataimage: invalid image definition "+def+": name: required\n" {
		t.Errorf("exit %d, stderr %q", code, h.stderr.String())
	}
	h.rec.err = &local.Error{Kind: local.ErrBuildFailed, Message: "image sales-2024: restore: disk full"}
	if code := h.run("image", "build", "-f", "testdata/definition.yaml"); code != exitError ||
		h.stderr.String() != "dataimage: build image from testdata/definition.yaml: image sales-2024: restore: disk full\n" {
		t.Errorf("exit %d, stderr %q", code, h.stderr.String())
	}
	// Errors that are not the daemon's always say what failed.
	h.rec.err = fmt.Errorf("read response: %w", io.ErrUnexpectedEOF)
	if code := h.run("clone", "stop", "dev"); code != exitError || h.stderr.String() != "dataimage: stop clone dev: read response: unexpected EOF\n" {
		t.Errorf("exit %d, stderr %q", code, h.stderr.String())
	}
	// A daemon that cannot be reached.
	h.env.connect = func(_ context.Context, home string, _ []string) (client, error) {
		return nil, fmt.Errorf("connect to the daemon of %s: %w", home, local.ErrUnavailable)
	}
	if code := h.run("image", "list"); code != exitError || h.stderr.String() != "dataimage: connect to the daemon of /var/lib/dataimage: daemon unavailable\n" {
		t.Errorf("unreachable daemon: exit %d, stderr %q", code, h.stderr.String())
	}
}

func TestPoolCheckExitStatus(t *testing.T) {
	h := newHarness(t)
	h.rec.check = local.CheckReport{OK: true, Summary: "pool is consistent: 1234 blocks in use"}
	if code := h.run("pool", "check"); code != 0 || h.stdout.String() != "pool is consistent: 1234 blocks in use\n" {
		t.Errorf("clean pool: exit %d, stdout %q", code, h.stdout.String())
	}
	h.rec.check = local.CheckReport{Summary: "1 problem", Problems: []string{"block 17: leaked"}}
	if code := h.run("pool", "check"); code != exitError || !strings.Contains(h.stdout.String(), "problem: block 17: leaked") {
		t.Errorf("problems: exit %d, stdout %q", code, h.stdout.String())
	}
	if !strings.Contains(h.stderr.String(), "pool check found problems: 1 problems, 0 repaired") {
		t.Errorf("problems: stderr %q", h.stderr.String())
	}
	h.rec.check = local.CheckReport{OK: true, Summary: "1 problem, repaired", Problems: []string{"block 17: leaked"}, Repaired: []string{"block 17: freed"}}
	if code := h.run("pool", "check", "--repair", "-o", "json"); code != exitError {
		t.Errorf("repaired problems: exit %d, want 1 (problems were found)", code)
	}
	var rep local.CheckReport
	if err := json.Unmarshal(h.stdout.Bytes(), &rep); err != nil || !reflect.DeepEqual(rep, h.rec.check) {
		t.Errorf("-o json report %+v (%v), want %+v", rep, err, h.rec.check)
	}
}

// TestSizeFlags runs the size flags through units.Examples: a size means the same here as to
// every other command (dataimage-csi's --pool-size runs them too).
func TestSizeFlags(t *testing.T) {
	for _, e := range units.Examples {
		for _, flag := range []string{"--pool-size", "--volume-size"} {
			c := &cli{env: newHarness(t).env}
			cmd, rest, err := c.newRoot().Find([]string{"daemon", flag, e.Text})
			if err != nil {
				t.Fatal(err)
			}
			err = cmd.ParseFlags(rest)
			got := c.config()
			n := got.PoolSize
			if flag == "--volume-size" {
				n = got.VolumeSize
			}
			switch {
			case e.Rule == "" && (err != nil || n != e.Bytes):
				t.Errorf("%s %s: %d, %v; want %d", flag, e.Text, n, err, e.Bytes)
			case e.Rule != "" && (err == nil || !strings.Contains(err.Error(), `for "`+flag+`" flag`) || !strings.Contains(err.Error(), e.Rule)):
				t.Errorf("%s %s: %v; want an error naming the flag and saying %q", flag, e.Text, err, e.Rule)
			}
		}
	}
}

func TestPushShowsProgress(t *testing.T) {
	h := newHarness(t)
	if code := h.run("image", "push", "sales-2024"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	for _, want := range []string{"[  0.0s] push       pushing\n", "[  0.0s] push       1 MiB / 1 MiB  100%\n"} {
		if !strings.Contains(h.stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, h.stderr.String())
		}
	}
}

// TestRemoteCredentials: a registry request carries the command's AWS environment (credentials,
// region, endpoint); flags win over it.
func TestRemoteCredentials(t *testing.T) {
	h := newHarness(t)
	vars := map[string]string{"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "tok",
		"AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL_S3": "https://s3.example", "HOME": t.TempDir()}
	h.env.getenv = func(k string) string { return vars[k] }
	if code := h.run("image", "pull", "x", "--region", "us-east-2"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	want := local.Remote{Endpoint: "https://s3.example", Region: "us-east-2",
		Credentials: remote.Credentials{AccessKeyID: "AKID", SecretAccessKey: "secret", SessionToken: "tok"}}
	if got := h.rec.calls[0].args[0].(local.PullRequest).Remote; !reflect.DeepEqual(got, want) {
		t.Errorf("remote %+v, want %+v", got, want)
	}
	vars["AWS_PROFILE"] = "nowhere"
	delete(vars, "AWS_ACCESS_KEY_ID")
	delete(vars, "AWS_SECRET_ACCESS_KEY")
	if code := h.run("image", "pull", "x"); code != exitError || !strings.Contains(h.stderr.String(), "AWS profile nowhere") {
		t.Errorf("a broken AWS profile: exit %d, %q", code, h.stderr.String())
	}
	if len(h.connects) != 0 {
		t.Errorf("a broken AWS profile connected to the daemon")
	}
}

func TestDaemonConfig(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		args []string
		want local.Config
	}{
		{nil, local.Config{Home: local.DefaultHome, ListenAddress: local.DefaultListenAddress, ReapInterval: local.DefaultReapInterval,
			DataPlane: local.DataPlaneCommand{Args: []string{"dataplane", "--home", local.DefaultHome, "--log-format", "text", "--preallocate=false"}}}},
		{[]string{"--home", "/srv/di", "--pool-size", "200Gi", "--preallocate", "--volume-size", "1T", "--listen-address", "0.0.0.0",
			"--backup-root", "/backups", "--image-lifetime", "72h", "--clone-lifetime", "8h", "--reap-interval", "5s", "--max-archive-members", "-1"},
			local.Config{Home: "/srv/di", PoolSize: 200 << 30, Preallocate: true, VolumeSize: 1e12, ListenAddress: "0.0.0.0",
				BackupRoot: "/backups", DefaultImageLifetime: "72h", DefaultCloneLifetime: "8h", ReapInterval: 5 * time.Second, MaxArchiveMembers: -1,
				// The daemon starts the data plane with the pool's flags.
				DataPlane: local.DataPlaneCommand{Args: []string{"dataplane", "--home", "/srv/di", "--log-format", "text", "--preallocate=true", "--pool-size=200Gi"}}}},
		{[]string{"--remote", "s3://images/team", "--remote-endpoint", "http://127.0.0.1:8333", "--remote-region", "r1", "--remote-ca-file", "/ca.pem", "--remote-path-style"},
			local.Config{Home: local.DefaultHome, ListenAddress: local.DefaultListenAddress, ReapInterval: local.DefaultReapInterval,
				Remote:    local.Remote{URL: "s3://images/team", Endpoint: "http://127.0.0.1:8333", Region: "r1", CAFile: "/ca.pem", PathStyle: true},
				DataPlane: local.DataPlaneCommand{Args: []string{"dataplane", "--home", local.DefaultHome, "--log-format", "text", "--preallocate=false"}}}},
	} {
		c := &cli{env: h.env}
		root := c.newRoot()
		cmd, rest, err := root.Find(append([]string{"daemon"}, tc.args...))
		if err != nil || cmd.Name() != "daemon" {
			t.Fatalf("find daemon: %v, %v", cmd, err)
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if err := c.checkGlobals(cmd, nil); err != nil {
			t.Fatal(err)
		}
		got, err := c.daemonConfig()
		if err != nil {
			t.Fatal(err)
		}
		if got.Logger == nil {
			t.Errorf("%v: no logger", tc.args)
		}
		got.Logger = nil
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v: config\n%+v, want\n%+v", tc.args, got, tc.want)
		}
	}
}
