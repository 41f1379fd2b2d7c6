package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// clientsDir holds the npm project of the real client SDKs: package.json
// and package-lock.json pin exact versions; node_modules is installed there
// by npm ci (and ignored by git).
func clientsDir() string { return filepath.Join(repoRoot, "proxy", "e2e", "testdata", "clients") }

// requireTool finds a tool on PATH. Under CI (CI=true) a missing tool fails
// the test, so that CI never passes by skipping; elsewhere it skips.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required for the client SDK tests and CI must run them: %v", name, err)
	}
	t.Skipf("%s not found (%v); the client SDK tests need node and npm", name, err)
	return ""
}

var npmOnce struct {
	sync.Mutex
	done bool
}

// lockStamp names the file in node_modules that records the sha256 of the
// package-lock.json it was installed from.
const lockStamp = ".rerank-installed-lock-sha256"

// installClients runs npm ci in clientsDir unless node_modules was already
// installed from the same package-lock.json.
func installClients(t *testing.T) {
	t.Helper()
	npmOnce.Lock()
	defer npmOnce.Unlock()
	if npmOnce.done {
		return
	}
	npm := requireTool(t, "npm")
	requireTool(t, "node")
	dir := clientsDir()
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join(dir, "node_modules", lockStamp)
	if got, err := os.ReadFile(stamp); err != nil || string(got) != want {
		// The limit stops a hung install from hanging the suite; npm ci
		// of these packages takes well under a minute.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
		if err := os.WriteFile(stamp, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	npmOnce.done = true
}

// clientScore is one result as a client SDK reported it.
type clientScore struct {
	Index    int             `json:"index"`
	Score    float64         `json:"score"`
	Document json.RawMessage `json:"document"`
}

// TestRealClients runs the real npm SDKs, unmodified, against the server
// binary with bearer auth on: the Cohere SDK's CohereClientV2.rerank and
// CohereClient.rerank (object documents, returnDocuments), LangChain's
// CohereRerank.compressDocuments, and the Vercel AI SDK's rerank() with
// @ai-sdk/cohere. Every client must report, for every document, exactly
// the seed route's score.
func TestRealClients(t *testing.T) {
	requireRuntime(t)
	installClients(t)
	const key = "client-sdk-token-0123456789"
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, []string{"RERANK_API_KEY_FILE=" + keyFile}, "--model", modelDir(t, "tiny-bert"), "--model-name", "org/tiny-bert", "--max-length", "64")
	s.waitHealth(t, "ok")
	query := "what do pandas eat?"
	docs := dialectDocs

	seedBody, _ := json.Marshal(map[string]any{"query": query, "candidates": docs})
	req, _ := newAuthRequest(s.url+"/v1/rerank", seedBody, key)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	resp.Body.Close()
	seed := scoresByIndex(t, reply{resp.StatusCode, resp.Header, b.Bytes()}, "score", len(docs))

	docsJSON, _ := json.Marshal(docs)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "clients.mjs")
	cmd.Dir = clientsDir()
	cmd.Env = append(os.Environ(), "RERANK_URL="+s.url, "RERANK_MODEL_NAME=org/tiny-bert", "RERANK_TOKEN="+key,
		"RERANK_QUERY="+query, "RERANK_DOCS="+string(docsJSON))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node clients.mjs: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var got map[string][]clientScore
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("clients.mjs printed %s: %v", stdout.String(), err)
	}
	for _, name := range []string{"cohere_v2", "cohere_v1", "langchain", "ai_sdk"} {
		results := got[name]
		if len(results) != len(docs) {
			t.Errorf("%s: %d results for %d documents: %+v", name, len(results), len(docs), results)
			continue
		}
		for j, r := range results {
			if r.Index < 0 || r.Index >= len(docs) {
				t.Fatalf("%s: bad index %d", name, r.Index)
			}
			if r.Score != seed[r.Index] {
				t.Errorf("%s: document %d scored %v, the seed route %v", name, r.Index, r.Score, seed[r.Index])
			}
			if j > 0 && r.Score > results[j-1].Score {
				t.Errorf("%s: results not sorted: %+v", name, results)
			}
		}
	}
	for _, r := range got["cohere_v1"] {
		var doc struct {
			Text string `json:"text"`
			ID   string `json:"id"`
		}
		if err := json.Unmarshal(r.Document, &doc); err != nil || doc.Text != docs[r.Index] || doc.ID != "doc-"+string(rune('0'+r.Index)) {
			t.Errorf("cohere_v1: document %d came back as %s, want the object sent", r.Index, r.Document)
		}
	}
}

// newAuthRequest is a JSON POST with a bearer token.
func newAuthRequest(url string, body []byte, key string) (*http.Request, error) {
	req, err := http.NewRequest("POST", url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	return req, nil
}
