// Package remote holds the targets of package exportset's registries: a bucket of an S3
// server (S3, through minio-go) and a directory (Dir), named by URLs (s3://bucket/prefix,
// file:///dir), and how the AWS tools' environment and shared files configure S3 access.
//
// It must not know images, pools or the products: it stores and lists objects.
package remote

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/dataimage/dataimage/exportset"
)

// Location is a registry's URL, parsed.
type Location struct {
	// Scheme is "s3" or "file".
	Scheme string
	// Bucket and Prefix (s3).
	Bucket, Prefix string
	// Dir is the directory (file), absolute.
	Dir string
}

// ParseURL parses a registry's URL: s3://bucket[/prefix] or file:///absolute/dir.
func ParseURL(s string) (Location, error) {
	bad := func(rule string) (Location, error) {
		return Location{}, fmt.Errorf("%w: registry URL %q: %s", exportset.ErrInvalid, s, rule)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("want s3://bucket/prefix or file:///dir")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return bad("no user, query or fragment")
	}
	switch u.Scheme {
	case "s3":
		if u.Host == "" {
			return bad("s3://BUCKET/prefix: a bucket is required")
		}
		return Location{Scheme: "s3", Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}, nil
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return bad("file:///dir: the directory must be absolute (three slashes), on this machine")
		}
		if !strings.HasPrefix(u.Path, "/") {
			return bad("file:///dir: the directory must be absolute")
		}
		return Location{Scheme: "file", Dir: u.Path}, nil
	}
	return bad("want s3://bucket/prefix or file:///dir")
}

func (l Location) String() string {
	if l.Scheme == "file" {
		return "file://" + l.Dir
	}
	if l.Prefix == "" {
		return "s3://" + l.Bucket
	}
	return "s3://" + l.Bucket + "/" + l.Prefix
}

// Open returns the target at loc; cfg configures S3 access (its Bucket and Prefix are loc's).
func Open(loc Location, cfg S3Config) (exportset.Target, error) {
	switch loc.Scheme {
	case "file":
		return NewDir(loc.Dir)
	case "s3":
		cfg.Bucket, cfg.Prefix = loc.Bucket, loc.Prefix
		return NewS3(cfg)
	}
	return nil, fmt.Errorf("%w: registry scheme %q: want s3 or file", exportset.ErrInvalid, loc.Scheme)
}
