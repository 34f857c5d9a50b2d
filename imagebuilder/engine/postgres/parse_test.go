package postgres

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

func TestParseVersion(t *testing.T) {
	for out, want := range map[string]string{
		"postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n": "15.18",
		"postgres (PostgreSQL) 16.4\n":                           "16.4",
		"postgres (PostgreSQL) 17beta1":                          "17beta1",
	} {
		got, err := parseVersion(out)
		require.NoError(t, err, out)
		require.Equal(t, want, got)
	}
	for _, out := range []string{"", "mysqld Ver 8.0", "postgres (PostgreSQL) \n", "postgres (PostgreSQL) devel"} {
		_, err := parseVersion(out)
		require.Error(t, err, out)
	}
	require.True(t, newer("15.10", "15.9"))
	require.True(t, newer("16.0", "15.18"))
	require.False(t, newer("15.9", "15.10"))
	require.True(t, newer("15.1.1", "15.1"))
	require.Equal(t, "15", majorVersion("15.18"))
	require.Equal(t, "9.6", majorVersion("9.6.24"))
	require.Equal(t, "17beta1", majorVersion("17beta1"))
}

func TestParsePGTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
		note string
	}{
		{"2024-06-01 12:00:00 UTC", time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC), ""},
		{"2024-06-01 12:00:00 GMT", time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC), ""},
		{"2024-06-01 12:00:00 +03", time.Date(2024, 6, 1, 9, 0, 0, 0, time.UTC), ""},
		{"2024-06-01 12:00:00 -0530", time.Date(2024, 6, 1, 17, 30, 0, 0, time.UTC), ""},
		{"2024-06-01 12:00:00 CEST", time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC), "time zone CEST taken as UTC"},
		{"2024-06-01 12:00:00", time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC), "no time zone: taken as UTC"},
	} {
		got, note, err := parsePGTime(tc.in)
		require.NoError(t, err, tc.in)
		require.True(t, tc.want.Equal(got), "%s: got %v, want %v", tc.in, got, tc.want)
		require.Equal(t, tc.note, note, tc.in)
	}
	for _, in := range []string{"", "yesterday", "2024-13-01 00:00:00 UTC"} {
		_, _, err := parsePGTime(in)
		require.Error(t, err, in)
	}
}

func TestBackupLabelState(t *testing.T) {
	dir := t.TempDir()
	label := filepath.Join(dir, "backup_label")
	require.NoError(t, os.WriteFile(label, []byte("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-21 04:29:42 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\n"), 0o600))
	state, err := backupLabelState(label)
	require.NoError(t, err)
	require.Equal(t, engine.DataState{Time: time.Date(2026, 11, 21, 4, 29, 42, 0, time.UTC), Source: "backup_label START TIME"}, state)

	require.NoError(t, os.WriteFile(label, []byte("START TIME: 2026-11-21 04:29:42 EST\n"), 0o600))
	state, err = backupLabelState(label)
	require.NoError(t, err)
	require.Equal(t, "backup_label START TIME (time zone EST taken as UTC)", state.Source)

	require.NoError(t, os.WriteFile(label, []byte("LABEL: x\n"), 0o600))
	state, err = backupLabelState(label)
	require.NoError(t, err)
	require.True(t, state.Time.IsZero())
	require.Equal(t, "backup_label has no START TIME", state.Source)
}

func TestArchiveAndStartedOnState(t *testing.T) {
	state := archiveState(";\n; Archive created at 2026-11-21 04:28:35 UTC\n;     dbname: app\n")
	require.Equal(t, time.Date(2026, 11, 21, 4, 28, 35, 0, time.UTC), state.Time)
	require.Contains(t, state.Source, "pg_dump archive header")
	require.True(t, archiveState(";\n").Time.IsZero())

	state = startedOnState("--\n-- PostgreSQL database dump\n--\n\n-- Started on 2026-11-21 04:28:35 UTC\n\nSET x = 1;\n")
	require.Equal(t, engine.DataState{Time: time.Date(2026, 11, 21, 4, 28, 35, 0, time.UTC), Source: `dump's "-- Started on" comment`}, state)
	state = startedOnState("--\n-- PostgreSQL database dump\n--\nSET x = 1;\n")
	require.True(t, state.Time.IsZero())
	require.Contains(t, state.Source, "no creation time recorded")
}

