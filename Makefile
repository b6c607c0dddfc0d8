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

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf bin
