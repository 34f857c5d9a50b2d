package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/dataimage/dataimage/exportset"
)

// S3 is a registry's target in a bucket of an S3 server (AWS S3 or a compatible one: MinIO,
// Ceph RGW, SeaweedFS, ...), under a prefix, through minio-go.
type S3 struct {
	c      *minio.Client
	bucket string
	prefix string // "" or ending in '/'
	url    string // s3://bucket/prefix/
	at     string // " at <endpoint>" when one was given
}

// S3Config says how to reach a bucket.
type S3Config struct {
	Bucket string
	// Prefix is the folder of the registry in the bucket ("" = the bucket's root).
	Prefix string
	// Endpoint is the server: a URL (https://host:port, http://host:port) or host[:port]
	// (https). Empty: AWS S3 (s3.amazonaws.com).
	Endpoint string
	// Region; empty: found by the client (us-east-1 for most compatible servers).
	Region string
	// PathStyle addresses the bucket in the path (https://host/bucket/key) rather than in the
	// host name (https://bucket.host/key), as most compatible servers want; false: the client
	// chooses (virtual hosts on AWS).
	PathStyle bool
	// CAFile is a PEM bundle of the certificate authorities to trust instead of the system's.
	CAFile string
	// Credentials; the zero value is anonymous access.
	Credentials Credentials
}

// Credentials are an S3 access key.
type Credentials struct {
	AccessKeyID     string `json:"accessKeyID,omitempty"`
	SecretAccessKey string `json:"secretAccessKey,omitempty"`
	SessionToken    string `json:"sessionToken,omitempty"`
}

// Set reports whether the credentials hold a key.
func (c Credentials) Set() bool { return c.AccessKeyID != "" || c.SecretAccessKey != "" }

// NewS3 returns the target in the bucket and prefix cfg names. It makes no request.
func NewS3(cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("%w: s3: a bucket is required", exportset.ErrInvalid)
	}
	host, secure := "s3.amazonaws.com", true
	if cfg.Endpoint != "" {
		e := cfg.Endpoint
		if !strings.Contains(e, "://") {
			e = "https://" + e
		}
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("%w: s3 endpoint %q: want http(s)://host[:port] or host[:port]", exportset.ErrInvalid, cfg.Endpoint)
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("remote: s3 transport: %w", err)
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: s3 CA bundle: %w", exportset.ErrInvalid, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: s3 CA bundle %s: no PEM certificate in it", exportset.ErrInvalid, cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	var creds *credentials.Credentials
	if cfg.Credentials.Set() {
		creds = credentials.NewStaticV4(cfg.Credentials.AccessKeyID, cfg.Credentials.SecretAccessKey, cfg.Credentials.SessionToken)
	} else {
		creds = credentials.New(&credentials.Static{}) // anonymous
	}
	c, err := minio.New(host, &minio.Options{Creds: creds, Secure: secure, Region: cfg.Region, BucketLookup: lookup, Transport: tr})
	if err != nil {
		return nil, fmt.Errorf("%w: s3: %w", exportset.ErrInvalid, err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	at := ""
	if cfg.Endpoint != "" {
		at = " at " + cfg.Endpoint
	}
	return &S3{c: c, bucket: cfg.Bucket, prefix: prefix, url: "s3://" + cfg.Bucket + "/" + prefix, at: at}, nil
}

func (s *S3) String() string { return s.url + s.at }

// Client returns the minio-go client, for tests and benchmarks that use the same library
// directly.
func (s *S3) Client() *minio.Client { return s.c }

// Bucket returns the bucket's name.
func (s *S3) Bucket() string { return s.bucket }

func (s *S3) Get(ctx context.Context, key string, limit int64) ([]byte, error) {
	obj, err := s.c.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.error("get", key, err)
	}
	defer obj.Close()
	// The response's length sizes the buffer: one allocation, no regrowth.
	info, err := obj.Stat()
	if err != nil {
		return nil, s.error("get", key, err)
	}
	if info.Size > limit || info.Size < 0 {
		return nil, fmt.Errorf("%w: %s%s%s announces %d bytes; at most %d are expected", exportset.ErrCorrupt, s.url, key, s.at, info.Size, limit)
	}
	b := make([]byte, info.Size+1) // a byte more: a body longer than announced fills it
	n, err := io.ReadFull(obj, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, s.error("get", key, err)
	}
	if int64(n) != info.Size {
		return nil, fmt.Errorf("%w: %s%s%s: read %d bytes of a body of %d", exportset.ErrCorrupt, s.url, key, s.at, n, info.Size)
	}
	return b[:n], nil
}

func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	_, err := s.c.PutObject(ctx, s.bucket, s.prefix+key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return s.error("put", key, err)
	}
	return nil
}

func (s *S3) Stat(ctx context.Context, key string) (exportset.ObjectInfo, error) {
	info, err := s.c.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return exportset.ObjectInfo{}, s.error("stat", key, err)
	}
	return exportset.ObjectInfo{Key: key, Size: info.Size, Modified: info.LastModified}, nil
}

func (s *S3) List(ctx context.Context, prefix string, fn func(exportset.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing's goroutine when fn stops early
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return s.error("list", prefix, o.Err)
		}
		key := strings.TrimPrefix(o.Key, s.prefix)
		if err := fn(exportset.ObjectInfo{Key: key, Size: o.Size, Modified: o.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.c.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.error("delete", key, err), exportset.ErrNotFound) {
			return nil
		}
		return s.error("delete", key, err)
	}
	return nil
}

// error wraps a client error, as ErrNotFound for a missing object (not for a missing bucket:
// that is a configuration error, and says so).
func (s *S3) error(op, key string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == minio.NoSuchKey || (resp.StatusCode == http.StatusNotFound && resp.Code == ""):
		return fmt.Errorf("%w: %s %s%s%s", exportset.ErrNotFound, op, s.url, key, s.at)
	case resp.Code == minio.NoSuchBucket:
		return fmt.Errorf("remote: %s %s%s%s: bucket %s does not exist: %w", op, s.url, key, s.at, s.bucket, err)
	}
	return fmt.Errorf("remote: %s %s%s%s: %w", op, s.url, key, s.at, err)
}
