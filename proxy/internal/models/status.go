package models

import (
	"strings"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
	"github.com/rerank-sidecar/rerank/proxy/internal/cache"
	"github.com/rerank-sidecar/rerank/sdk"
)

// Status is a model's state as /health and /v1/models report it.
type Status struct {
	// Name is the model's canonical name.
	Name string
	// Aliases are its further names.
	Aliases []string
	// Default says requests naming no model go to it.
	Default bool
	// State is loaded, loading, unloaded or failed.
	State State
	// Ready says requests for the model are answered or wait for its load:
	// it is loaded, unloaded, or loading on a request's demand. Loading at
	// startup or after its plugin died, or failed, it is not ready.
	Ready bool
	// Message says why the model is not loaded, for example a load error.
	Message string
	// LoadAttempts counts the failed attempts to load the model since its
	// last successful load; 0 when none failed.
	LoadAttempts int
	// LastError is the error of the last failed attempt, empty when none
	// failed since the last successful load.
	LastError string
	// NextRetry is when the next attempt starts, while a load that failed
	// with an error that may pass (Transient) or a restart waits to be
	// tried again; zero otherwise.
	NextRetry time.Time
	// Final says the load failed with an error that trying again cannot
	// cure: the model is failed until the server restarts.
	Final bool
	// Kind is the backend kind: the one running or last run (never auto)
	// once loaded, else the configured one.
	Kind string
	// Backend names the plugin as it reports itself (for example
	// "onnx-cpu") once loaded, else the plugin binary's name.
	Backend string
	// Device is where inference runs: the plugin's report once loaded,
	// else the kind.
	Device string
	// Precision is the precision the model runs at: the plugin's report
	// once loaded, else the configured one.
	Precision sdk.Precision
	// MaxLength is the tokens per pair: the plugin's report once loaded,
	// else the configured one.
	MaxLength int
	// PID is the plugin process's id while loaded, else 0.
	PID int
	// ResidentBytes is the plugin process's resident memory while loaded
	// (0 when unknown or unloaded).
	ResidentBytes int64
	// KeepAlive is how long the model stays loaded idle; Never is forever.
	KeepAlive time.Duration
	// LastUsed is when a request last used the model (zero if never).
	LastUsed time.Time
	// Created is when the model was registered: the server's start.
	Created time.Time
	// Loads counts the model's successful loads; Restarts the restarts of
	// a plugin that died.
	Loads, Restarts int
	// LoadDuration is how long the last successful load took, from
	// starting the plugin to the model being ready in it; 0 before one.
	LoadDuration time.Duration
	// Model is what the plugin reported about the loaded model; nil while
	// not loaded.
	Model *sdk.ModelInfo
}

// Status returns the model's status.
func (m *Model) Status() Status {
	m.mu.Lock()
	st := Status{
		Name: m.spec.Name, Aliases: m.spec.Aliases, Default: m.isDefault,
		State: m.state, Message: m.message, Ready: m.refusalLocked() == nil,
		Kind: m.spec.Backend.Kind, Device: m.spec.Backend.Kind,
		Precision: m.spec.Backend.Load.Precision, MaxLength: m.spec.Backend.Load.MaxLength,
		KeepAlive: m.spec.KeepAlive, LastUsed: m.lastUsed, Created: m.created,
		Loads: m.loads, Restarts: m.restarts, LoadDuration: m.loadDuration,
		LoadAttempts: m.failures, LastError: m.lastErr, NextRetry: m.nextRetry, Final: m.state == Failed,
	}
	if m.kind != "" {
		st.Kind, st.Device = m.kind, m.kind
	}
	st.Backend = strings.TrimPrefix(backend.Binary(st.Kind), backend.BinaryPrefix)
	if m.info != nil {
		info := *m.info
		st.Backend, st.Device, st.Precision, st.MaxLength = info.Backend, info.Device, info.Precision, info.MaxLength
		if m.cur != nil {
			st.Model = &info
		}
	}
	if m.cur != nil {
		st.PID = m.cur.plugin.PID()
	}
	m.mu.Unlock()
	if st.PID > 0 {
		if rss, err := backend.ResidentBytes(st.PID); err == nil {
			st.ResidentBytes = rss
		}
	}
	return st
}

// Stats returns the counters of the model's plugins, across its loads, as
// /health shows them under "backend".
func (m *Model) Stats() backend.Stats {
	m.mu.Lock()
	kind, restarts := m.kind, m.restarts
	m.mu.Unlock()
	if kind == "" {
		kind = m.spec.Backend.Kind
	}
	return backend.Stats{PairsScored: m.pairs.Load(), Batches: m.batches.Load(), Restarts: restarts, Kind: kind}
}

// BatchStats returns the micro-batcher's counters (kept across loads of
// the same weights, and while unloaded); zero before the first load.
func (m *Model) BatchStats() batch.Stats {
	m.mu.Lock()
	st := m.stages
	m.mu.Unlock()
	if st == nil {
		return batch.Stats{}
	}
	return st.batcher.Stats()
}

// CacheStats returns the counters of the model's score cache (kept across
// loads of the same weights, and while unloaded); zero, with
// distributed_cache.enabled saying whether Redis is configured, before the
// first load or with the cache off.
func (m *Model) CacheStats() cache.Stats {
	s := cache.Stats{}
	if m.spec.Cache != nil {
		s.Distributed.Enabled = m.spec.Cache.Redis.Enabled
	}
	m.mu.Lock()
	st := m.stages
	m.mu.Unlock()
	if st == nil || st.cache == nil {
		return s
	}
	st.closeMu.RLock()
	defer st.closeMu.RUnlock()
	if !st.closed {
		s = st.cache.Stats()
	}
	return s
}

// withPipeline calls f with the current pipeline, if any, without counting
// as a request (a /health poll does not keep a model loaded).
func (m *Model) withPipeline(f func(p *pipeline)) {
	m.mu.Lock()
	p := m.cur
	m.mu.Unlock()
	if p != nil {
		f(p)
	}
}
