package driver

import (
	"os"
	"testing"

	"github.com/dataimage/dataimage/internal/s3test"
)

// s3srv is the S3 server of the registry tests (images_test.go), started once for the package.
var s3srv *s3test.Server

func TestMain(m *testing.M) { os.Exit(s3test.Main(m, &s3srv)) }
