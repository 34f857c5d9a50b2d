package mariadb_test

import (
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb"
	"github.com/dataimage/dataimage/imagebuilder/engine/mariadb/internal/mariadbtest"
)

func TestConformance(t *testing.T) {
	enginetest.Run(t, mariadb.Adapter{}, mariadbtest.Engine(t))
}
