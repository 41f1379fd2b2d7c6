package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/sdk"
)

// modelEntry is one served model, from --models-file or from the
// single-model flags.
type modelEntry struct {
	name      string
	model     string
	revision  string
	aliases   []string
	backend   string
	precision string
	maxLength int
	threads   int
	keepAlive time.Duration
}

// fileEntry is a models file entry as written; empty fields take the
// server's flags.
type fileEntry struct {
	Name      string   `yaml:"name"`
	Model     string   `yaml:"model"`
	Revision  string   `yaml:"revision"`
	Aliases   []string `yaml:"aliases"`
	Backend   string   `yaml:"backend"`
	Precision string   `yaml:"precision"`
	MaxLength *int     `yaml:"max_length"`
	Threads   *int     `yaml:"threads"`
	KeepAlive *string  `yaml:"keep_alive"`
}

// modelsFile is the YAML document of --models-file.
type modelsFile struct {
	Models []fileEntry `yaml:"models"`
}

// singleEntry is the one model the single-model flags describe.
func singleEntry(c *serveConfig) modelEntry {
	name := c.modelName
	if name == "" {
		name = modelSource{spec: c.model}.name()
	}
	return modelEntry{
		name: name, model: c.model, revision: c.revision, backend: c.backend, precision: c.precision,
		maxLength: c.maxLength, threads: c.threads, keepAlive: time.Duration(c.keepAlive),
	}
}

// readModelsFile reads and checks a models file; fields an entry leaves out
// take the server's flags (c). An error names the entry and the field.
func readModelsFile(path string, c *serveConfig) ([]modelEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("serve: --models-file: %w", err)
	}
	entries, err := parseModelsFile(b, c)
	if err != nil {
		return nil, fmt.Errorf("serve: models file %s: %w", path, err)
	}
	return entries, nil
}

// parseModelsFile parses a models file's bytes (see readModelsFile).
func parseModelsFile(b []byte, c *serveConfig) ([]modelEntry, error) {
	var doc modelsFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty: want a models: list")
		}
		return nil, errors.New(strings.NewReplacer("type main.fileEntry", "a model entry", "type main.modelsFile", "the file (want a models: list)", "\n ", "").Replace(err.Error()))
	}
	if len(doc.Models) == 0 {
		return nil, errors.New("no models: want a models: list with at least one entry")
	}
	var out []modelEntry
	names := map[string]int{}
	for i, fe := range doc.Models {
		where := fmt.Sprintf("models[%d]", i)
		if fe.Name != "" {
			where += fmt.Sprintf(" (%s)", fe.Name)
		}
		bad := func(field, format string, args ...any) error {
			return fmt.Errorf("%s, field %s: %s", where, field, fmt.Sprintf(format, args...))
		}
		e := modelEntry{
			name: fe.Name, model: fe.Model, revision: fe.Revision, aliases: fe.Aliases,
			backend: fe.Backend, precision: fe.Precision,
			maxLength: c.maxLength, threads: c.threads, keepAlive: time.Duration(c.keepAlive),
		}
		if e.model == "" {
			return nil, bad("model", "missing: a local model directory or a repo id such as BAAI/bge-reranker-v2-m3")
		}
		if e.name == "" {
			return nil, bad("name", "missing: the name the API reports and routes on")
		}
		if e.revision == "" {
			e.revision = c.revision
		}
		if e.backend == "" {
			e.backend = c.backend
		} else if err := backend.CheckKind(c.pluginDir, e.backend); err != nil {
			return nil, bad("backend", "%v", err)
		}
		if e.precision == "" {
			e.precision = c.precision
		} else if !validPrecision(e.precision) {
			return nil, bad("precision", "%q: use fp32, fp16, bf16 or int8", e.precision)
		}
		if fe.MaxLength != nil {
			if *fe.MaxLength < 1 {
				return nil, bad("max_length", "must be at least 1, got %d", *fe.MaxLength)
			}
			e.maxLength = *fe.MaxLength
		}
		if fe.Threads != nil {
			if *fe.Threads < 0 {
				return nil, bad("threads", "must not be negative, got %d", *fe.Threads)
			}
			e.threads = *fe.Threads
		}
		if fe.KeepAlive != nil {
			var k keepAliveValue
			if err := k.Set(*fe.KeepAlive); err != nil {
				return nil, bad("keep_alive", "%v", err)
			}
			e.keepAlive = time.Duration(k)
		}
		for j, n := range append([]string{e.name}, e.aliases...) {
			field := "name"
			if j > 0 {
				field = fmt.Sprintf("aliases[%d]", j-1)
			}
			if n == "" {
				return nil, bad(field, "empty")
			}
			if k, ok := names[n]; ok {
				return nil, bad(field, "%q is already a name or alias of models[%d]", n, k)
			}
			names[n] = i
		}
		out = append(out, e)
	}
	return out, nil
}

func validPrecision(p string) bool {
	switch sdk.Precision(p) {
	case sdk.FP32, sdk.FP16, sdk.BF16, sdk.INT8:
		return true
	}
	return false
}

// keepAliveValue is a keep_alive: a Go duration ("5m", "90s"), seconds
// ("300"), 0 (unload as soon as idle), or a negative number or "never"
// (models.Never: keep loaded).
type keepAliveValue time.Duration

func (v *keepAliveValue) String() string {
	if time.Duration(*v) < 0 {
		return "never"
	}
	return time.Duration(*v).String()
}

func (v *keepAliveValue) Set(s string) error {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "never", "forever", "inf", "infinite":
		*v = keepAliveValue(models.Never)
		return nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 {
			*v = keepAliveValue(models.Never)
		} else {
			*v = keepAliveValue(time.Duration(f * float64(time.Second)))
		}
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration (5m, 90s), seconds (300), 0 (unload when idle) or never, got %q", s)
	}
	if d < 0 {
		d = models.Never
	}
	*v = keepAliveValue(d)
	return nil
}
