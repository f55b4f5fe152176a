# kpd — common tasks. `make run` starts the server on its defaults,
# `make test` runs every test with the race detector.

GO       ?= go
BIN      ?= bin/kpd
# A count of executions, not a duration: when a -fuzztime duration ends,
# Go 1.26's fuzzing coordinator can fail the run with a spurious "context
# deadline exceeded" (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 300000x
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS  := -X main.version=$(VERSION)

# Fuzz targets as package:Target pairs; `make fuzz` runs each for $(FUZZTIME)
# (a count of executions such as 300000x, or a duration such as 1h).
FUZZ_TARGETS := \
	./mls:FuzzParseKeyPackage \
	./mls:FuzzParseWelcome \
	./index:FuzzDecodeKeys \
	./kv:FuzzDecodeRecord \
	./httpapi:FuzzRequests

.PHONY: all build run test lint bench fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/kpd

# The server on its defaults: ./kpd.db, http://127.0.0.1:8080, token auth.
run:
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/kpd serve

test:
	$(GO) test -race -count=1 ./...

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME); \
	done

clean:
	rm -rf bin
