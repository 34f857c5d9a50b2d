package mariadb

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dataimage/dataimage/imagebuilder"
	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// Real --version outputs of packaged servers.
func TestParseVersion(t *testing.T) {
	tests := []struct {
		out     string
		kind    imagebuilder.Engine
		version string
	}{
		{"mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n", imagebuilder.EngineMariaDB, "10.11.19"},
		{"/usr/sbin/mariadbd  Ver 11.4.2-MariaDB-ubu2404 for debian-linux-gnu on x86_64 (mariadb.org binary distribution)\n", imagebuilder.EngineMariaDB, "11.4.2"},
		{"/usr/sbin/mysqld  Ver 10.3.39-MariaDB-0+deb10u1 for debian-linux-gnu on x86_64 (Debian 10)\n", imagebuilder.EngineMariaDB, "10.3.39"},
		{"/usr/libexec/mysqld  Ver 5.5.68-MariaDB for Linux on x86_64 (MariaDB Server)\n", imagebuilder.EngineMariaDB, "5.5.68"},
		{"/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)\n", imagebuilder.EngineMySQL, "8.0.36"},
		{"/usr/sbin/mysqld  Ver 8.0.36-0ubuntu0.22.04.1 for Linux on x86_64 ((Ubuntu))\n", imagebuilder.EngineMySQL, "8.0.36"},
		{"/usr/sbin/mysqld  Ver 8.4.0 for Linux on x86_64 (MySQL Community Server - GPL)\n", imagebuilder.EngineMySQL, "8.4.0"},
		{"/usr/sbin/mysqld  Ver 5.7.44 for Linux on x86_64 (MySQL Community Server (GPL))\n", imagebuilder.EngineMySQL, "5.7.44"},
		{"/usr/sbin/mysqld  Ver 8.0.35-27 for Linux on x86_64 (Percona Server (GPL), Release '27', Revision '2f8eeab2'$)\n", imagebuilder.EngineMySQL, "8.0.35"},
		// The binary's path says nothing about what it is.
		{"/opt/mariadb-tools/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)\n", imagebuilder.EngineMySQL, "8.0.36"},
		{"2024-01-01 [Warning] something\nmariadbd  Ver 10.6.18-MariaDB for Linux\n", imagebuilder.EngineMariaDB, "10.6.18"},
	}
	for _, tt := range tests {
		kind, version, err := parseVersion(tt.out)
		if err != nil || kind != tt.kind || version != tt.version {
			t.Errorf("parseVersion(%q) = %q, %q, %v; want %q, %q", tt.out, kind, version, err, tt.kind, tt.version)
		}
	}
	for _, out := range []string{"", "mysqld: unknown option '--no-defaults'", "Ver x.y", "mysqld  Ver 10 for Linux"} {
		if kind, version, err := parseVersion(out); err == nil {
			t.Errorf("parseVersion(%q) = %q, %q; want an error", out, kind, version)
		}
	}
}

