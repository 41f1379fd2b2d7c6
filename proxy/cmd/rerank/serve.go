package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/api"
	"github.com/rerank-sidecar/rerank/proxy/internal/auth"
	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
	"github.com/rerank-sidecar/rerank/proxy/internal/cache"
	"github.com/rerank-sidecar/rerank/proxy/internal/hub"
	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// serveConfig is the serve command's configuration, from flags and their
// environment variables.
type serveConfig struct {
	model             string
	modelName         string
	revision          string
	backend           string
	precision         string
	host              string
	port              int
	maxLength         int
	maxCandidates     int
	maxCandidateChars int
	maxQueryChars     int
	// quantization is QUANTIZATION's value when it set the precision
	// (resolved per backend by aliasPrecision), else empty.
	quantization      string
	timeout           time.Duration
	maxBodyBytes      int
	threads           int
	pluginDir         string
	cacheDir          string
	logLevel          string
	logJSON           bool
	pprofAddr         string
	disableArena      optionalBool // unset: the plugin's default for its device
	disableMemPattern optionalBool // unset: the plugin's default for its device
	backendOptions    backendOptions
	modelsFile        string
	keepAlive         keepAliveValue
	maxLoaded         int
	batch             batchFlags
	cache             cacheFlags
	obs               obsFlags
	auth              auth.Config
	windows           windowFlags
	conn              connFlags
	// entries are the served models: the models file's, or the one the
	// single-model flags describe; the first is the default.
	entries []modelEntry
}

