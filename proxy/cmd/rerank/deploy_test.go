package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The image the compose and Kubernetes files run downloads its model from
// the hub over HTTPS, so its final stage must carry CA certificates: Go's
// TLS reads /etc/ssl/certs, which debian:*-slim does not ship (issue 13,
// failure 8). No container runtime is assumed on the test machine, so the
// Dockerfile's final stage is read.
func TestDockerImageHasCACertificates(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	// Continuation lines join their instruction.
	text = strings.ReplaceAll(text, "\\\n", " ")
	stages := regexp.MustCompile(`(?m)^FROM\s`).Split(text, -1)
	final := stages[len(stages)-1]
	install := regexp.MustCompile(`(?m)^RUN\s.*apt-get\s[^\n]*install[^\n]*\bca-certificates\b`)
	copied := regexp.MustCompile(`(?m)^COPY\s.*--from=\S+\s[^\n]*/etc/ssl/certs`)
	if !install.MatchString(final) && !copied.MatchString(final) {
		t.Fatalf("the final stage of deploy/Dockerfile installs no CA certificates; HTTPS downloads from the hub fail in the image:\n%s", final)
	}
	// The compose and Kubernetes examples name a hub repo, the case that
	// needs them.
	for _, p := range []string{"compose", "kubernetes"} {
		matches, _ := filepath.Glob(filepath.Join("..", "..", "..", "deploy", p, "*"))
		found := false
		for _, m := range matches {
			if b, err := os.ReadFile(m); err == nil && strings.Contains(string(b), "RERANK_MODEL") {
				found = true
			}
		}
		if !found {
			t.Errorf("deploy/%s no longer sets RERANK_MODEL; revisit this test", p)
		}
	}
}
