package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

// oneKey accepts exactly one token.
type oneKey string

func (k oneKey) Check(token []byte) bool { return string(token) == string(k) }

// doAuth sends a request with the given Authorization header; "-" sends
// none.
func doAuth(t *testing.T, c *http.Client, method, path, body, authorization string) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://rerank.test"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if authorization != "-" {
		req.Header["Authorization"] = []string{authorization}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return response{resp.StatusCode, resp.Header, b.String()}
}

func TestAuth(t *testing.T) {
	const key = "0123456789abcdef-secret"
	scorer := &optionScorer{scores: map[string]float32{"a": 0.5}}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 20}, "org/test-model")
	c := testServer(t, Config{Service: svc, Auth: oneKey(key)})
	routes := []struct{ method, path, body, shape string }{
		{"POST", "/v1/rerank", `{"query":"q","candidates":["a"]}`, `{"detail":`},
		{"POST", "/v1/rerank", `{"query":"q","documents":["a"]}`, `{"detail":`},
		{"POST", "/v2/rerank", `{"query":"q","documents":["a"]}`, `{"message":`},
		{"POST", "/rerank", `{"query":"q","documents":["a"]}`, `{"detail":`},
		{"POST", "/rerank", `{"query":"q","texts":["a"]}`, `{"error":`},
		{"GET", "/info", ``, `{"error":`},
		{"GET", "/v1/models", ``, `{"detail":`},
	}
	for _, r := range routes {
		f := func(authorization string, wantChallenge string) {
			t.Helper()
			got := doAuth(t, c, r.method, r.path, r.body, authorization)
			if got.code != 401 || !strings.HasPrefix(got.body, r.shape) {
				t.Errorf("%s %s with Authorization %q: %d %s, want 401 %s…", r.method, r.path, authorization, got.code, got.body, r.shape)
			}
			if ch := got.header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, "Bearer ") || strings.Contains(ch, "invalid_token") != (wantChallenge == "invalid_token") {
				t.Errorf("%s %s with Authorization %q: WWW-Authenticate %q", r.method, r.path, authorization, ch)
			}
			if strings.Contains(got.body, key) || strings.Contains(got.body, "wrong") {
				t.Errorf("%s %s: the answer shows a token: %s", r.method, r.path, got.body)
			}
		}
		f("-", "")
		f("", "")
		f("   ", "")
		f("Bearer wrong", "invalid_token")
		f("Bearer "+key[:len(key)-1], "invalid_token")
		f("Bearer "+key+"x", "invalid_token")
		f("Bearer ", "invalid_token")
		f("Basic "+key, "invalid_token")
		f(key, "invalid_token")
		for _, ok := range []string{"Bearer " + key, "bearer " + key, "BEARER  " + key + " "} {
			if got := doAuth(t, c, r.method, r.path, r.body, ok); got.code != 200 {
				t.Errorf("%s %s with Authorization %q: %d %s", r.method, r.path, ok, got.code, got.body)
			}
		}
	}
	// Probes need no token.
	for _, path := range []string{"/health", "/"} {
		if got := doAuth(t, c, "GET", path, "", "-"); got.code != 200 {
			t.Errorf("GET %s without a token: %d %s", path, got.code, got.body)
		}
	}

	// Authentication off: an empty header (Dify's, when no key is set) or
	// any token is ignored.
	open := testServer(t, Config{Service: svc})
	for _, authorization := range []string{"", "-", "Bearer anything"} {
		for _, r := range routes {
			if got := doAuth(t, open, r.method, r.path, r.body, authorization); got.code != 200 {
				t.Errorf("auth off: %s %s with Authorization %q: %d %s", r.method, r.path, authorization, got.code, got.body)
			}
		}
	}
}