// serveFlags defines the serve flags on fs and returns the config they fill
// and the environment variable of each flag.
func serveFlags(fs *flag.FlagSet) (*serveConfig, map[string]string) {
	c := &serveConfig{}
	env := map[string]string{}
	str := func(p *string, name, envName, def, help string) {
		fs.StringVar(p, name, def, help+" Environment: "+envName+".")
		env[name] = envName
	}
	num := func(p *int, name, envName string, def int, help string) {
		fs.IntVar(p, name, def, help+" Environment: "+envName+".")
		env[name] = envName
	}
	str(&c.model, "model", "RERANK_MODEL", "",
		"The model to serve: a local directory in Hugging Face layout (config.json, tokenizer.json, onnx/model.onnx), or a Hugging Face repo id such as BAAI/bge-reranker-v2-m3, resolved in the model cache and downloaded when missing. Empty serves a generated MiniLM-L6-shaped test model with random weights, whose scores are meaningless.")
	str(&c.modelName, "model-name", "RERANK_MODEL_NAME", "",
		"The model name the API reports and accepts in \"model\". Empty means the repo id, or a local directory's base name.")
	str(&c.revision, "revision", "RERANK_MODEL_REVISION", "main",
		"The hub revision (branch, tag or commit) of a repo id. Default main.")
	str(&c.backend, "backend", "RERANK_BACKEND", backend.CPU,
		"The backend plugin: cpu, cuda, coreml (the ONNX Runtime plugins rerank-onnx-*), auto (coreml on darwin/arm64, else cuda where its plugin loads, falling back to cpu and logging why), or the KIND of any plugin binary rerank-KIND in the plugin directory. Default cpu.")
	str(&c.precision, "precision", "RERANK_PRECISION", string(sdk.FP32),
		"The precision the model runs at: fp32, fp16, bf16 or int8; the plugin refuses a precision it cannot run and says which it supports. Default fp32. The older QUANTIZATION=none|bf16|int8 is accepted as an alias when RERANK_PRECISION is unset (none: the backend's default).")
	str(&c.host, "host", "HOST", "0.0.0.0",
		"The address to listen on. Default 0.0.0.0, every interface.")
	num(&c.port, "port", "PORT", 8080,
		"The TCP port to listen on; 0 picks a free one and logs it. Default 8080.")
	num(&c.maxLength, "max-length", "RERANK_MAX_LENGTH", 512,
		"The maximum number of tokens per (query, candidate) pair; longer candidates are truncated, never rejected. Default 512, capped by the model's position embeddings.")
	num(&c.maxCandidates, "max-candidates", "RERANK_MAX_CANDIDATES", 200,
		"The largest number of candidates in one request, and the largest top_k; more is answered with 422. Default 200.")
	num(&c.maxQueryChars, "max-query-chars", "RERANK_MAX_QUERY_LENGTH", defaultMaxQueryChars,
		"The longest query in Unicode characters; a longer one is answered with 422 naming this limit. Default 32768: eight times the longest candidate, and far beyond the tokens a pair can hold (a longer query is truncated like a document).")
	num(&c.maxCandidateChars, "max-candidate-chars", "RERANK_MAX_CANDIDATE_LENGTH", 4000,
		"The longest candidate in Unicode characters; a longer one is answered with 422. Default 4000.")
	fs.Var((*secondsValue)(&c.timeout), "timeout",
		"The time budget of one rerank request, queue wait and inference included, in seconds (fractions allowed, or a Go duration such as 500ms); a request over it is answered with 504. Default 10 seconds. Environment: RERANK_SERVER_TIMEOUT.")
	env["timeout"] = "RERANK_SERVER_TIMEOUT"
	c.timeout = 10 * time.Second
	num(&c.maxBodyBytes, "max-body-bytes", "RERANK_MAX_BODY_BYTES", api.DefaultMaxBodyBytes,
		"The largest request body in bytes; a larger one is answered with 413. Default 2097152 (2 MiB).")
	num(&c.threads, "threads", "RERANK_THREADS", 0,
		"The number of threads one inference run may use inside the plugin. Default 0 lets the plugin choose: the ONNX Runtime CPU plugin runs one thread per run and as many runs at once as there are CPUs (of the machine, or of the container's CPU limit), spreading each batch's length-matched runs over them; N > 0 runs N threads per run and CPUs/N runs at once. The CUDA and CoreML plugins run one batch at a time on ONNX Runtime's threads.")
	str(&c.pluginDir, "plugin-dir", "RERANK_PLUGIN_DIR", "",
		"The directory holding the plugin binaries rerank-KIND (rerank-onnx-cpu, rerank-onnx-cuda, rerank-onnx-coreml, and any other backend's). Default: the directory of this executable.")
	str(&c.modelsFile, "models-file", "RERANK_MODELS_FILE", "",
		"A YAML file listing several models to serve (models: [{name, model, aliases, backend, precision, max_length, threads, keep_alive, revision}]); requests pick one by name or alias in \"model\", and the first is the default. Fields an entry leaves out take the flags of the same name. Default empty: serve the one model of --model.")
	c.keepAlive = keepAliveValue(models.Never)
	fs.Var(&c.keepAlive, "keep-alive",
		"How long a model stays loaded with no request before its plugin process is stopped and its memory returned; the next request loads it again and waits for it. A duration (5m), seconds (300), 0 (unload as soon as idle) or never. A models file entry's keep_alive overrides it. Default never: a server keeps its model loaded, as the server it replaces did, so that no request pays a reload; beside an LLM (the macOS sidecar) use Ollama's 5m. Environment: RERANK_KEEP_ALIVE.")
	env["keep-alive"] = "RERANK_KEEP_ALIVE"
	num(&c.maxLoaded, "max-loaded-models", "RERANK_MAX_LOADED_MODELS", 0,
		"The most models loaded at once; loading one more first unloads the least recently used idle one. Default 0: no bound.")
	str(&c.cacheDir, "cache-dir", "RERANK_CACHE_DIR", hub.DefaultCacheDir(),
		"The model cache directory: downloaded models and the generated test model live here. Default $XDG_CACHE_HOME/rerank or ~/.cache/rerank.")
	str(&c.logLevel, "log-level", "RERANK_LOG_LEVEL", "info",
		"The log level: trace, debug, info, warn or error. Default info.")
	str(&c.pprofAddr, "pprof-addr", "RERANK_PPROF_ADDR", "",
		"An address such as 127.0.0.1:6060 on which to serve Go's /debug/pprof profiles, for finding where the proxy spends its time. Default empty: off. Keep it on loopback: profiles reveal internals.")
	str(&c.auth.KeyFile, "api-key-file", "RERANK_API_KEY_FILE", "",
		"A file of bearer tokens, one per line (at least 16 characters each, from RFC 6750's token alphabet): with it every scoring route, /v1/models and /info require Authorization: Bearer <token>, and /health and / stay open. The replaced server's INFERENCE_SERVICE_TOKEN_FILE (default /run/secrets/inference_service_token, used when it exists) adds its token; INFERENCE_SERVICE_AUTH=disabled turns authentication off. A configured file that is missing, empty or holds an invalid token stops the server from starting. Default empty: off unless the default secrets file exists.")
	fs.BoolVar(&c.logJSON, "log-json", false, "Log JSON lines instead of text. Default false. Environment: RERANK_LOG_JSON.")
	env["log-json"] = "RERANK_LOG_JSON"
	memoryFlagsOn(fs, c, env)
	backendOptionsOn(fs, c, env)
	batchFlagsOn(fs, &c.batch, env)
	cacheFlagsOn(fs, &c.cache, env)
	obsFlagsOn(fs, &c.obs, env)
	windowFlagsOn(fs, &c.windows, env)
	connFlagsOn(fs, &c.conn, env)
	return c, env
}