func TestLineRoles(t *testing.T) {
	for line, want := range map[string][]string{
		"ALTER TABLE public.t OWNER TO alice;":                                                   {"alice"},
		`ALTER SCHEMA "My Schema" OWNER TO "Mixed ""Case"" Role";`:                               {`Mixed "Case" Role`},
		"ALTER FUNCTION public.f(a integer, b text) OWNER TO Bob;":                               {"bob"},
		"GRANT SELECT ON TABLE public.t TO bob;":                                                 {"bob"},
		"GRANT SELECT,INSERT ON TABLE public.t TO bob WITH GRANT OPTION;":                        {"bob"},
		`GRANT ALL ON TABLE public."odd TO name" TO carol, PUBLIC, "dave";`:                      {"carol", "dave"},
		"GRANT USAGE ON SCHEMA s TO erin GRANTED BY frank;":                                      {"erin", "frank"},
		"REVOKE ALL ON SCHEMA public FROM PUBLIC;":                                               nil,
		"REVOKE ALL ON TABLE public.t FROM gina CASCADE;":                                        {"gina"},
		"GRANT alice TO bob;":                                                                    {"alice", "bob"},
		"REVOKE ADMIN OPTION FOR alice FROM bob;":                                                {"alice", "bob"},
		"ALTER DEFAULT PRIVILEGES FOR ROLE hank IN SCHEMA public GRANT SELECT ON TABLES TO ivy;": {"hank", "ivy"},
		"ALTER DEFAULT PRIVILEGES FOR ROLE hank REVOKE ALL ON FUNCTIONS FROM PUBLIC;":            {"hank"},
		"SET SESSION AUTHORIZATION 'jack';":                                                      {"jack"},
		"SET SESSION AUTHORIZATION DEFAULT;":                                                     nil,
		"RESET SESSION AUTHORIZATION;":                                                           nil,
		"SET ROLE kim;":                                                                          {"kim"},
		"CREATE POLICY p ON public.t FOR SELECT TO leo, mia USING ((owner = CURRENT_USER));":     {"leo", "mia"},
		"CREATE POLICY p ON public.t USING (true);":                                              nil,
		"CREATE USER MAPPING FOR ned SERVER s OPTIONS (user 'x');":                               {"ned"},
		"CREATE USER MAPPING FOR PUBLIC SERVER s;":                                               nil,
		"GRANT SELECT ON TABLE t TO CURRENT_USER;":                                               nil,
		"CREATE TABLE public.t (owner text);":                                                    nil,
		"-- ALTER TABLE t OWNER TO commented;":                                                   nil,
		"ALTER TABLE t OWNER TO oscar; -- OWNER TO comment":                                      {"oscar"},
		"    GRANT SELECT ON t TO indented_in_a_function_body;":                                  nil,
		`GRANT SELECT ON t TO ' || quote_ident(r) || ';`:                                         nil,
	} {
		require.Equal(t, want, lineRoles(line), line)
	}
}

func TestScanRoles(t *testing.T) {
	dump := strings.Join([]string{
		"--",
		"-- PostgreSQL database dump",
		"--",
		"CREATE TABLE public.t (i int, s text);",
		"ALTER TABLE public.t OWNER TO alice;",
		"COPY public.t (i, s) FROM stdin;",
		"1\tGRANT SELECT ON TABLE x TO in_copy_data;",
		"2\t" + strings.Repeat("long ", 30000),
		`\.`,
		"GRANT SELECT ON TABLE public.t TO bob;",
		"ALTER TABLE public.u OWNER TO alice;",
		"GRANT SELECT ON TABLE public.t TO " + strings.Repeat("z", 70000) + ";", // longer than a scanned line
		"ALTER TABLE public.v OWNER TO carol;",
	}, "\n") + "\n"
	roles, err := scanRoles(strings.NewReader(dump))
	require.NoError(t, err)
	require.Equal(t, []string{"alice", "bob", "carol"}, roles)
}