func TestClassify(t *testing.T) {
	sql := []string{
		sandboxLine + " \n-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n",
		"\xef\xbb\xbfSET NAMES utf8mb4;",
		"/*M!100100 SET @x = 1 */;",
		"  \n\t-- \n--\nDROP TABLE IF EXISTS t;",
		"/* header */ INSERT INTO t VALUES (1)",
		"use shop;",
		"-- MySQL dump 10.13\n\x00\x01 binary data in the rows is fine",
		"CREATE TABLE t (b BLOB);\nINSERT INTO t VALUES ('\x00\xff');",
	}
	for _, s := range sql {
		if what, ok := classify([]byte(s)); !ok {
			t.Errorf("classify(%q) = %q, want sql", s, what)
		}
	}
	notSQL := map[string]string{
		"":                                  "an empty file",
		"PGDMP\x01\x0e":                     "PostgreSQL custom-format",
		"\x1f\x8b\x08\x00":                  "a gzip stream",
		"\x28\xb5\x2f\xfd\x00":              "zstd",
		"BZh91AY&SY":                        "bzip2",
		"PK\x03\x04":                        "zip",
		"--x\nSELECT 1":                     `"--x"`,
		"-- only a comment":                 "only comments",
		"/* unterminated":                   "only comments",
		"\x01\x02\x03":                      "binary data (starting 01 02 03)",
		"-- comment\n\x00\x01":              "binary data",
		"-- bad \xff comment\nSELECT 1":     "binary data",
		"été 2024":                          `"été 2024"`,
		"hello world, this is not SQL":      `"hello world, this is not SQL"`,
		"--\n-- PostgreSQL database dump\n": "PostgreSQL dump",
		"--\n-- PostgreSQL database dump\n\nSET statement_timeout = 0;": "PostgreSQL dump",
		"{\"json\": true}":       "not start with an SQL statement",
		strings.Repeat("x", 100): `xxx..."`,
	}
	for s, want := range notSQL {
		what, ok := classify([]byte(s))
		if ok || !strings.Contains(what, want) {
			t.Errorf("classify(%q) = %q, %v; want not sql, %q", s, what, ok, want)
		}
	}
	tar := make([]byte, 512)
	copy(tar, "base/file")
	copy(tar[257:], "ustar\x0000")
	if what, ok := classify(tar); ok || what != "a tar archive" {
		t.Errorf("classify(tar header) = %q, %v", what, ok)
	}
}

func TestScanDatabases(t *testing.T) {
	tests := []struct {
		head string
		own  bool
		db   string
	}{
		{"-- MariaDB dump\n/*!40101 SET NAMES utf8mb4 */;\nDROP TABLE IF EXISTS `t`;\nCREATE TABLE `t` (x int);\nUSE `other`;\n", false, ""},
		{"-- MariaDB dump\n--\n-- Current Database: `shop`\n--\n\nCREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n\nUSE `shop`;\n", true, "shop"},
		{"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql`;\nUSE `mysql`;\nCREATE TABLE a (x int);\nCREATE DATABASE `app`;\nUSE `app`;\n", true, "app"},
		{"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql`;\nUSE `mysql`;\nCREATE TABLE a (x int);\n", true, ""},
		{"create schema if not exists sales;\n", true, "sales"},
		{"USE `we``ird`;\n", true, "we`ird"},
		{"use plain;\n", true, "plain"},
		{"USER x;\nINSERT INTO t VALUES (1);\n", false, ""},
		{"SET x = 1;\n", false, ""},
		{"", false, ""},
		{"CREATE DATABASE /* unterminated", true, ""},
		{"USE `unterminated", true, ""},
	}
	for _, tt := range tests {
		own, db := scanDatabases([]byte(tt.head))
		if own != tt.own || db != tt.db {
			t.Errorf("scanDatabases(%q) = %v, %q; want %v, %q", tt.head, own, db, tt.own, tt.db)
		}
	}
}

func TestDumpTime(t *testing.T) {
	tests := []struct {
		tail string
		want time.Time
	}{
		{"/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */;\n\n-- Dump completed on 2026-11-21  4:28:49\n", time.Date(2026, 11, 21, 4, 28, 49, 0, time.UTC)},
		{"-- Dump completed on 2024-05-01 12:34:56\n", time.Date(2024, 5, 1, 12, 34, 56, 0, time.UTC)},
		{"-- Dump completed on 2024-05-01 12:34:56\n-- Dump completed on 2024-05-02 00:00:01", time.Date(2024, 5, 2, 0, 0, 1, 0, time.UTC)},
	}
	for _, tt := range tests {
		got, ok := dumpTime([]byte(tt.tail))
		if !ok || !got.Equal(tt.want) {
			t.Errorf("dumpTime(%q) = %v, %v; want %v", tt.tail, got, ok, tt.want)
		}
	}
	for _, tail := range []string{"", "-- Dump completed\n", "-- Dump completed on 2024-13-45 10:00:00\n", "-- Dump completed on 2024-02-30 10:00:00"} {
		if got, ok := dumpTime([]byte(tail)); ok {
			t.Errorf("dumpTime(%q) = %v, want none", tail, got)
		}
	}
}