// defaultMaxQueryChars is --max-query-chars's default. The server this one
// replaces had no query limit, so it is generous: 32,768 characters is eight
// times the longest candidate and about sixty times the tokens a 512-token
// pair holds; the cap keeps a request from filling plugin messages with one
// query repeated for every candidate.
const defaultMaxQueryChars = 32768

// secondsValue is a duration flag that takes seconds ("10", "0.5") or a Go
// duration ("500ms").
type secondsValue time.Duration

func (v *secondsValue) String() string { return time.Duration(*v).String() }

func (v *secondsValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f <= 0 {
			return fmt.Errorf("must be positive, got %v", f)
		}
		*v = secondsValue(time.Duration(f * float64(time.Second)))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want seconds (10, 0.5) or a duration (500ms), got %q", s)
	}
	if d <= 0 {
		return fmt.Errorf("must be positive, got %v", d)
	}
	*v = secondsValue(d)
	return nil
}

// parseServe reads the environment, then the flags, which win.
func parseServe(args []string, getenv func(string) string, stderr io.Writer) (*serveConfig, error) {
	fs := flag.NewFlagSet("rerank serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c, env := serveFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: rerank serve [flags]\n\n"+
			"Serves POST /v1/rerank (seed, Jina and Cohere v1 shapes), POST /v2/rerank (Cohere v2), POST /rerank (Jina, TEI), GET /v1/models, GET /info, GET /health and GET / over HTTP, scoring on backend plugins, one per model.\n"+
			"Each flag may also be set by its environment variable; a flag given on the command line wins.\n\nflags:\n")
		// Each help sentence states its default, so flag's own
		// "(default …)" suffix is left out.
		fs.VisitAll(func(f *flag.Flag) {
			typ, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(stderr, "  %s\n    \t%s\n", strings.TrimSpace("-"+f.Name+" "+typ), usage)
		})
	}
	var bad []string
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(env[f.Name])
		if env[f.Name] == "" || v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			bad = append(bad, fmt.Sprintf("%s=%q: %v", env[f.Name], v, err))
		}
	})
	if q := getenv(quantizationEnv); q != "" && getenv("RERANK_PRECISION") == "" {
		if p, ok := quantizationAlias(q); ok {
			c.precision = p
			c.quantization = strings.ToLower(strings.TrimSpace(q))
		} else {
			bad = append(bad, fmt.Sprintf("%s=%q: use none, bf16 or int8", quantizationEnv, q))
		}
	}
	c.auth.TokenFile = getenv("INFERENCE_SERVICE_TOKEN_FILE")
	switch v := getenv("INFERENCE_SERVICE_AUTH"); strings.ToLower(strings.TrimSpace(v)) {
	case "", "enabled":
	case "disabled":
		c.auth.Disabled = true
	default:
		bad = append(bad, fmt.Sprintf("INFERENCE_SERVICE_AUTH=%q: use disabled, or leave it unset", v))
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("serve: invalid environment: %s", strings.Join(bad, "; "))
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("serve: unexpected arguments %q", fs.Args())
	}
	switch {
	case c.port < 0 || c.port > 65535:
		return nil, fmt.Errorf("serve: --port %d is not a TCP port", c.port)
	case c.maxLength < 1:
		return nil, fmt.Errorf("serve: --max-length must be at least 1, got %d", c.maxLength)
	case c.maxCandidates < 1:
		return nil, fmt.Errorf("serve: --max-candidates must be at least 1, got %d", c.maxCandidates)
	case c.maxQueryChars < 1:
		return nil, fmt.Errorf("serve: --max-query-chars must be at least 1, got %d", c.maxQueryChars)
	case c.maxCandidateChars < 1:
		return nil, fmt.Errorf("serve: --max-candidate-chars must be at least 1, got %d", c.maxCandidateChars)
	case c.maxBodyBytes < 1:
		return nil, fmt.Errorf("serve: --max-body-bytes must be at least 1, got %d", c.maxBodyBytes)
	case c.threads < 0:
		return nil, fmt.Errorf("serve: --threads must not be negative, got %d", c.threads)
	case c.windows.maxWindows < 1:
		return nil, fmt.Errorf("serve: --max-windows must be at least 1, got %d", c.windows.maxWindows)
	case c.maxLoaded < 0:
		return nil, fmt.Errorf("serve: --max-loaded-models must not be negative, got %d", c.maxLoaded)
	}
	if err := backend.CheckKind(c.pluginDir, c.backend); err != nil {
		return nil, fmt.Errorf("serve: --backend: %w", err)
	}
	if c.modelsFile != "" {
		if c.model != "" || c.modelName != "" {
			return nil, fmt.Errorf("serve: --models-file and --model/--model-name both given: list the model in the file instead")
		}
		entries, err := readModelsFile(c.modelsFile, c)
		if err != nil {
			return nil, err
		}
		c.entries = entries
	} else {
		c.entries = []modelEntry{singleEntry(c)}
	}
	if err := c.batch.validate(); err != nil {
		return nil, err
	}
	if err := c.cache.validate(); err != nil {
		return nil, err
	}
	if err := c.conn.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// runServe runs the HTTP server until SIGINT or SIGTERM.
