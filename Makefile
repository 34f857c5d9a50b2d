# Dataimage developer entry points. `make test` is what CI runs (.ci/run).
#
#   make deps    install system tools and Go tools the tests and linters need
#   make build   compile every package; binaries from cmd/* go to bin/
#   make test    make deps and make lint, then every test with the race detector
#   make lint    gofmt, go vet, staticcheck
#   make bench   block store benchmark report (hack/bench.sh)
#   make crash   block store crash tests (kill at many points, then recover)
#   make soak    block store model-based tests with many random operations
#   make fuzz    run every fuzz target (parsers, decoders, validators) for FUZZTIME (default 30s)
#   make demo    data image from a sample backup, served as clones (not yet)
#   make clean   remove build outputs

GO ?= go

# Tools installed by `go install` (staticcheck) live in GOBIN, or GOPATH/bin
# when GOBIN is unset; put both ahead of the inherited PATH.
GOBIN := $(shell $(GO) env GOBIN)
GOPATH := $(shell $(GO) env GOPATH)
export PATH := $(if $(GOBIN),$(GOBIN):)$(GOPATH)/bin:$(PATH)

# Run recipes with bash, failing on any error, including inside pipelines.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

BIN_DIR := bin

# Extra arguments for hack/bench.sh, e.g. make bench BENCH_ARGS='-benchtime=5s'.
BENCH_ARGS ?=

# Packages for crash and soak runs. The flags after -args reach every test
# binary in these packages, and a test binary stops with "flag provided but
# not defined" if it lacks one, so every package listed here that has tests
# must define the flags (or narrow the list, e.g. CRASH_PKGS=./blockstore).
CRASH_PKGS ?= ./blockstore
CRASH_POINTS ?= 1000
CRASH_KILLS ?= 100
SOAK_PKGS ?= ./blockstore
MODEL_OPS ?= 1000000

# Packages whose Fuzz targets make fuzz runs, each for FUZZTIME. A failing input is saved under
# the package's testdata/fuzz/ and is a regression test from then on: commit it with the fix.
FUZZ_PKGS ?= ./blockstore/internal/format ./blockstore/export ./driver ./imagebuilder ./imagebuilder/tarx
FUZZTIME ?= 30s

.DEFAULT_GOAL := build

.PHONY: deps build test lint bench crash soak fuzz demo clean

# Idempotent: quiet and quick when everything is already installed.
deps:
	@hack/install-deps.sh

# Build everything, then one binary per main package under cmd/ (none until
# the driver issue lands, which is fine).
build:
	@echo "==> go build ./..."
	$(GO) build ./...
	@mains="$$( [ -d cmd ] && $(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./cmd/... || true )"; \
	if [ -n "$$mains" ]; then \
		echo "==> building binaries into $(BIN_DIR)/"; \
		mkdir -p $(BIN_DIR); \
		$(GO) build -o $(BIN_DIR)/ $$mains; \
	fi

# lint first: gofmt, go vet and staticcheck are part of every test run.
test: deps lint
	@echo "==> go test -race ./..."
	$(GO) test -race -count=1 -timeout 25m ./...

lint:
	@echo "==> gofmt -l"
	@out="$$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -print0 | xargs -0 -r gofmt -l)"; \
	if [ -n "$$out" ]; then echo "not gofmt-ed (run gofmt -w):"; echo "$$out"; exit 1; fi
	@echo "==> go vet ./..."
	$(GO) vet ./...
	@echo "==> staticcheck ./..."
	@command -v staticcheck >/dev/null || { echo "staticcheck not found: run make deps"; exit 1; }
	staticcheck ./...

bench:
	@echo "==> hack/bench.sh $(BENCH_ARGS)"
	GO=$(GO) hack/bench.sh $(BENCH_ARGS)

crash:
	@echo "==> crash tests: $(CRASH_POINTS) crash points, $(CRASH_KILLS) kills"
	$(GO) test -count=1 -v -run 'Crash' -timeout 60m $(CRASH_PKGS) -args -crash.points=$(CRASH_POINTS) -crash.kills=$(CRASH_KILLS) \
		| grep -v -E '^\s*(=== RUN|--- PASS|=== NAME|(crash|kill)_test.go:[0-9]+: (crashed|killed) after)'

soak:
	@echo "==> model tests: $(MODEL_OPS) operations"
	$(GO) test -count=1 -run 'Model' -timeout 120m $(SOAK_PKGS) -args -model.ops=$(MODEL_OPS)

# go test fuzzes one target per run, so run them one after another.
fuzz:
	@for pkg in $(FUZZ_PKGS); do \
		targets="$$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true)"; \
		if [ -z "$$targets" ]; then echo "no Fuzz targets in $$pkg"; exit 1; fi; \
		for t in $$targets; do \
			echo "==> $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$pkg || exit 1; \
		done; \
	done

# Placeholder until the image-builder issue lands.
demo:
	@echo "make demo is not available yet; it arrives with the image-builder issue."
	@echo "Then it will:"
	@echo "  1. create an embedded, file-backed block store pool (no Kubernetes needed),"
	@echo "  2. build a data image from a sample PostgreSQL backup in that pool,"
	@echo "  3. serve thin writable clones of the image, each a PostgreSQL you can connect to,"
	@echo "     created in milliseconds whatever the image's size."
	@exit 1

clean:
	rm -rf $(BIN_DIR) coverage.out coverage.html cover.out *.coverprofile
