package postgres_test

import (
	"testing"

	"github.com/dataimage/dataimage/imagebuilder/engine/enginetest"
	"github.com/dataimage/dataimage/imagebuilder/engine/postgres"
)

func TestConformance(t *testing.T) {
	enginetest.Run(t, postgres.Adapter{}, pgEngine(t))
}
