# Dataimage developer entry points. `make test` is what CI runs (.ci/run).
#
#   make deps    install system tools and Go tools the tests and linters need
#   make build   compile every package; binaries from cmd/* go to bin/
#   make test    make deps and make lint, then every test with the race detector
#   make lint    gofmt, go vet, staticcheck
#   make bench   benchmark report: block store, driver, data images (hack/bench.sh)
#   make crash   block store crash tests (power losses, torn sectors, I/O errors, kills; then recover)
#   make soak    block store model-based tests with many random operations
#   make fuzz    run every fuzz target (parsers, decoders, validators) for FUZZTIME (default 30s)
#   make demo    data image from a pgbench backup, served as 3 clones (root; DEMO_SCALE=50)
#   make manifests  regenerate the DataImage CRD and deepcopy, the chart's CRD copies, deploy/
#   make images  OCI image archives (no container engine) of cmd/* into bin/images/
#   make e2e     a real two-node Kubernetes (and an S3 server) on this machine runs the user story (root; docs/e2e.md)
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
CRASH_KILLS ?= 1000
CRASH_SEQUENCES ?= 2000
CRASH_IOERRORS ?= 60
SOAK_PKGS ?= ./blockstore
MODEL_OPS ?= 1000000

# Packages whose Fuzz targets make fuzz runs, each for FUZZTIME. A failing input is saved under
# the package's testdata/fuzz/ and is a regression test from then on: commit it with the fix.
FUZZ_PKGS ?= ./blockstore/internal/format ./blockstore/export ./driver ./imagebuilder ./imagebuilder/tarx \
	./imagebuilder/engine/postgres ./imagebuilder/engine/mariadb ./local ./controllers/dataimage ./exportset
FUZZTIME ?= 30s

.DEFAULT_GOAL := build

.PHONY: deps build test lint bench crash soak fuzz demo manifests images e2e clean

# Idempotent: quiet and quick when everything is already installed.
deps:
	@t0=$$SECONDS; hack/install-deps.sh; echo "==> deps: $$((SECONDS - t0)) s"

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
	@t0=$$SECONDS; $(GO) test -race -count=1 -timeout 25m ./...; echo "==> go test: $$((SECONDS - t0)) s"

lint:
	@t0=$$SECONDS; \
	echo "==> gofmt -l"; \
	out="$$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -print0 | xargs -0 -r gofmt -l)"; \
	if [ -n "$$out" ]; then echo "not gofmt-ed (run gofmt -w):"; echo "$$out"; exit 1; fi; \
	echo "==> go vet ./..."; \
	$(GO) vet ./...; \
	echo "==> staticcheck ./..."; \
	command -v staticcheck >/dev/null || { echo "staticcheck not found: run make deps"; exit 1; }; \
	staticcheck ./...; \
	echo "==> lint: $$((SECONDS - t0)) s"

bench:
	@echo "==> hack/bench.sh $(BENCH_ARGS)"
	GO=$(GO) hack/bench.sh $(BENCH_ARGS)

# Each test prints its count: "crash points: ...", "crash sequences: ...", "crash I/O errors: ...",
# "crash kills: ...".
crash:
	@echo "==> crash tests: $(CRASH_POINTS) crash points, $(CRASH_SEQUENCES) sequences of crashes, $(CRASH_IOERRORS) workloads with I/O errors, $(CRASH_KILLS) kills"
	$(GO) test -count=1 -v -run 'Crash' -timeout 60m $(CRASH_PKGS) -args -crash.points=$(CRASH_POINTS) -crash.kills=$(CRASH_KILLS) \
		-crash.sequences=$(CRASH_SEQUENCES) -crash.ioerrors=$(CRASH_IOERRORS) \
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

# hack/demo.sh: a source PostgreSQL filled by pgbench (DEMO_SCALE, default 50: ~750 MB), its
# base backup built into a data image, three clones of it; re-runnable. Needs root.
demo:
	GO=$(GO) hack/demo.sh

