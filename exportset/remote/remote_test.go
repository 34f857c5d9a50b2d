package remote_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dataimage/dataimage/exportset"
	"github.com/dataimage/dataimage/exportset/remote"
	"github.com/dataimage/dataimage/internal/s3test"
)

var srv *s3test.Server

func TestMain(m *testing.M) { os.Exit(s3test.Main(m, &srv)) }

func s3Config(t *testing.T) remote.S3Config {
	return remote.S3Config{Bucket: srv.Bucket(t), Prefix: "/reg/one/", Endpoint: srv.Endpoint, PathStyle: true,
		Credentials: remote.Credentials{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want remote.Location
		str  string
	}{
		{"s3://bucket", remote.Location{Scheme: "s3", Bucket: "bucket"}, "s3://bucket"},
		{"s3://bucket/a/b/", remote.Location{Scheme: "s3", Bucket: "bucket", Prefix: "a/b"}, "s3://bucket/a/b"},
		{"file:///mnt/nfs/images", remote.Location{Scheme: "file", Dir: "/mnt/nfs/images"}, "file:///mnt/nfs/images"},
		{"file://localhost/srv", remote.Location{Scheme: "file", Dir: "/srv"}, "file:///srv"},
	} {
		got, err := remote.ParseURL(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got)
		require.Equal(t, tc.str, got.String())
	}
	for in, want := range map[string]string{
		"bucket/prefix":      "want s3://bucket/prefix or file:///dir",
		"s3:///prefix":       "a bucket is required",
		"file://host/dir":    "on this machine",
		"file:relative":      "must be absolute",
		"http://x/y":         "want s3://bucket/prefix or file:///dir",
		"s3://user@bucket/x": "no user",
		"s3://bucket/x?a=b":  "no user, query or fragment",
	} {
		_, err := remote.ParseURL(in)
		require.ErrorIs(t, err, exportset.ErrInvalid, in)
		require.ErrorContains(t, err, want, in)
	}
}

// TestTargets checks what package exportset needs of a target, on both kinds.
func TestTargets(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) exportset.Target{
		"file": func(t *testing.T) exportset.Target {
			d, err := remote.NewDir(filepath.Join(t.TempDir(), "reg"))
			require.NoError(t, err)
			return d
		},
		"s3": func(t *testing.T) exportset.Target {
			s, err := remote.NewS3(s3Config(t))
			require.NoError(t, err)
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			tg := open(t)
			_, err := tg.Get(ctx, "chunks/sha256/none", 100)
			require.ErrorIs(t, err, exportset.ErrNotFound)
			_, err = tg.Stat(ctx, "chunks/sha256/none")
			require.ErrorIs(t, err, exportset.ErrNotFound)
			require.NoError(t, tg.Delete(ctx, "chunks/sha256/none"), "deleting what is not there is not an error")
			var keys []string
			require.NoError(t, tg.List(ctx, "chunks/", func(o exportset.ObjectInfo) error { keys = append(keys, o.Key); return nil }))
			require.Empty(t, keys, "listing what is not there (yet) is empty")

			before := time.Now().Add(-time.Minute)
			for _, k := range []string{"chunks/sha256/a", "chunks/sha256/b", "refs/x", "refs/xy", "manifests/sha256/a"} {
				require.NoError(t, tg.Put(ctx, k, []byte("v:"+k)))
			}
			b, err := tg.Get(ctx, "refs/x", 100)
			require.NoError(t, err)
			require.Equal(t, "v:refs/x", string(b))
			_, err = tg.Get(ctx, "refs/x", 3)
			require.ErrorIs(t, err, exportset.ErrCorrupt, "an object past the limit")
			require.NoError(t, tg.Put(ctx, "refs/x", []byte("new")))
			b, err = tg.Get(ctx, "refs/x", 100)
			require.NoError(t, err)
			require.Equal(t, "new", string(b))
			info, err := tg.Stat(ctx, "chunks/sha256/a")
			require.NoError(t, err)
			require.Equal(t, int64(len("v:chunks/sha256/a")), info.Size)
			require.True(t, info.Modified.After(before), "modified %s", info.Modified)

			keys = nil
			require.NoError(t, tg.List(ctx, "refs/", func(o exportset.ObjectInfo) error { keys = append(keys, o.Key); return nil }))
			slices.Sort(keys)
			require.Equal(t, []string{"refs/x", "refs/xy"}, keys)
			keys = nil
			require.NoError(t, tg.List(ctx, "refs/xy", func(o exportset.ObjectInfo) error { keys = append(keys, o.Key); return nil }))
			require.Equal(t, []string{"refs/xy"}, keys)
			stop := context.Canceled
			n := 0
			require.ErrorIs(t, tg.List(ctx, "chunks/", func(exportset.ObjectInfo) error { n++; return stop }), stop)
			require.Equal(t, 1, n)

			require.NoError(t, tg.Delete(ctx, "refs/x"))
			_, err = tg.Get(ctx, "refs/x", 100)
			require.ErrorIs(t, err, exportset.ErrNotFound)
		})
	}
}