func TestTailWriter(t *testing.T) {
	w := &tailWriter{max: 4}
	for _, s := range []string{"ab", "cdefgh", "ijklmnopq", "r"} {
		w.Write([]byte(s))
	}
	if got := string(w.Bytes()); got != "opqr" {
		t.Fatalf("tail = %q, want %q", got, "opqr")
	}
}

func TestQuoting(t *testing.T) {
	if got := quoteIdent("we`ird"); got != "`we``ird`" {
		t.Errorf("quoteIdent = %s", got)
	}
	if got := quoteString(`it's a \ "test"` + "\x00\x1a"); got != `'it\'s a \\ "test"\0\Z'` {
		t.Errorf("quoteString = %s", got)
	}
	for _, name := range []string{"", "a.b", "a/b", `a\b`, "a\x00", "trailing ", strings.Repeat("x", 65), "\xff"} {
		if err := checkDatabaseName(name); err == nil {
			t.Errorf("checkDatabaseName(%q) = nil", name)
		}
	}
	for _, name := range []string{"shop", "Shop_2024", "we`ird", "é", strings.Repeat("é", 64)} {
		if err := checkDatabaseName(name); err != nil {
			t.Errorf("checkDatabaseName(%q) = %v", name, err)
		}
	}
}

func TestServerArgs(t *testing.T) {
	s := &server{kind: imagebuilder.EngineMariaDB, version: "10.11.19", bin: "/usr/sbin/mariadbd"}
	args, err := s.serverArgs("/i/data", "/run/x", engine.StartOptions{Port: 3307, Settings: map[string]string{
		"max_allowed_packet": "64M", "innodb_buffer_pool_size": "256M",
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--no-defaults", "--basedir=/usr", "--datadir=/i/data", "--socket=/run/x/mysqld.sock",
		"--pid-file=/run/x/mysqld.pid", "--log-error=/run/x/server.log", "--skip-name-resolve",
		"--skip-log-bin", "--skip-slave-start", "--port=3307", "--bind-address=127.0.0.1",
		"--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
		"--innodb-buffer-pool-size=256M", "--max-allowed-packet=64M", "--tmpdir=/run/x/tmp",
	}
	if !slices.Equal(args, want) {
		t.Errorf("serverArgs =\n%q\nwant\n%q", args, want)
	}
	mysql := &server{kind: imagebuilder.EngineMySQL, version: "8.0.36", bin: "/usr/sbin/mysqld"}
	args, err = mysql.serverArgs("/i/data", "/run/x", engine.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(args, "--skip-networking") || !slices.Contains(args, "--mysqlx=OFF") || slices.Contains(args, "--character-set-server=utf8mb4") ||
		!slices.Contains(args, "--skip-log-bin") || !slices.Contains(args, "--skip-replica-start") {
		t.Errorf("MySQL serverArgs = %q", args)
	}
	old := &server{kind: imagebuilder.EngineMySQL, version: "8.0.25", bin: "/usr/sbin/mysqld"}
	if args, err = old.serverArgs("/i/data", "/run/x", engine.StartOptions{}); err != nil || !slices.Contains(args, "--skip-slave-start") {
		t.Errorf("MySQL 8.0.25 serverArgs = %q, %v; want --skip-slave-start", args, err)
	}
	// The isolation options are the adapter's: no setting turns them off.
	for _, bad := range []map[string]string{{"datadir": "/x"}, {"LOOSE-PID_FILE": "x"}, {"a b": "1"}, {"x": "a\nb"}, {"": "1"},
		{"log_bin": "mysql-bin"}, {"skip-slave-start": "0"}, {"loose-skip-replica-start": "OFF"}, {"init_file": "/tmp/x.sql"}} {
		if _, err := s.serverArgs("/i/data", "/run/x", engine.StartOptions{Settings: bad}); !errors.Is(err, ErrSetting) {
			t.Errorf("serverArgs(%v) = %v, want ErrSetting", bad, err)
		}
	}
	if _, err := s.serverArgs("/i/data", "/run/x", engine.StartOptions{Port: 70000}); err == nil {
		t.Error("serverArgs(port 70000) = nil error")
	}
}
