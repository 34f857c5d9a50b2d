package postgres_test

import (
	"os"
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Cleanup()
	os.Exit(code)
}
