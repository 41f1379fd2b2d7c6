// Package rerank turns one rerank request into scored, sorted results: it
// routes the request to the pipeline of the model it names, checks it against
// the server's limits, fans the query out to one (query, candidate) pair per
// candidate, has the model's pipeline score the pairs, and sorts and trims the
// results.
package rerank

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/rerank-sidecar/rerank/sdk"
)

// Scorer is the next pipeline stage: it returns one score per pair, in order.
type Scorer interface {
	Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error)
}

// Router finds the pipeline of a model by the name a request gives.
type Router interface {
	// Route returns the pipeline that scores for the model called name (a
	// name or an alias; "" is the default model) and the model's canonical
	// name, the one answers report. An unknown name returns an error
	// wrapping ErrUnknownModel; a model that cannot serve now (failed, or
	// loading at startup) an error wrapping sdk.ErrNotLoaded. Route does not
	// wait for a model to load: the returned pipeline does, within the
	// context of its Score call.
	Route(ctx context.Context, name string) (Scorer, string, error)
}

// ErrUnknownModel is wrapped by the error a Router returns for a model name
// it does not serve.
var ErrUnknownModel = errors.New("unsupported model")

// UnknownModelError is the error of a request naming a model the server
// does not serve; it wraps ErrUnknownModel and its message names the served
// models.
type UnknownModelError struct {
	// Name is the name the request gave.
	Name string
	// Served lists the names (and aliases) the server accepts.
	Served []string
}

// Error says which model was asked for and which are served.
func (e *UnknownModelError) Error() string {
	quoted := make([]string, len(e.Served))
	for i, n := range e.Served {
		quoted[i] = fmt.Sprintf("%q", n)
	}
	return fmt.Sprintf("%v %q: this server serves %s", ErrUnknownModel, e.Name, strings.Join(quoted, ", "))
}

// Unwrap makes errors.Is(err, ErrUnknownModel) hold.
func (e *UnknownModelError) Unwrap() error { return ErrUnknownModel }

// Single returns a Router for one model called name: it accepts "", name,
// and name's last path segment ("bge-reranker-v2-m3" for
// "BAAI/bge-reranker-v2-m3"), and routes them all to next.
func Single(name string, next Scorer) Router { return single{name: name, next: next} }

type single struct {
	name string
	next Scorer
}

func (s single) Route(_ context.Context, name string) (Scorer, string, error) {
	if name == "" || name == s.name || name == LastSegment(s.name) {
		return s.next, s.name, nil
	}
	return nil, "", &UnknownModelError{Name: name, Served: []string{s.name}}
}

// LastSegment returns the part of a model name after its last slash: a repo
// id's model name, which requests may use instead of the full id.
func LastSegment(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// Limits bound what one request may ask for.
type Limits struct {
	// MaxCandidates is the largest number of candidates in one request and
	// the largest top_k.
	MaxCandidates int
	// MaxCandidateChars is the longest candidate in Unicode code points.
	MaxCandidateChars int
	// MaxQueryChars is the longest query in Unicode code points; 0 means
	// no limit.
	MaxQueryChars int
}

// Request is a decoded rerank request; it owns its strings.
type Request struct {
	// Query is the search query.
	Query string
	// Candidates are the documents to rank.
	Candidates []string
	// Model is the model the client asked for; empty means the default one.
	Model string
	// TopK, when positive, keeps only the best TopK results; 0 keeps all.
	TopK int
	// HasTopK says the client sent a top_k, so TopK must be in range.
	HasTopK bool
	// Options are the scoring options every pair of the request is scored
	// with; the zero value is the model's defaults.
	Options sdk.PairOptions
	// Windows asks for long-document windows (see Splitter) when
	// HasWindows is set; otherwise the server's default applies.
	Windows, HasWindows bool
}

// Splitter splits a document too long for the model into windows, each
// scored with the query as an ordinary pair; the document's score is its
// best window's. Split returns nil for a document that fits.
type Splitter interface {
	Split(query, doc string) []string
}

// WindowSource returns the Splitter of the model with the given canonical
// name, or nil when it has none (yet).
type WindowSource func(model string) Splitter

// Result is the score of one candidate.
type Result struct {
	// Index is the candidate's position in the request.
	Index int
	// Score is the model's score with its activation applied.
	Score float32
}

// FieldError is one validation failure, shaped as FastAPI (pydantic v2)
// reports it so that the API can render it byte for byte.
type FieldError struct {
	// Type is pydantic's error type, for example "int_type".
	Type string `json:"type"`
	// Loc is the path to the offending value, for example ["body", "top_k"].
	Loc []any `json:"loc"`
	// Msg is the human-readable message.
	Msg string `json:"msg"`
	// Input is the offending value as received.
	Input any `json:"input"`
	// Ctx holds the constraint's parameters, for example {"ge": 1}.
	Ctx map[string]any `json:"ctx,omitempty"`
}

// ValidationError is a request refused as given; it wraps sdk.ErrInvalidInput.
type ValidationError struct {
	// Fields lists every failure found, in the order found.
	Fields []FieldError
}

// Error joins the messages.
func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		msgs[i] = fmt.Sprintf("%v: %s", f.Loc, f.Msg)
	}
	return "rerank: invalid request: " + strings.Join(msgs, "; ")
}

