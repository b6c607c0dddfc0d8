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

# Benchmarks print their own figures (jobs/s against the bound Triage
# sets, CPU per job); compare ratios within one run on a shared machine.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 1x -count 1 ./integration
	$(GO) test -run '^$$' -bench . -benchmem ./bus ./triage

fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf bin