func TestDir(t *testing.T) {
	ctx := context.Background()
	_, err := remote.NewDir("relative/dir")
	require.ErrorIs(t, err, exportset.ErrInvalid)
	root := filepath.Join(t.TempDir(), "reg")
	d, err := remote.NewDir(root)
	require.NoError(t, err)
	for _, k := range []string{"../x", "a/../../x", "/etc/passwd", "a//b", "refs/.hidden", ""} {
		require.ErrorIs(t, d.Put(ctx, k, nil), exportset.ErrInvalid, k)
	}
	require.NoError(t, d.Put(ctx, "refs/a", []byte("x")))
	// What a crash leaves of a replacement (internal/atomicfile) is not an object.
	require.NoError(t, os.WriteFile(filepath.Join(root, "refs", ".a.tmp-123"), []byte("half"), 0o600))
	var keys []string
	require.NoError(t, d.List(ctx, "refs/", func(o exportset.ObjectInfo) error { keys = append(keys, o.Key); return nil }))
	require.Equal(t, []string{"refs/a"}, keys)
	fi, err := os.Stat(filepath.Join(root, "refs", "a"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	require.Equal(t, "file://"+root, d.String())
}

func TestS3Errors(t *testing.T) {
	ctx := context.Background()
	cfg := s3Config(t)

	bad := cfg
	bad.Credentials.SecretAccessKey = "wrong"
	s, err := remote.NewS3(bad)
	require.NoError(t, err)
	err = s.Put(ctx, "refs/x", []byte("x"))
	require.Error(t, err)
	require.NotErrorIs(t, err, exportset.ErrNotFound)
	require.ErrorContains(t, err, "put s3://"+cfg.Bucket+"/reg/one/refs/x")

	nob := cfg
	nob.Bucket = "no-such-bucket-here"
	s, err = remote.NewS3(nob)
	require.NoError(t, err)
	_, err = s.Get(ctx, "refs/x", 10)
	require.ErrorContains(t, err, "bucket no-such-bucket-here does not exist")
	require.NotErrorIs(t, err, exportset.ErrNotFound, "a missing bucket is a configuration error, not a missing image")

	for _, e := range []string{"ftp://x", "http://host/path", "http://user:pw@host"} {
		c := cfg
		c.Endpoint = e
		_, err = remote.NewS3(c)
		require.ErrorIs(t, err, exportset.ErrInvalid, e)
	}
	c := cfg
	c.CAFile = filepath.Join(t.TempDir(), "none.pem")
	_, err = remote.NewS3(c)
	require.ErrorIs(t, err, exportset.ErrInvalid)
	require.NoError(t, os.WriteFile(c.CAFile, []byte("not a certificate"), 0o600))
	_, err = remote.NewS3(c)
	require.ErrorContains(t, err, "no PEM certificate")
	_, err = remote.NewS3(remote.S3Config{})
	require.ErrorIs(t, err, exportset.ErrInvalid)
}

// TestLoadAWSEnv reads credentials as the AWS tools do, and uses those of a shared file with
// the S3 server.
func TestLoadAWSEnv(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

	got, err := remote.LoadAWSEnv(env(map[string]string{"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "tok",
		"AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://x:9000", "HOME": t.TempDir()}))
	require.NoError(t, err)
	require.Equal(t, remote.AWSEnv{Credentials: remote.Credentials{AccessKeyID: "id", SecretAccessKey: "secret", SessionToken: "tok"},
		Region: "eu-west-1", Endpoint: "http://x:9000", From: "environment"}, got)

	_, err = remote.LoadAWSEnv(env(map[string]string{"AWS_ACCESS_KEY_ID": "id", "HOME": t.TempDir()}))
	require.ErrorContains(t, err, "must both be set")

	got, err = remote.LoadAWSEnv(env(map[string]string{"HOME": t.TempDir()}))
	require.NoError(t, err)
	require.Equal(t, remote.AWSEnv{}, got, "nothing configured: anonymous")

	home := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(home, ".aws"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(home, ".aws", "credentials"), []byte(
		"[default]\naws_access_key_id = nothere\naws_secret_access_key = nothere\n\n[test]\naws_access_key_id = "+srv.AccessKey+
			"\naws_secret_access_key = "+srv.SecretKey+"\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(home, ".aws", "config"), []byte(
		"[default]\nregion = us-west-2\n\n[profile test]\nregion = us-east-1\n"), 0o600))
	got, err = remote.LoadAWSEnv(env(map[string]string{"HOME": home}))
	require.NoError(t, err)
	require.Equal(t, "nothere", got.Credentials.AccessKeyID)
	require.Equal(t, "us-west-2", got.Region)
	require.Equal(t, "shared files (profile default)", got.From)

	_, err = remote.LoadAWSEnv(env(map[string]string{"HOME": home, "AWS_PROFILE": "missing"}))
	require.ErrorContains(t, err, "AWS profile missing")

	got, err = remote.LoadAWSEnv(env(map[string]string{"HOME": home, "AWS_PROFILE": "test"}))
	require.NoError(t, err)
	require.Equal(t, "us-east-1", got.Region)
	srv.Need(t)
	cfg := s3Config(t)
	cfg.Credentials, cfg.Region = got.Credentials, got.Region
	s, err := remote.NewS3(cfg)
	require.NoError(t, err)
	require.NoError(t, s.Put(context.Background(), "refs/x", []byte("x")), "the profile's key works with the server")
}