// Unwrap makes errors.Is(err, sdk.ErrInvalidInput) hold.
func (e *ValidationError) Unwrap() error { return sdk.ErrInvalidInput }

// invalid returns a ValidationError with one field.
func invalid(f FieldError) error { return &ValidationError{Fields: []FieldError{f}} }

// Response is the answer to a rerank request.
type Response struct {
	// Results are the scored candidates, best first, trimmed to TopK.
	Results []Result
	// Model is the canonical name of the model that scored them.
	Model string
}

// Service routes, validates, fans out, scores, sorts and trims.
type Service struct {
	router       Router
	limits       Limits
	defaultModel string
	// windows, when set, splits long documents of the requests that ask
	// for windows (all, when windowsOn is set, unless they ask not to).
	windows   WindowSource
	windowsOn bool
}

// SetWindows enables long-document windows from src, for every request when
// byDefault is set and otherwise for those asking; call it before serving.
func (s *Service) SetWindows(src WindowSource, byDefault bool) {
	s.windows, s.windowsOn = src, byDefault
}

// New returns a Service that scores on the models router serves, whose
// default (for requests naming none) is called defaultModel (a repo id
// such as "BAAI/bge-reranker-v2-m3" or a local name).
func New(router Router, limits Limits, defaultModel string) *Service {
	return &Service{router: router, limits: limits, defaultModel: defaultModel}
}

// ModelName is the name of the default model.
func (s *Service) ModelName() string { return s.defaultModel }

// Validate checks req against the limits without routing or scoring
// anything; Rerank also checks the model name.
func (s *Service) Validate(req *Request) error {
	if n := len(req.Candidates); n > s.limits.MaxCandidates {
		return invalid(FieldError{
			Type:  "too_long",
			Loc:   []any{"body", "candidates"},
			Msg:   fmt.Sprintf("too many candidates: %d, the limit is max_candidates=%d (RERANK_MAX_CANDIDATES)", n, s.limits.MaxCandidates),
			Input: n,
			Ctx:   map[string]any{"max_length": s.limits.MaxCandidates, "actual_length": n},
		})
	}
	// A string has at least as many bytes as code points: only long ones
	// need counting.
	if q := req.Query; s.limits.MaxQueryChars > 0 && len(q) > s.limits.MaxQueryChars {
		if n := utf8.RuneCountInString(q); n > s.limits.MaxQueryChars {
			return invalid(FieldError{
				Type:  "string_too_long",
				Loc:   []any{"body", "query"},
				Msg:   fmt.Sprintf("the query is %d characters long, the limit is max_query_chars=%d (RERANK_MAX_QUERY_LENGTH)", n, s.limits.MaxQueryChars),
				Input: q,
				Ctx:   map[string]any{"max_length": s.limits.MaxQueryChars},
			})
		}
	}
	for i, c := range req.Candidates {
		if len(c) <= s.limits.MaxCandidateChars {
			continue
		}
		if n := utf8.RuneCountInString(c); n > s.limits.MaxCandidateChars {
			return invalid(FieldError{
				Type:  "string_too_long",
				Loc:   []any{"body", "candidates", i},
				Msg:   fmt.Sprintf("candidate %d is %d characters long, the limit is max_candidate_chars=%d (RERANK_MAX_CANDIDATE_LENGTH)", i, n, s.limits.MaxCandidateChars),
				Input: c,
				Ctx:   map[string]any{"max_length": s.limits.MaxCandidateChars},
			})
		}
	}
	if req.HasTopK {
		if req.TopK < 1 {
			return invalid(FieldError{
				Type:  "greater_than_equal",
				Loc:   []any{"body", "top_k"},
				Msg:   "Input should be greater than or equal to 1",
				Input: req.TopK,
				Ctx:   map[string]any{"ge": 1},
			})
		}
		if req.TopK > s.limits.MaxCandidates {
			return invalid(FieldError{
				Type:  "less_than_equal",
				Loc:   []any{"body", "top_k"},
				Msg:   fmt.Sprintf("Input should be less than or equal to %d", s.limits.MaxCandidates),
				Input: req.TopK,
				Ctx:   map[string]any{"le": s.limits.MaxCandidates},
			})
		}
	}
	return nil
}

