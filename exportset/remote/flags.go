package remote

import (
	"flag"
	"fmt"

	"github.com/dataimage/dataimage/exportset"
)

// Flags name a registry as the Kubernetes components (dataimage-csi, dataimage-controller) take
// it from their command lines; the credentials come from the AWS environment (LoadAWSEnv: the
// chart puts AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret there).
type Flags struct {
	// URL is s3://bucket/prefix or file:///dir; empty: no registry.
	URL       string
	Endpoint  string
	Region    string
	CAFile    string
	PathStyle bool
}

// Register defines the flags --registry, --registry-endpoint, --registry-region,
// --registry-ca-file and --registry-path-style on fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.URL, "registry", "", "the image registry: s3://bucket/prefix or file:///dir (credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS shared files); empty: none")
	fs.StringVar(&f.Endpoint, "registry-endpoint", "", "the S3 server, http(s)://host[:port] (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS S3)")
	fs.StringVar(&f.Region, "registry-region", "", "the bucket's region (default: AWS_REGION, AWS_DEFAULT_REGION, else found by the client)")
	fs.StringVar(&f.CAFile, "registry-ca-file", "", "a PEM bundle of the certificate authorities to trust for the S3 server instead of the system's")
	fs.BoolVar(&f.PathStyle, "registry-path-style", false, "address the bucket in the path (https://host/bucket/key), as most S3-compatible servers want")
}

// Open returns the registry's target, nil when no registry is named. getenv is os.Getenv in a
// main.
func (f Flags) Open(getenv func(string) string) (exportset.Target, error) {
	if f.URL == "" {
		if f.Endpoint != "" || f.Region != "" || f.CAFile != "" || f.PathStyle {
			return nil, fmt.Errorf("%w: --registry-endpoint, --registry-region, --registry-ca-file and --registry-path-style need --registry", exportset.ErrInvalid)
		}
		return nil, nil
	}
	loc, err := ParseURL(f.URL)
	if err != nil {
		return nil, fmt.Errorf("--registry: %w", err)
	}
	env, err := LoadAWSEnv(getenv)
	if err != nil {
		return nil, err
	}
	cfg := S3Config{Endpoint: firstSet(f.Endpoint, env.Endpoint), Region: firstSet(f.Region, env.Region), CAFile: f.CAFile,
		PathStyle: f.PathStyle, Credentials: env.Credentials}
	t, err := Open(loc, cfg)
	if err != nil {
		return nil, fmt.Errorf("--registry %s: %w", f.URL, err)
	}
	return t, nil
}