func TestGlobalsFilter(t *testing.T) {
	in := strings.Join([]string{
		"SET standard_conforming_strings = on;",
		"DROP ROLE IF EXISTS alice;",
		"DROP ROLE IF EXISTS postgres;",
		"DROP ROLE postgres;",
		"CREATE ROLE alice;",
		"ALTER ROLE alice WITH LOGIN;",
		"CREATE ROLE bob;",
		`CREATE ROLE "Postgres";`,
		"CREATE ROLE postgres;",
		"ALTER ROLE postgres WITH SUPERUSER;",
		`\connect template1`,
		"CREATE ROLE postgres;",
		"DROP ROLE postgres;",
	}, "\n") + "\n"
	out, err := io.ReadAll(newGlobalsFilter(strings.NewReader(in), map[string]bool{"postgres": true, "alice": true, "bob": true}))
	require.NoError(t, err)
	require.Equal(t, strings.Join([]string{
		"SET standard_conforming_strings = on;",
		"DROP ROLE IF EXISTS alice;",
		"-- dataimage: skipped, the administrative role cannot be dropped: DROP ROLE IF EXISTS postgres;",
		"-- dataimage: skipped, the administrative role cannot be dropped: DROP ROLE postgres;",
		"CREATE ROLE alice;", // dropped just before: made again
		"ALTER ROLE alice WITH LOGIN;",
		"-- dataimage: skipped, the role exists already: CREATE ROLE bob;",
		`CREATE ROLE "Postgres";`,
		"-- dataimage: skipped, the role exists already: CREATE ROLE postgres;",
		"ALTER ROLE postgres WITH SUPERUSER;",
		`\connect template1`,
		"CREATE ROLE postgres;", // past the globals: as is
		"DROP ROLE postgres;",
	}, "\n")+"\n", string(out))

	// A last line without a newline, read in small pieces.
	out, err = io.ReadAll(io.LimitReader(newGlobalsFilter(strings.NewReader("CREATE ROLE postgres;\nSELECT 1;"), map[string]bool{"postgres": true}), 1<<20))
	require.NoError(t, err)
	require.Equal(t, "-- dataimage: skipped, the role exists already: CREATE ROLE postgres;\nSELECT 1;", string(out))
}

func TestDropSettings(t *testing.T) {
	u, err := engine.ResolveUser("", "postgres")
	if err != nil {
		u, err = engine.ResolveUser("", "root")
	}
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "postgresql.auto.conf")
	require.NoError(t, dropSettings(p, standbySettings, u), "a missing file")
	conf := "# Do not edit this file manually!\nwork_mem = '8MB'\nprimary_conninfo = 'user=replicator password=secret host=prod'\n  PRIMARY_SLOT_NAME='slot'\nprimary_conninfo_extra = 1\n"
	require.NoError(t, os.WriteFile(p, []byte(conf), 0o600))
	require.NoError(t, dropSettings(p, standbySettings, u))
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, "# Do not edit this file manually!\nwork_mem = '8MB'\nprimary_conninfo_extra = 1\n", string(got))
}

// tarBytes returns a tar archive of the named members (directories end with "/"), gzip-compressed
// when gz is set.
func tarBytes(t *testing.T, gz bool, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: n, Mode: 0o600, Typeflag: tar.TypeReg, Size: 3}
		if strings.HasSuffix(n, "/") {
			hdr = &tar.Header{Name: n, Mode: 0o700, Typeflag: tar.TypeDir}
		}
		require.NoError(t, tw.WriteHeader(hdr))
		if hdr.Typeflag == tar.TypeReg {
			_, err := tw.Write([]byte("abc"))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	if !gz {
		return buf.Bytes()
	}
	return gzipBytes(t, buf.Bytes())
}

func zstdBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	zw, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	defer zw.Close()
	return zw.EncodeAll(b, nil)
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	_, err := zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return out.Bytes()
}

// walHead returns the start of a WAL segment: the long header of its first page (PostgreSQL 15's
// magic, 16 MiB segments, 8 KiB pages).
func walHead() []byte {
	b := make([]byte, 8192)
	copy(b, []byte{0x10, 0xd1, 0x02, 0x00, 0x01, 0, 0, 0})
	copy(b[32:], []byte{0, 0, 0, 1, 0, 0x20, 0, 0})
	return b
}

