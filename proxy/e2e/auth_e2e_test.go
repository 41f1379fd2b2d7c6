package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuthKeyFileErrorsRefuseToStart starts `rerank serve` with each kind of
// broken key file and checks that it exits at once with a message that says
// what is wrong, never showing the key.
func TestAuthKeyFileErrorsRefuseToStart(t *testing.T) {
	requireRuntime(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	f := func(name string, env []string, args []string, wantMsg string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "rerank"), append([]string{"serve", "--host", "127.0.0.1", "--port", "0"}, args...)...)
		cmd.Env = append(os.Environ(), "RERANK_ORT_LIB_DIR="+ortLibDir, "RERANK_PLUGIN_DIR="+binDir, "RERANK_CACHE_DIR="+t.TempDir())
		cmd.Env = append(cmd.Env, env...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("%s: the server kept running:\n%s", name, out.String())
		}
		if err == nil || !strings.Contains(out.String(), wantMsg) {
			t.Errorf("%s: exit %v, output:\n%s\nwant a failure saying %q", name, err, out.String(), wantMsg)
		}
		if strings.Contains(out.String(), "short-key") || strings.Contains(out.String(), "bad key with spaces") {
			t.Errorf("%s: the output shows a key:\n%s", name, out.String())
		}
	}
	f("missing --api-key-file", nil, []string{"--api-key-file", filepath.Join(dir, "absent")}, "cannot read key file")
	f("missing RERANK_API_KEY_FILE", []string{"RERANK_API_KEY_FILE=" + filepath.Join(dir, "absent")}, nil, "cannot read key file")
	f("missing INFERENCE_SERVICE_TOKEN_FILE", []string{"INFERENCE_SERVICE_TOKEN_FILE=" + filepath.Join(dir, "absent")}, nil, "cannot read key file")
	f("empty", nil, []string{"--api-key-file", file("empty", "\n\n")}, "holds no key")
	f("short", []string{"INFERENCE_SERVICE_TOKEN_FILE=" + file("short", "short-key\n")}, nil, "at least 16 are required")
	f("outside the alphabet", nil, []string{"--api-key-file", file("spaces", "bad key with spaces inside\n")}, "outside RFC 6750")
	f("bad INFERENCE_SERVICE_AUTH", []string{"INFERENCE_SERVICE_AUTH=maybe"}, nil, "INFERENCE_SERVICE_AUTH")
}

// TestAuthServes serves with a key file and checks every protected route
// of every dialect answers 401 without the right token and 200 with it,
// while /health and / stay open; and that INFERENCE_SERVICE_AUTH=disabled
// serves the same routes without one.
func TestAuthServes(t *testing.T) {
	const key = "e2e-token-0123456789abcdef"
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("another-key-0123456789\n"+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := modelDir(t, "tiny-bert")
	routes := []struct{ method, path, body string }{
		{"POST", "/v1/rerank", `{"query":"q","candidates":["a"]}`},
		{"POST", "/v1/rerank", `{"query":"q","documents":["a"]}`},
		{"POST", "/v2/rerank", `{"query":"q","documents":["a"]}`},
		{"POST", "/rerank", `{"query":"q","texts":["a"]}`},
		{"POST", "/rerank", `{"query":"q","documents":["a"]}`},
		{"GET", "/info", ``},
		{"GET", "/v1/models", ``},
	}
	send := func(s *server, method, path, body, authorization string) reply {
		t.Helper()
		req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if authorization != "-" {
			req.Header["Authorization"] = []string{authorization}
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return reply{resp.StatusCode, resp.Header, b.Bytes()}
	}

	s := startServer(t, []string{"RERANK_API_KEY_FILE=" + keyFile}, "--model", dir)
	s.waitHealth(t, "ok")
	if !strings.Contains(s.logs.String(), "authentication on: 2 bearer key(s)") || strings.Contains(s.logs.String(), key) {
		t.Errorf("start-up log does not say authentication is on, or shows a key:\n%s", s.logs.String())
	}
	for _, r := range routes {
		for _, bad := range []string{"-", "", "Bearer wrong-token-0123456789abcdef", "Bearer " + key[:10], "Bearer " + key + key} {
			got := send(s, r.method, r.path, r.body, bad)
			if got.code != 401 || !strings.HasPrefix(got.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s with Authorization %q: %d %v %s, want 401 with a Bearer challenge", r.method, r.path, bad, got.code, got.header, got.body)
			}
		}
		if got := send(s, r.method, r.path, r.body, "Bearer "+key); got.code != 200 {
			t.Errorf("%s %s with the key: %d %s", r.method, r.path, got.code, got.body)
		}
	}
	for _, path := range []string{"/health", "/"} {
		if got := send(s, "GET", path, "", "-"); got.code != 200 {
			t.Errorf("GET %s without a token: %d %s", path, got.code, got.body)
		}
	}

	off := startServer(t, []string{"RERANK_API_KEY_FILE=" + keyFile, "INFERENCE_SERVICE_AUTH=disabled"}, "--model", dir)
	off.waitHealth(t, "ok")
	if !strings.Contains(off.logs.String(), "authentication off: INFERENCE_SERVICE_AUTH=disabled") {
		t.Errorf("start-up log does not say authentication is off:\n%s", off.logs.String())
	}
	for _, r := range routes {
		// Dify sends an empty Authorization header when no key is set.
		if got := send(off, r.method, r.path, r.body, ""); got.code != 200 {
			t.Errorf("auth disabled: %s %s: %d %s", r.method, r.path, got.code, got.body)
		}
	}
}
