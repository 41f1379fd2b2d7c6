package ort

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/rerank-sidecar/rerank/sdk"
)

// LibraryDirEnv names the environment variable holding the directory that
// contains the ONNX Runtime shared library.
const LibraryDirEnv = "RERANK_ORT_LIB_DIR"

// Version is the ONNX Runtime release the plugins are built and tested
// against; plugins/ortlib.sh fetches exactly this one.
const Version = "1.29.0"

// runtimeState is the process-wide ONNX Runtime environment: the library can
// be loaded only once per process, so every Engine shares it.
var runtimeState struct {
	mu      sync.Mutex
	ready   bool
	libPath string
}

// libraryName is the file name of the ONNX Runtime shared library on goos.
func libraryName(goos string) string {
	switch goos {
	case "darwin":
		return "libonnxruntime.1.dylib"
	case "windows":
		return "onnxruntime.dll"
	}
	return "libonnxruntime.so.1"
}

// libraryCandidates lists, in order, where the library is looked for:
// $RERANK_ORT_LIB_DIR, the executable's directory, and ../lib/onnxruntime
// relative to the executable's directory (bin/ next to lib/ in a checkout).
func libraryCandidates(envDir, exeDir, name string) []string {
	var paths []string
	if envDir != "" {
		paths = append(paths, filepath.Join(envDir, name))
	}
	if exeDir != "" {
		paths = append(paths,
			filepath.Join(exeDir, name),
			filepath.Join(exeDir, "..", "lib", "onnxruntime", name))
	}
	return paths
}

// findLibrary returns the first existing candidate, or an error naming every
// path it tried.
func findLibrary() (string, error) {
	exeDir := ""
	if exe, err := os.Executable(); err == nil {
		exeDir = filepath.Dir(exe)
	}
	name := libraryName(runtime.GOOS)
	paths := libraryCandidates(os.Getenv(LibraryDirEnv), exeDir, name)
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("ort: ONNX Runtime %s library %s not found (tried %s); run plugins/ortlib.sh or set %s to the directory holding it: %w",
		Version, name, strings.Join(paths, ", "), LibraryDirEnv, sdk.ErrUnavailable)
}

// initRuntime loads the ONNX Runtime library and creates the environment the
// first time it is called; later calls return at once. A failure is not
// remembered, so a library installed later is picked up by the next Load.
func initRuntime() (string, error) {
	runtimeState.mu.Lock()
	defer runtimeState.mu.Unlock()
	if runtimeState.ready {
		return runtimeState.libPath, nil
	}
	if ortgo.IsInitialized() {
		// Another part of the process (a test calling onnxruntime_go
		// directly) loaded the library first; it loads only once.
		runtimeState.ready, runtimeState.libPath = true, "loaded elsewhere in the process"
		return runtimeState.libPath, nil
	}
	path, err := findLibrary()
	if err != nil {
		return "", err
	}
	ortgo.SetSharedLibraryPath(path)
	// Errors only: ONNX Runtime writes its own plain-text log lines to
	// stderr, where they interleave with the plugin's JSON logs.
	if err := ortgo.InitializeEnvironment(ortgo.WithLogLevelError()); err != nil {
		return "", fmt.Errorf("ort: cannot initialise ONNX Runtime from %s: %v: %w", path, err, sdk.ErrUnavailable)
	}
	runtimeState.ready = true
	runtimeState.libPath = path
	return path, nil
}