func TestDetect(t *testing.T) {
	e := &pgEngine{version: "15.18", runAs: "postgres"}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
		return p
	}
	bbDir := filepath.Dir(write("bb/base.tar", tarBytes(t, false, "backup_label")))
	write("bb2/base.tar.gz", tarBytes(t, true, "backup_label"))
	write("bb2/pg_wal.tar.gz", tarBytes(t, true, "000000010000000000000002"))
	bb2Dir := filepath.Dir(write("bb2/backup_manifest", []byte("{}")))
	ok := map[string]imagebuilder.BackupFormat{
		write("custom", []byte("PGDMP\x01\x0e\x00\x04\x08\x01\x01")):                                     imagebuilder.FormatPgDumpCustom,
		write("dump.sql", []byte("--\n-- PostgreSQL database dump\n--\n\nSET x = 1;\n")):                 imagebuilder.FormatSQL,
		write("all.sql", []byte("--\n-- PostgreSQL database cluster dump\n--\n\nSET x = 1;\n")):          imagebuilder.FormatPgDumpAll,
		write("all.sql.gz", gzipBytes(t, []byte("--\n-- PostgreSQL database cluster dump\n--\n"))):       imagebuilder.FormatPgDumpAll,
		write("all.sql.zst", zstdBytes(t, []byte("--\n-- PostgreSQL database cluster dump\n--\n"))):      imagebuilder.FormatPgDumpAll,
		write("base3.tar.zst", zstdBytes(t, tarBytes(t, false, "backup_label", "PG_VERSION"))):           imagebuilder.FormatBaseBackupTar,
		write("script.sql", []byte("\uFEFFCREATE TABLE t (s text);\nINSERT INTO t VALUES ('héllo');\n")): imagebuilder.FormatSQL,
		write("base.tar", tarBytes(t, false, "backup_label", "tablespace_map", "PG_VERSION", "global/")): imagebuilder.FormatBaseBackupTar,
		write("base2.tar.gz", tarBytes(t, true, "./pg_stat/", "./global/", "./global/1262")):             imagebuilder.FormatBaseBackupTar,
		write("wal.tar", tarBytes(t, false, "000000010000000000000002")):                                 imagebuilder.FormatBaseBackupTar,
		write("wal2.tar", tarBytes(t, false, "archive_status/", "000000010000000000000003.partial")):     imagebuilder.FormatBaseBackupTar,
		write("wal3.tar.gz", tarBytes(t, true, "00000002.history", "000000020000000000000003")):          imagebuilder.FormatBaseBackupTar,
		write("16385.tar", tarBytes(t, false, "PG_15_202209061/", "PG_15_202209061/16384/")):             imagebuilder.FormatBaseBackupTar,
		write("dump.tar", tarBytes(t, false, "toc.dat", "3338.dat", "restore.sql")):                      imagebuilder.FormatPgDumpTar,
		filepath.Dir(write("dirdump/toc.dat", []byte("PGDMP"))):                                          imagebuilder.FormatPgDumpDir,
		write("000000010000000000000003", walHead()):                                                     imagebuilder.FormatWAL,
		filepath.Dir(write("waldir/000000010000000000000004", walHead())):                                imagebuilder.FormatWAL,
		bbDir:  imagebuilder.FormatBaseBackupTar,
		bb2Dir: imagebuilder.FormatBaseBackupTar,
	}
	for p, want := range ok {
		got, err := e.Detect(p)
		require.NoError(t, err, p)
		require.Equal(t, want, got, p)
	}

	for _, tc := range []struct {
		path        string
		unsupported bool
		msg         string
	}{
		{write("empty", nil), false, "is empty"},
		{write("blank.sql", []byte("  \n\n")), false, "holds only white space"},
		{write("binary", []byte{0, 1, 2, 3, 0xff}), false, "binary data of no known backup format (first bytes: 00 01 02 03 ff)"},
		{write("zstd.tar.zst", []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}), false, "zstd.tar.zst is an empty or truncated zstd stream"},
		{write("lz4.tar.lz4", []byte{0x04, 0x22, 0x4d, 0x18, 0, 0}), false, "lz4.tar.lz4 is an empty or truncated lz4 stream"},
		{write("bz2", []byte("BZh91AY&SY")), true, "is bzip2-compressed"},
		{write("walseg", append([]byte{0x10, 0xd1, 0x02, 0}, make([]byte, 60)...)), false, "binary data of no known backup format"},
		{write("mysql.sql", []byte("-- MySQL dump 10.13  Distrib 8.0.36\n")), false, "is a MySQL or MariaDB dump"},
		{write("bad.gz", []byte{0x1f, 0x8b, 0x08, 0, 0}), false, "gzip"},
		{write("other.tar", tarBytes(t, false, "README", "src/main.go")), false, `other.tar is a tar archive of neither a base backup, WAL nor a pg_dump (first members: "README", "src/main.go")`},
		{filepath.Dir(write("nobase/base.tar", tarBytes(t, false, "000000010000000000000002"))), false, "no base backup among"},
		{filepath.Dir(write("otherdir/README", []byte("hello"))), false, "holds no base.tar[.gz|.lz4|.zst] of pg_basebackup --format=tar (found: README)"},
		{filepath.Dir(write("xzbb/base.tar.xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00})), true, "base.tar.xz in " + filepath.Join(dir, "xzbb") + " is compressed with a method pg_basebackup does not write"},
		{filepath.Dir(write("tsonly/16385.tar", tarBytes(t, false, "PG_15_202209061/"))), false, "holds no base.tar"},
		{filepath.Dir(write("badwal/000000010000000000000002", []byte("not WAL"))), false, "000000010000000000000002 is named like a WAL segment but is not one"},
	} {
		_, err := e.Detect(tc.path)
		require.Error(t, err, tc.path)
		require.ErrorContains(t, err, tc.msg, tc.path)
		require.ErrorIs(t, err, engine.ErrFormat, tc.path)
		if tc.unsupported {
			require.ErrorIs(t, err, ErrUnsupported, tc.path)
		}
	}
}

func FuzzLineRoles(f *testing.F) {
	for _, s := range []string{
		"ALTER TABLE public.t OWNER TO alice;",
		`GRANT ALL ON TABLE public."odd TO name" TO carol, PUBLIC, "dave";`,
		"ALTER DEFAULT PRIVILEGES FOR ROLE hank IN SCHEMA public GRANT SELECT ON TABLES TO ivy;",
		"CREATE POLICY p ON public.t FOR SELECT TO leo, mia USING ((owner = CURRENT_USER));",
		`SET SESSION AUTHORIZATION 'jack';`,
		"REVOKE ADMIN OPTION FOR alice FROM bob;",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		for _, r := range lineRoles(line) {
			if r == "" {
				t.Fatalf("empty role name from %q", line)
			}
		}
		_, err := scanRoles(strings.NewReader(line))
		if err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzParsePGTime(f *testing.F) {
	for _, s := range []string{"2024-06-01 12:00:00 UTC", "2024-06-01 12:00:00 +05:30", "2024-06-01 12:00:00 CEST", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, _, err := parsePGTime(s)
		if err == nil && got.IsZero() {
			t.Fatalf("%q parsed to the zero time without an error", s)
		}
	})
}

func FuzzGlobalsFilter(f *testing.F) {
	f.Add("CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\n\\connect app\nCREATE ROLE postgres;\n")
	f.Add("DROP ROLE IF EXISTS \"x\"\"y\";\nCREATE ROLE \"x\"\"y\";\n")
	f.Fuzz(func(t *testing.T, in string) {
		out, err := io.ReadAll(newGlobalsFilter(strings.NewReader(in), map[string]bool{"postgres": true, `x"y`: true}))
		if err != nil {
			t.Fatal(err)
		}
		// Lines are kept or commented out, never dropped or changed otherwise.
		inLines, outLines := strings.Split(in, "\n"), strings.Split(string(out), "\n")
		if len(inLines) != len(outLines) {
			t.Fatalf("%d lines in, %d out", len(inLines), len(outLines))
		}
		for i := range inLines {
			if inLines[i] != outLines[i] && !strings.HasSuffix(outLines[i], ": "+strings.TrimRight(inLines[i], "\r")) {
				t.Fatalf("line %d changed: %q -> %q", i+1, inLines[i], outLines[i])
			}
		}
	})
}

func FuzzTablespaceMap(f *testing.F) {
	f.Add("16384 /srv/ts1\n16385 /srv/with space\n")
	f.Add("x y\n")
	f.Fuzz(func(t *testing.T, text string) {
		p := filepath.Join(t.TempDir(), "tablespace_map")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := readTablespaceMap(p)
		if err != nil {
			return
		}
		for oid := range m {
			if _, err := strconv.ParseUint(oid, 10, 32); err != nil {
				t.Fatalf("oid %q accepted", oid)
			}
		}
	})
}

func FuzzWALNames(f *testing.F) {
	f.Add("000000010000000000000009", uint64(16<<20), "0/9013468")
	f.Add("0000000100000000000000FF", uint64(16<<20), "1/FF000000")
	f.Fuzz(func(t *testing.T, name string, segSize uint64, lsn string) {
		if segSize < 1<<20 || segSize > 1<<30 || segSize&(segSize-1) != 0 {
			return
		}
		next := nextSegment(name, segSize)
		if next != "" && (len(next) != 24 || next <= name && name[:8] == next[:8]) {
			t.Fatalf("next of %q is %q", name, next)
		}
		if v, err := parseLSN(lsn); err == nil {
			seg := segmentName(1, v, segSize)
			if len(seg) != 24 {
				t.Fatalf("segment of %q: %q", lsn, seg)
			}
		}
	})
}

func TestWALNames(t *testing.T) {
	require.Equal(t, "00000001000000010000000A", segmentName(1, 0x10A000000, 16<<20))
	require.Equal(t, "000000010000000100000000", nextSegment("0000000100000000000000FF", 16<<20))
	require.Equal(t, "00000002000000000000000A", nextSegment("000000020000000000000009", 16<<20))
	require.Equal(t, "", nextSegment("00000001000000000000000", 16<<20))
	lsn, err := parseLSN("16/B374D848")
	require.NoError(t, err)
	require.Equal(t, uint64(0x16B374D848), lsn)
	require.True(t, isWALSegment(walHead()))
	require.False(t, isWALSegment(walHead()[:39]))
}