// Rerank routes the request to the model it names, scores every candidate
// against the query and returns the results sorted by score, best first,
// ties in input order, trimmed to TopK, with the model's canonical name. An
// empty candidate list returns no results without scoring (or loading)
// anything. An unknown model is an error wrapping ErrUnknownModel.
func (s *Service) Rerank(ctx context.Context, req *Request) (Response, error) {
	next, model, err := s.router.Route(ctx, req.Model)
	if err != nil {
		return Response{}, fmt.Errorf("rerank: %w", err)
	}
	if err := s.Validate(req); err != nil {
		return Response{}, err
	}
	if len(req.Candidates) == 0 {
		return Response{Results: []Result{}, Model: model}, nil
	}
	var split Splitter
	if on := s.windowsOn; s.windows != nil && (on && !req.HasWindows || req.HasWindows && req.Windows) {
		split = s.windows(model)
	}
	pairs := make([]sdk.Pair, len(req.Candidates))
	var owner []int // with windows: the candidate of each pair
	for i, c := range req.Candidates {
		pairs[i] = sdk.Pair{Query: req.Query, Document: c, Options: req.Options}
	}
	if split != nil {
		pairs, owner = windowPairs(split, req, pairs)
	}
	scores, err := next.Score(ctx, pairs)
	if err != nil {
		return Response{}, fmt.Errorf("rerank: scoring %d pairs on %s: %w", len(pairs), model, err)
	}
	if len(scores) != len(pairs) {
		return Response{}, fmt.Errorf("rerank: got %d scores for %d pairs", len(scores), len(pairs))
	}
	for i, sc := range scores {
		if math.IsNaN(float64(sc)) || math.IsInf(float64(sc), 0) {
			return Response{}, fmt.Errorf("rerank: the backend returned the non-finite score %v for pair %d", sc, i)
		}
	}
	results := make([]Result, len(req.Candidates))
	if owner == nil {
		for i, sc := range scores {
			results[i] = Result{Index: i, Score: sc}
		}
	} else {
		for i := range results {
			results[i] = Result{Index: i, Score: float32(math.Inf(-1))}
		}
		for p, sc := range scores {
			r := &results[owner[p]]
			r.Score = max(r.Score, sc)
		}
	}
	sortResults(results)
	if req.TopK > 0 && req.TopK < len(results) {
		results = results[:req.TopK]
	}
	return Response{Results: results, Model: model}, nil
}

// windowPairs replaces each candidate's pair by one pair per window where
// split cuts the candidate, and returns the pairs and the candidate each
// belongs to. Windows are ordinary pairs: cached and batched as any other.
func windowPairs(split Splitter, req *Request, pairs []sdk.Pair) ([]sdk.Pair, []int) {
	out := make([]sdk.Pair, 0, len(pairs))
	owner := make([]int, 0, len(pairs))
	for i, p := range pairs {
		ws := split.Split(req.Query, p.Document)
		if ws == nil {
			out = append(out, p)
			owner = append(owner, i)
			continue
		}
		for _, w := range ws {
			q := p
			q.Document = w
			out = append(out, q)
			owner = append(owner, i)
		}
	}
	return out, owner
}

// insertionSortMax is the longest result list sorted by insertion: for the
// usual 10 to 50 candidates it is several times faster than a general
// stable sort called through a comparison function.
const insertionSortMax = 64

// sortResults sorts best score first; the sort is stable, so equal scores
// keep their input order.
func sortResults(r []Result) {
	if len(r) > insertionSortMax {
		slices.SortStableFunc(r, func(a, b Result) int {
			switch {
			case a.Score > b.Score:
				return -1
			case a.Score < b.Score:
				return 1
			}
			return 0
		})
		return
	}
	for i := 1; i < len(r); i++ {
		x := r[i]
		j := i
		for j > 0 && r[j-1].Score < x.Score {
			r[j] = r[j-1]
			j--
		}
		r[j] = x
	}
}
