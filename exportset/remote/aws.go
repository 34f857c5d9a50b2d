package remote

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"gopkg.in/ini.v1"
)

// AWSEnv is what the AWS tools' configuration says about S3 access.
type AWSEnv struct {
	Credentials Credentials
	// Region: AWS_REGION, AWS_DEFAULT_REGION, or the profile's region in the config file.
	Region string
	// Endpoint: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL.
	Endpoint string
	// From says where the credentials came from ("environment", "shared files (profile
	// NAME)"), or is empty when none were found.
	From string
}

// LoadAWSEnv reads the AWS tools' configuration as they do, for a command's process: the
// environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
// AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), then the shared files
// (~/.aws/credentials and ~/.aws/config, or AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE;
// profile AWS_PROFILE, else "default"; static keys, SSO sessions and credential_process, as
// minio-go reads them). getenv is os.Getenv in a main; a test passes its own. No credentials is
// not an error (anonymous access); a profile that is named but broken is.
func LoadAWSEnv(getenv func(string) string) (AWSEnv, error) {
	var env AWSEnv
	env.Region = firstSet(getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION"))
	env.Endpoint = firstSet(getenv("AWS_ENDPOINT_URL_S3"), getenv("AWS_ENDPOINT_URL"))
	if id, secret := firstSet(getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_ACCESS_KEY")), firstSet(getenv("AWS_SECRET_ACCESS_KEY"), getenv("AWS_SECRET_KEY")); id != "" || secret != "" {
		if id == "" || secret == "" {
			return env, errors.New("remote: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set")
		}
		env.Credentials = Credentials{AccessKeyID: id, SecretAccessKey: secret, SessionToken: getenv("AWS_SESSION_TOKEN")}
		env.From = "environment"
	}
	profile := firstSet(getenv("AWS_PROFILE"), "default")
	home := getenv("HOME")
	credFile := firstSet(getenv("AWS_SHARED_CREDENTIALS_FILE"), filepath.Join(home, ".aws", "credentials"))
	configFile := firstSet(getenv("AWS_CONFIG_FILE"), filepath.Join(home, ".aws", "config"))
	if env.Region == "" {
		env.Region = profileRegion(configFile, profile)
	}
	if env.From != "" {
		return env, nil
	}
	if !exists(credFile) && !exists(configFile) {
		if getenv("AWS_PROFILE") != "" {
			return env, fmt.Errorf("remote: AWS profile %s: neither %s nor %s exists", profile, credFile, configFile)
		}
		return env, nil
	}
	v, err := sharedCredentials(credFile, configFile, profile)
	switch {
	case err != nil && getenv("AWS_PROFILE") == "":
		return env, nil // no usable default profile: anonymous
	case err != nil:
		return env, fmt.Errorf("remote: AWS profile %s: %w", profile, err)
	case v.AccessKeyID != "":
		env.Credentials = Credentials{AccessKeyID: v.AccessKeyID, SecretAccessKey: v.SecretAccessKey, SessionToken: v.SessionToken}
		env.From = fmt.Sprintf("shared files (profile %s)", profile)
	}
	return env, nil
}

// sharedCredentials reads a profile's credentials from the shared files: the credentials file
// first, then the config file (where `aws configure sso` writes), as the AWS SDK merges them.
func sharedCredentials(credFile, configFile, profile string) (credentials.Value, error) {
	var errs []error
	for _, f := range []string{credFile, configFile} {
		if !exists(f) {
			continue
		}
		v, err := (&credentials.FileAWSCredentials{Filename: f, Profile: profile}).RetrieveWithCredContext(&credentials.CredContext{Client: http.DefaultClient})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		if v.AccessKeyID != "" {
			return v, nil
		}
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("no credentials for profile %s in %s or %s", profile, credFile, configFile))
	}
	return credentials.Value{}, errors.Join(errs...)
}

// profileRegion returns the region of a profile in the config file, or "".
func profileRegion(configFile, profile string) string {
	f, err := ini.Load(configFile)
	if err != nil {
		return ""
	}
	name := profile
	if profile != "default" {
		name = "profile " + profile
	}
	s, err := f.GetSection(name)
	if err != nil {
		return ""
	}
	return s.Key("region").String()
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func firstSet(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
