package mariadb

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseVersion(f *testing.F) {
	f.Add("mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n")
	f.Add("/usr/sbin/mysqld  Ver 8.0.35-27 for Linux on x86_64 (Percona Server (GPL), Release '27')\n")
	f.Add("Ver 1.2")
	f.Fuzz(func(t *testing.T, out string) {
		kind, version, err := parseVersion(out)
		if err != nil {
			return
		}
		if kind == "" || !strings.Contains(out, version) {
			t.Fatalf("parseVersion(%q) = %q, %q", out, kind, version)
		}
		for _, part := range strings.Split(version, ".") {
			if part == "" || strings.Trim(part, "0123456789") != "" {
				t.Fatalf("version %q has a non-numeric part", version)
			}
		}
	})
}

func FuzzClassify(f *testing.F) {
	f.Add([]byte(sandboxLine + "\n-- MariaDB dump 10.19\n"))
	f.Add([]byte("-- x\n/* y */ # z\nCREATE TABLE t (x INT);"))
	f.Add([]byte("PGDMP"))
	f.Add([]byte("--\n-- PostgreSQL database dump\n"))
	f.Add([]byte("\x00\xff"))
	f.Add([]byte("/*"))
	f.Fuzz(func(t *testing.T, head []byte) {
		what, ok := classify(head)
		if ok == (what != "") {
			t.Fatalf("classify(%q) = %q, %v: a description exactly when not SQL", head, what, ok)
		}
		if !utf8.ValidString(what) {
			// Descriptions quote what they show (%q), so they stay printable in messages.
			t.Fatalf("classify(%q) description %q is not UTF-8", head, what)
		}
	})
}

func FuzzScanDatabases(f *testing.F) {
	f.Add([]byte("CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop`;\nUSE `shop`;\n"))
	f.Add([]byte("USE `a``b`;\nCREATE TABLE t (x int);"))
	f.Add([]byte("create schema if not exists"))
	f.Fuzz(func(t *testing.T, head []byte) {
		own, db := scanDatabases(head)
		if db != "" && !own {
			t.Fatalf("scanDatabases(%q) = %v, %q: a database without USE or CREATE DATABASE", head, own, db)
		}
	})
}
