package ort

import (
	"os"
	"path/filepath"
	"testing"
)

// libDirFromMake records whether the ONNX Runtime library directory came
// from the environment (make test sets it, and then a missing library is a
// failure) or was filled in from the checkout.
var libDirFromMake = os.Getenv(LibraryDirEnv) != ""

func TestMain(m *testing.M) {
	if !libDirFromMake {
		// go test runs in the package directory; the checkout keeps the
		// library in lib/onnxruntime three levels up.
		if dir, err := filepath.Abs(filepath.Join("..", "..", "..", "lib", "onnxruntime")); err == nil {
			os.Setenv(LibraryDirEnv, dir)
		}
	}
	code := m.Run()
	if benchDir.path != "" {
		os.RemoveAll(benchDir.path)
	}
	os.Exit(code)
}

// requireRuntime loads ONNX Runtime or stops the test: it fails when make
// pointed at a library that does not load, and skips (saying why) when a
// plain go test finds no library in the checkout.
func requireRuntime(t testing.TB) {
	t.Helper()
	if _, err := initRuntime(); err != nil {
		if libDirFromMake {
			t.Fatalf("ONNX Runtime from %s=%s: %v", LibraryDirEnv, os.Getenv(LibraryDirEnv), err)
		}
		t.Skipf("ONNX Runtime library not available (run plugins/ortlib.sh or make test): %v", err)
	}
}
