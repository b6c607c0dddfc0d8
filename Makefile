# tqtriage: build, test and try it.
GO      ?= go
BIN     := bin/tqtriage
PKGS    := ./...
# Fuzz targets run for FUZZTIME each by `make fuzz`.
FUZZTIME ?= 20s

.PHONY: build test vet race bench fuzz demo clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/tqtriage

vet:
	$(GO) vet $(PKGS)

# The test command of the README and of CI: vet, then every test with the
# race detector (the worker, publisher and write-back are concurrent).
test: vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

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