# Kubernetes packaging (docs/kubernetes.md). Tools: hack/install-k8s-tools.sh.
# manifests: controller-gen writes the deepcopy functions and the DataImage CRD (deploy/crd/,
# copied into the chart); the snapshot CRDs are copied into the chart from the module cache at
# the version go.mod requires; deploy/ is the chart rendered with its defaults (deploy/gen).
SNAPSHOT_CLIENT := github.com/kubernetes-csi/external-snapshotter/client/v8
manifests:
	@hack/install-k8s-tools.sh
	@echo "==> controller-gen: deepcopy and the DataImage CRD"
	controller-gen object paths=./apis/... crd:crdVersions=v1 output:crd:dir=deploy/crd
	cp deploy/crd/dataimage.io_dataimages.yaml charts/dataimage/files/crds/
	@echo "==> snapshot CRDs of $(SNAPSHOT_CLIENT)"
	dir="$$($(GO) mod download -json $(SNAPSHOT_CLIENT) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')"; \
	rm -f charts/dataimage/files/snapshot-crds/*.yaml; \
	install -m 0644 "$$dir"/config/crd/*.storage.k8s.io_*.yaml charts/dataimage/files/snapshot-crds/
	@echo "==> deploy/ from charts/dataimage"
	$(GO) run ./deploy/gen -chart charts/dataimage -out deploy

# images: static binaries (CGO_ENABLED=0) of whichever of the four commands have a main
# package, each in an OCI archive built by hack/ociimage (docs/kubernetes.md, "Images"). The
# plugin image adds the tools the plugin runs, copied from this machine with their shared
# libraries (make deps installs them); the data plane image adds blkid (the blank check of a
# pool device) and, for people debugging a node, losetup and fusermount3; the builder image
# adds cp, which its init container runs; the controller image is its binary alone; the FUSE
# holder image its binary and /run.
IMAGE_REGISTRY ?= docker.io/dataimage
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' charts/dataimage/Chart.yaml)
IMAGES_DIR := $(BIN_DIR)/images
IMAGE_PATH := PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PLUGIN_HOST_FILES := /usr/sbin/mkfs.ext4 /usr/sbin/mkfs.xfs /usr/sbin/fsck /usr/sbin/fsck.ext4 \
	/usr/sbin/fsck.xfs /usr/sbin/e2fsck /usr/sbin/resize2fs /usr/sbin/dumpe2fs /usr/sbin/tune2fs \
	/usr/sbin/xfs_growfs /usr/sbin/xfs_io /usr/sbin/xfs_repair /usr/sbin/blkid \
	/usr/sbin/blockdev /usr/sbin/losetup /usr/bin/mount /usr/bin/umount /usr/bin/fusermount3 \
	/etc/mke2fs.conf /etc/fuse.conf
IMAGE_ARGS_dataimage-csi := $(addprefix -host ,$(PLUGIN_HOST_FILES)) -dir /tmp:1777 -dir /run:0755 \
	-symlink /etc/mtab=../proc/self/mounts -entrypoint /usr/local/bin/dataimage-csi
DATAPLANE_HOST_FILES := /usr/sbin/blkid /usr/sbin/losetup /usr/bin/fusermount3 /etc/fuse.conf
IMAGE_ARGS_dataimage-dataplane := $(addprefix -host ,$(DATAPLANE_HOST_FILES)) -dir /tmp:1777 -dir /run:0755 \
	-symlink /etc/mtab=../proc/self/mounts -entrypoint /usr/local/bin/dataimage-dataplane
IMAGE_ARGS_dataimage-builder := -host /usr/bin/cp -dir /dataimage/bin \
	-entrypoint /usr/bin/cp -cmd /usr/local/bin/dataimage-builder -cmd /dataimage/bin/dataimage-builder
IMAGE_ARGS_dataimage-controller := -user 65532:65532 -entrypoint /usr/local/bin/dataimage-controller
IMAGE_ARGS_dataimage-fuse-holder := -dir /run:0755 -entrypoint /usr/local/bin/dataimage-fuse-holder
images:
	@mkdir -p $(IMAGES_DIR) $(BIN_DIR)/static
	@for name in dataimage-csi dataimage-dataplane dataimage-builder dataimage-controller dataimage-fuse-holder; do \
		if [ "$$($(GO) list -f '{{.Name}}' ./cmd/$$name 2>/dev/null)" != main ]; then \
			echo "==> $$name: skipped, cmd/$$name has no main package yet"; continue; \
		fi; \
		echo "==> $$name: static binary"; \
		CGO_ENABLED=0 $(GO) build -trimpath \
			-ldflags "-s -w -X github.com/dataimage/dataimage/cmd/$$name/app.Version=$(IMAGE_TAG)" \
			-o $(BIN_DIR)/static/$$name ./cmd/$$name; \
		case $$name in \
		dataimage-csi) args="$(IMAGE_ARGS_dataimage-csi)";; \
		dataimage-dataplane) args="$(IMAGE_ARGS_dataimage-dataplane)";; \
		dataimage-builder) args="$(IMAGE_ARGS_dataimage-builder)";; \
		dataimage-controller) args="$(IMAGE_ARGS_dataimage-controller)";; \
		dataimage-fuse-holder) args="$(IMAGE_ARGS_dataimage-fuse-holder)";; \
		esac; \
		$(GO) run ./hack/ociimage -o $(IMAGES_DIR)/$$name.tar -name $(IMAGE_REGISTRY)/$$name:$(IMAGE_TAG) \
			-file $(BIN_DIR)/static/$$name=/usr/local/bin/$$name -env $(IMAGE_PATH) \
			-label org.opencontainers.image.version=$(IMAGE_TAG) $$args; \
	done

e2e:
	GO=$(GO) hack/e2e/e2e.sh $(E2E_PHASES)

clean:
	rm -rf $(BIN_DIR) coverage.out coverage.html cover.out *.coverprofile
