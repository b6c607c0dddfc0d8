# tqtriage: build, test and try it.
GO      ?= go
BIN     := bin/tqtriage
PKGS    := ./...
# Fuzz targets run for FUZZTIME each by `make fuzz`.
FUZZTIME ?= 20s

.PHONY: build nats-server images push test vet race bench fuzz demo clean

# The build's identity, stamped into internal/buildinfo (`tqtriage version`,
# the start-up log line, tqtriage_build_info, the User-Agent). Override any
# of them: make build VERSION=1.2.0. SOURCE_DATE_EPOCH, when set, fixes the
# date (a reproducible build).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(date +%s)} +%Y-%m-%dT%H:%M:%SZ)
BUILDINFO := github.com/tqtriage/tqtriage/internal/buildinfo
LDFLAGS := -s -w -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT) -X $(BUILDINFO).date=$(DATE)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tqtriage

# nats-server from the module go.mod pins: the server of the NATS image,
# the same the tests embed.
NATS_MODULE  := github.com/nats-io/nats-server/v2
NATS_VERSION := $(shell $(GO) list -m -f '{{.Version}}' $(NATS_MODULE))

nats-server:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/nats-server $(NATS_MODULE)

# Both images, FROM scratch, from the binaries above: nothing is pulled.
# With a registry: make images push IMAGE=registry.example.com/sec/tqtriage
# NATS_IMAGE=registry.example.com/sec/tqtriage-nats (docs/deploy.md).
DOCKER     ?= docker
IMAGE      ?= tqtriage
NATS_IMAGE ?= tqtriage-nats
# A tag may not hold '+' or '/'.
IMAGE_TAG  ?= $(subst /,-,$(subst +,-,$(VERSION)))
NATS_TAG   ?= $(patsubst v%,%,$(NATS_VERSION))

images: build nats-server
	$(DOCKER) build -f deployments/tqtriage/Dockerfile --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
	  -t $(IMAGE):$(IMAGE_TAG) -t $(IMAGE):latest .
	$(DOCKER) build -f deployments/nats/Dockerfile --build-arg NATS_VERSION=$(NATS_VERSION) \
	  -t $(NATS_IMAGE):$(NATS_TAG) -t $(NATS_IMAGE):latest .
	@$(DOCKER) image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^($(IMAGE)|$(NATS_IMAGE)):' || true

push:
	$(DOCKER) push $(IMAGE):$(IMAGE_TAG)
	$(DOCKER) push $(NATS_IMAGE):$(NATS_TAG)

vet:
	$(GO) vet $(PKGS)

# The test command of the README and of CI: vet, then every test with the
# race detector (the worker, publisher and write-back are concurrent).
# Then the container tests (integration/containers_*_test.go), on their
# own: they build the images from this tree and run a cluster, a load that
# would slow the timing tests of the other packages if they ran beside them.
# They need Docker, run without Ryuk (the reaper testcontainers would pull;
# nothing can be pulled here), and print each run's figures (-v).
test: vet
	$(GO) test -race -count=1 -timeout 20m -skip '^TestContainers$$' $(PKGS)
	TESTCONTAINERS_RYUK_DISABLED=true $(GO) test -race -count=1 -timeout 15m -v -run '^TestContainers$$' ./integration

# The whole flow against local simulators: no account, no server needed.
demo: build
	./$(BIN) demo

# Benchmarks print their own figures, each with its target: the binary as
# deployed (bench/: run, publisher, worker replicas, fleet budget) against
# simulators answering as told, then the hot paths of one job. Compare
# ratios within one run on a shared machine.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./message ./worker ./triage ./bus

fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf bin
