# rerank sidecar: build, run, test, bench.
# CGO_ENABLED is explicit per binary: the proxy builds without cgo, the ONNX
# Runtime plugins need it (onnxruntime_go loads the library with dlopen).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
GO ?= go
ORT_LIB ?= $(CURDIR)/lib/onnxruntime
export RERANK_ORT_LIB_DIR ?= $(ORT_LIB)

.PHONY: all build run test bench chaos fmt lint ort clean gpu-prepare gpu-check

all: build

ort:
	./plugins/ortlib.sh

build:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/rerank ./proxy/cmd/rerank
	CGO_ENABLED=1 $(GO) build -ldflags '$(LDFLAGS)' -o bin/rerank-onnx-cpu ./plugins/onnx-cpu
	CGO_ENABLED=1 $(GO) build -ldflags '$(LDFLAGS)' -o bin/rerank-onnx-cuda ./plugins/onnx-cuda
	CGO_ENABLED=1 $(GO) build -ldflags '$(LDFLAGS)' -o bin/rerank-onnx-coreml ./plugins/onnx-coreml

run: ort build
	./bin/rerank serve

test: ort build
	$(GO) vet ./...
	$(GO) test -race -timeout 30m ./...

# The long fault-injection runs (docs/RELIABILITY.md); make test runs short
# versions of the same tests.
chaos: ort build
	RERANK_CHAOS=1 $(GO) test -count=1 -v -timeout 60m -run 'TestChaos' ./proxy/e2e/

bench: ort build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 3s ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

lint:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)

clean:
	rm -rf bin

# GPU check (issue 14, docs/GPU.md): gpu-prepare here, then gpu-check on the
# GPU machine with the prepared files carried there.
gpu-prepare:
	./gpu/prepare.sh

gpu-check:
	./gpu/check.sh run