func runServe(args []string) int {
	c, err := parseServe(args, os.Getenv, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "rerank serve: %v\n", err)
		return 2
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "rerank",
		Output:     os.Stderr,
		Level:      hclog.LevelFromString(c.logLevel),
		JSONFormat: c.logJSON,
	})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, c, logger); err != nil {
		logger.Error("serve failed", "error", err)
		return 1
	}
	return 0
}

// serve starts the models' loads in the background, binds the port at once
// and answers requests until ctx ends.
func serve(ctx context.Context, c *serveConfig, logger hclog.Logger) error {
	if c.pprofAddr != "" {
		servePprof(c.pprofAddr, logger)
	}
	// Keys first: a server told to require a token never starts without
	// valid ones.
	keys, authNote, err := auth.Load(c.auth)
	if err != nil {
		return err
	}
	logger.Info(authNote)
	mreg := c.obs.registry()
	stopTracing, err := startTracing(ctx, logger)
	if err != nil {
		return err
	}
	defer stopTracing()
	var cacheCfg *cache.Config
	if c.cache.enabled() {
		cc := c.cache.config(logger.Named("cache"))
		cacheCfg = &cc
	}
	var warning string
	windows := &windowSource{maxWindows: c.windows.maxWindows, logger: logger.Named("window")}
	specs := make([]models.Spec, len(c.entries))
	for i, e := range c.entries {
		src := modelSource{spec: e.model, revision: e.revision, cacheDir: c.cacheDir}
		logger.Info("model", "name", e.name, "aliases", e.aliases, "source", src.describe(), "backend", e.backend,
			"precision", e.precision, "keep_alive", (*keepAliveValue)(&e.keepAlive).String(), "default", i == 0)
		if w := src.warning(); w != "" {
			logger.Warn("model "+e.name+" is a "+w, "model", e.name)
			if i == 0 {
				warning = w
			}
		}
		mm, name := mreg.Model(e.name), e.name
		specs[i] = models.Spec{
			Name:    e.name,
			Aliases: e.aliases,
			Backend: backend.Config{
				Kind:      e.backend,
				PluginDir: c.pluginDir,
				Load: sdk.LoadConfig{
					Precision:      sdk.Precision(e.precision),
					MaxLength:      e.maxLength,
					IntraOpThreads: e.threads,
					CacheDir:       c.cacheDir,
					// Unset unless a flag says otherwise (memoryFlagsOn).
					DisableArena:      c.disableArena.ptr(),
					DisableMemPattern: c.disableMemPattern.ptr(),
					Options:           c.backendOptions,
				},
				PrecisionFor: aliasPrecision(c.quantization, logger),
				Logger:       logger,
				Metrics:      mm,
			},
			Prepare: func(ctx context.Context, load *sdk.LoadConfig) error {
				dir, err := src.resolve(ctx, logger)
				load.ModelDir = dir
				windows.prepared(name, dir)
				return err
			},
			KeepAlive: e.keepAlive,
			Batch: func(info sdk.ModelInfo) batch.Config {
				cfg := batchConfig(&c.batch, info)
				cfg.Metrics = mm
				return cfg
			},
			Cache: cacheCfg,
		}
	}
	logger.Info("starting", "version", version, "models", len(specs), "default", specs[0].Name, "max_loaded_models", c.maxLoaded)

	// The registry: each model's plugin process, and its pipeline (score
	// cache, micro-batcher), built once the plugin has loaded the model
	// from what it reports.
	registry, err := models.New(models.Config{Models: specs, MaxLoaded: c.maxLoaded, Logger: logger})
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	for _, m := range registry.Models() {
		mreg.Model(m.Name()).SetState(modelState(m))
	}
	registry.Start()
	defer registry.Close()
	def := registry.Default()
	windows.info = registry.Info

	// /health's sections describe the default model, as the seed's did
	// its one model; "models" lists them all.
	sections := map[string]func() any{
		"backend":           func() any { return def.Stats() },
		"model_info":        func() any { return modelInfoSection(def.Status().Model, c.quantization) },
		"micro_batcher":     func() any { return def.BatchStats() },
		"local_cache":       func() any { return def.CacheStats().Local },
		"distributed_cache": func() any { return def.CacheStats().Distributed },
	}
	nofile := raiseOpenFileLimit()
	svc := rerank.New(registry, rerank.Limits{MaxCandidates: c.maxCandidates, MaxCandidateChars: c.maxCandidateChars, MaxQueryChars: c.maxQueryChars}, def.Name())
	svc.SetWindows(windows.splitter, c.windows.on)
	apiCfg := api.Config{
		Service: svc,
		Status: func() api.Status {
			st := def.Status()
			return api.Status{Ready: st.Ready, Failed: st.State == models.Failed, Message: st.Message, Device: st.Device,
				LoadAttempts: st.LoadAttempts, LastError: st.LastError, NextRetry: st.NextRetry}
		},
		Models:         registry.Statuses,
		Version:        version,
		Timeout:        c.timeout,
		MaxBodyBytes:   c.maxBodyBytes,
		HealthSections: sections,
		Warning:        warning,
		Logger:         logger.Named("api"),
		Metrics:        mreg,
		ServeMetrics:   c.obs.metricsAddr == "",
		AccessLog:      c.obs.accessLogger(logger),
		Info:           apiInfo(c, def),
		Tracing:        tracerProvider(),
		Conn:           c.conn.limits(nofile, logger),
	}
	logger.Info("connection limits", "max_connections", apiCfg.Conn.MaxConnections, "max_conns_per_ip", apiCfg.Conn.MaxConnsPerIP,
		"read_timeout", apiCfg.Conn.ReadTimeout, "write_timeout", apiCfg.Conn.WriteTimeout, "idle_timeout", apiCfg.Conn.IdleTimeout, "open_file_limit", nofile)
	if keys != nil {
		apiCfg.Auth = keys
	}
	srv := api.New(apiCfg)
	if mreg != nil && c.obs.metricsAddr != "" {
		if err := serveMetrics(ctx, c.obs.metricsAddr, mreg, logger); err != nil {
			return fmt.Errorf("serve: --metrics-addr: %w", err)
		}
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(c.host, strconv.Itoa(c.port)))
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	logger.Info("listening; the default model loads in the background and /health answers 503 until it is ready", "addr", ln.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down: finishing open requests")
	// Open requests get their own budget to finish, and a little more for
	// writing the answers.
	sctx, cancel := context.WithTimeout(context.Background(), c.timeout+5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("shutdown did not finish cleanly", "error", err)
	}
	<-served
	return nil
}

// modelInfo is /health's "model_info": what the plugin actually loaded. The
// issue asks for these under "model", but the wire contract (and clients of
// the server this replaces) read "model" as the model's name, so the object
// sits beside it.
type modelInfo struct {
	Name          string `json:"name"`
	Precision     string `json:"precision"`
	Quantization  string `json:"quantization"`
	Source        string `json:"source"`
	Backend       string `json:"backend"`
	Device        string `json:"device"`
	Revision      string `json:"revision"`
	MaxLength     int    `json:"max_length"`
	Activation    string `json:"activation"`
	PrecisionNote string `json:"precision_note,omitempty"`
	// PrecisionAlias says what QUANTIZATION asked for and what it became
	// on this backend, when it set the precision.
	PrecisionAlias string `json:"precision_alias,omitempty"`
	VariantFile    string `json:"variant_file,omitempty"`
}

// modelInfoSection is nil (JSON null) until the model is loaded.
func modelInfoSection(m *sdk.ModelInfo, quantization string) *modelInfo {
	if m == nil {
		return nil
	}
	return &modelInfo{
		PrecisionAlias: aliasNote(quantization, m.Backend, m.Precision),
		Name:           m.Name, Precision: string(m.Precision), Quantization: m.Quantization, Source: m.Source,
		Backend: m.Backend, Device: m.Device, Revision: m.Revision, MaxLength: m.MaxLength,
		Activation: m.Activation, PrecisionNote: m.Details["precision_note"], VariantFile: m.Details["variant_file"],
	}
}
