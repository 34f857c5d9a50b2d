package exportset_test

import (
	"os"
	"testing"

	"github.com/dataimage/dataimage/exportset/internal/exporttest"
	"github.com/dataimage/dataimage/internal/s3test"
)

func TestMain(m *testing.M) {
	os.Exit(s3test.Main(m, &exporttest.S3))
}
