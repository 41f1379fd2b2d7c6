package ort

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
)

func TestLibraryCandidates(t *testing.T) {
	f := func(name, env, exeDir, lib string, want []string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			if got := libraryCandidates(env, exeDir, lib); !reflect.DeepEqual(got, want) {
				t.Errorf("libraryCandidates = %v, want %v", got, want)
			}
		})
	}
	f("env first, then beside the executable, then ../lib/onnxruntime", "/opt/ort", "/srv/rerank/bin", "libonnxruntime.so.1",
		[]string{"/opt/ort/libonnxruntime.so.1", "/srv/rerank/bin/libonnxruntime.so.1", filepath.Join("/srv/rerank/lib/onnxruntime", "libonnxruntime.so.1")})
	f("no env", "", "/srv/rerank/bin", "libonnxruntime.1.dylib",
		[]string{"/srv/rerank/bin/libonnxruntime.1.dylib", "/srv/rerank/lib/onnxruntime/libonnxruntime.1.dylib"})
	f("nothing known", "", "", "libonnxruntime.so.1", nil)
}

func TestLibraryName(t *testing.T) {
	for goos, want := range map[string]string{"linux": "libonnxruntime.so.1", "darwin": "libonnxruntime.1.dylib", "windows": "onnxruntime.dll"} {
		if got := libraryName(goos); got != want {
			t.Errorf("libraryName(%s) = %s, want %s", goos, got, want)
		}
	}
}

func TestFindLibraryNamesWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(LibraryDirEnv, dir)
	_, err := findLibrary()
	if !errors.Is(err, sdk.ErrUnavailable) {
		t.Fatalf("findLibrary: %v, want ErrUnavailable", err)
	}
	for _, want := range []string{dir, "plugins/ortlib.sh", LibraryDirEnv, Version} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
