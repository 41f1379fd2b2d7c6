package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// fuzzModel is the one model the fuzzed servers serve.
const fuzzModel = "org/test-model"

// fuzzKey is the bearer token of the fuzzed servers that check one.
const fuzzKey = "fuzz-key-0123"

// fuzzSmallBody is the body limit of the servers that refuse large bodies:
// small enough that the fuzzer's inputs cross it often.
const fuzzSmallBody = 96

// fuzzWindow is the window length, in bytes, of fuzzSplitter.
const fuzzWindow = 8

// fuzzErrors are what fuzzScorer fails with, one per server: nil first,
// then each error class the API maps to a status code, then one it does
// not know (a 500).
var fuzzErrors = []error{
	nil,
	fmt.Errorf("plugin: %w", sdk.ErrOverloaded),
	fmt.Errorf("plugin: %w", sdk.ErrNotLoaded),
	fmt.Errorf("plugin: %w", sdk.ErrUnavailable),
	fmt.Errorf("plugin: pair 0: %w", sdk.ErrTooLong),
	fmt.Errorf("plugin: pair 0: %w", sdk.ErrInvalidInput),
	fmt.Errorf("plugin: %w", context.DeadlineExceeded),
	fmt.Errorf("plugin: %w", context.Canceled),
	errors.New("plugin: the graph failed"),
}

// fuzzScore is fuzzScorer's score for a document: a hash of its text, so
// that the answer's order can be checked, with few distinct values, so that
// ties (kept in request order) are common; raw scores are spread further.
func fuzzScore(doc string, raw bool) float32 {
	h := fnv.New32a()
	h.Write([]byte(doc))
	s := float32(h.Sum32()%16) / 16
	if raw {
		s = s*8 - 4
	}
	return s
}

// fuzzScorer scores with fuzzScore, or fails with err.
type fuzzScorer struct{ err error }

func (f fuzzScorer) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	if f.err != nil {
		return nil, f.err
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = fuzzScore(p.Document, p.Options.Raw)
	}
	return out, nil
}

// fuzzSplitter cuts a document longer than fuzzWindow bytes into windows of
// fuzzWindow bytes (the last shorter).
type fuzzSplitter struct{}

func (fuzzSplitter) Split(_, doc string) []string {
	if len(doc) <= fuzzWindow {
		return nil
	}
	var ws []string
	for i := 0; i < len(doc); i += fuzzWindow {
		ws = append(ws, doc[i:min(i+fuzzWindow, len(doc))])
	}
	return ws
}

// expectScore is what the answer must say of a candidate: fuzzScore, or its
// best window's.
func expectScore(doc string, raw, windows bool) float32 {
	if !windows || len(doc) <= fuzzWindow {
		return fuzzScore(doc, raw)
	}
	best := float32(-1e9)
	for _, w := range (fuzzSplitter{}).Split("", doc) {
		best = max(best, fuzzScore(w, raw))
	}
	return best
}

// fuzzServer is one configuration of the server under fuzzing.
type fuzzServer struct {
	s        *Server
	auth     bool
	maxBody  int
	scoreErr error
}

// fuzzServers returns a server for every error of fuzzErrors, with and
// without authentication, with the default and a small body limit.
func fuzzServers() []fuzzServer {
	var out []fuzzServer
	for _, err := range fuzzErrors {
		for _, auth := range []bool{false, true} {
			for _, maxBody := range []int{DefaultMaxBodyBytes, fuzzSmallBody} {
				svc := rerank.New(rerank.Single(fuzzModel, fuzzScorer{err}),
					rerank.Limits{MaxCandidates: 8, MaxCandidateChars: 40, MaxQueryChars: 60}, fuzzModel)
				svc.SetWindows(func(string) rerank.Splitter { return fuzzSplitter{} }, false)
				cfg := Config{Service: svc, Version: "v-fuzz", MaxBodyBytes: maxBody}
				if auth {
					cfg.Auth = oneKey(fuzzKey)
				}
				out = append(out, fuzzServer{s: New(cfg), auth: auth, maxBody: maxBody, scoreErr: err})
			}
		}
	}
	return out
}

// errShape is an error body's shape.
type errShape string

const (
	shapeDetail  errShape = "detail"  // FastAPI's and Jina's {"detail"}
	shapeMessage errShape = "message" // Cohere's {"message"}
	shapeTEI     errShape = "tei"     // TEI's {"error", "error_type"}
	// shapeEither is a Cohere v1 body too deep for the router's key walk:
	// it may get Cohere's shape or the seed route's.
	shapeEither errShape = "either"
)

// jsonDepth is the deepest nesting of arrays and objects in a JSON text.
func jsonDepth(b []byte) int {
	depth, deepest, inString := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}

// bodyShape says which error shape a body of a scoring route asks for, by
// the body's JSON as encoding/json reads it: Cohere v1's on /v1/rerank for
// an object with "documents" and no "candidates", TEI's on /rerank for an
// object with a non-null "texts". A body that is not a JSON object asks for
// the route's own shape.
func bodyShape(path string, body []byte) errShape {
	var fields map[string]json.RawMessage
	isObject := json.Unmarshal(body, &fields) == nil && fields != nil
	switch path {
	case "/v2/rerank":
		return shapeMessage
	case "/v1/rerank":
		_, docs := fields["documents"]
		_, cands := fields["candidates"]
		if isObject && docs && !cands {
			if jsonDepth(body) > maxSkipDepth {
				// Deeper than the router reads: left to the seed route.
				return shapeEither
			}
			return shapeMessage
		}
	case "/rerank":
		if t, ok := fields["texts"]; isObject && ok && !isNull(t) {
			return shapeTEI
		}
	}
	return shapeDetail
}

// checkErrorBody checks that body is an error in shape: one string member
// (a list of objects also for FastAPI's 422), two for TEI's, nothing else.
func checkErrorBody(body []byte, shape errShape, code int) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return fmt.Errorf("not a JSON object: %v", err)
	}
	str := func(k string) (string, bool) {
		var s string
		return s, json.Unmarshal(m[k], &s) == nil && len(m[k]) > 0
	}
	switch shape {
	case shapeEither:
		if checkErrorBody(body, shapeMessage, code) == nil {
			return nil
		}
		return checkErrorBody(body, shapeDetail, code)
	case shapeDetail:
		if len(m) != 1 {
			return fmt.Errorf("want only detail")
		}
		if _, ok := str("detail"); ok {
			return nil
		}
		var list []map[string]any
		if code == fasthttp.StatusUnprocessableEntity && json.Unmarshal(m["detail"], &list) == nil && len(list) > 0 {
			for _, f := range list {
				if _, ok := f["msg"].(string); !ok {
					return fmt.Errorf("a detail without msg")
				}
				if _, ok := f["loc"].([]any); !ok {
					return fmt.Errorf("a detail without loc")
				}
			}
			return nil
		}
		return fmt.Errorf("detail is neither a string nor a list of errors")
	case shapeMessage:
		if _, ok := str("message"); !ok || len(m) != 1 {
			return fmt.Errorf("want only a string message")
		}
	case shapeTEI:
		et, ok := str("error_type")
		if _, ok2 := str("error"); !ok || !ok2 || len(m) != 2 {
			return fmt.Errorf("want a string error and error_type")
		}
		if et != teiErrorType(code) {
			return fmt.Errorf("error_type %q for %d, want %q", et, code, teiErrorType(code))
		}
	}
	return nil
}

// generatedID matches the request ids the server makes: 64 random bits and
// a sequence number, in hex.
var generatedID = regexp.MustCompile(`^[0-9a-f]{16}-[0-9a-f]+$`)

// answerResult is one result of any dialect's 200 answer.
type answerResult struct {
	Index          *int            `json:"index"`
	Score          *json.Number    `json:"score"`
	RelevanceScore *json.Number    `json:"relevance_score"`
	Document       json.RawMessage `json:"document"`
	Text           *string         `json:"text"`
}

// FuzzServe sends any request (method, path, Authorization and X-Request-ID
// headers, body) through Server.Handle, on servers with and without
// authentication, with a small and the default body limit, and with a
// scorer failing with each error the API maps, and checks the answer:
//   - nothing panics; the status is one the route can answer;
//   - every error body is in the shape of the route's dialect (as the body
//     chose it, where the route speaks several), with Retry-After on 429
//     and on the 503s worth retrying, and WWW-Authenticate on 401;
//   - authentication is required exactly on the scoring and model routes
//     and accepts exactly "Bearer <key>" (scheme in any case, spaces
//     around), and no answer shows the key;
//   - X-Request-ID is echoed when it is 1 to 128 visible ASCII characters
//     and replaced by a generated one otherwise;
//   - a 200 rerank answer ranks exactly the request's candidates, as the
//     route's decoder reads them, by the scorer's scores (best windows'
//     with windows on), stable on ties, trimmed to top_n, with the
//     documents or texts asked for.
func FuzzServe(f *testing.F) {
	servers := fuzzServers()
	routes := []string{"/v1/rerank", "/v2/rerank", "/rerank", "/info", "/v1/models", "/health", "/", "/metrics", "/nope"}
	seedBodies := []string{
		`{"query":"q","candidates":["a","b","c"],"top_k":2,"model":"org/test-model"}`,
		`{"query":"q","candidates":[]}`,
		`{"query":"q","candidates":["a",1]}`,
		`{"query":"q","documents":["a","bb"],"return_documents":true,"top_n":1}`,
		`{"query":"q","documents":[{"title":"t","text":"x","n":1},{"title":"u"}],"rank_fields":["title","n"],"return_documents":"true"}`,
		`{"query":"q","texts":["a","b"],"return_text":true,"raw_scores":true}`,
		`{"query":"q","texts":null,"documents":["a"]}`,
		`{"query":"q","texts":["abcdefghijklmnopqrstuvwxyz"],"windows":true}`,
		`{"query":"q","documents":["0123456789abcdef","x"],"windows":true,"use_activation":false}`,
		`{"query":"q","documents":["a"],"model":"other"}`,
		`{"query":"q","documents":["a","b","c","d","e","f","g","h","i"]}`,
		`{"query":"` + strings.Repeat("q", 70) + `","texts":["a"]}`,
		`{"query":"q","texts":["a"],"truncation_direction":"left"}`,
		`{"query":"q","texts":["a"],"padding":"` + strings.Repeat("p", 100) + `"}`,
		`{"query":"q","documents":[` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `]}`,
		`{`, ``, `null`, `[]`,
	}
	methods := []string{"POST", "GET", "HEAD", "PUT"}
	for i, body := range seedBodies {
		for j, path := range routes[:3] {
			f.Add("POST", path, "", "", []byte(body), uint8(i+j))
			f.Add("POST", path, "Bearer "+fuzzKey, "req-1", []byte(body), uint8(2*i+j))
			f.Add("POST", path, "Bearer wrong", "", []byte(body), uint8(2)) // auth on, no scorer error
		}
	}
	for i, path := range routes {
		for j, m := range methods {
			f.Add(m, path, "bearer  "+fuzzKey+" ", strings.Repeat("x", 128+j%2), []byte(nil), uint8(i*len(methods)+j))
			f.Add(m, path, "Basic "+fuzzKey, "a b", []byte(`{}`), uint8(i*len(methods)+j+1))
		}
	}
	f.Fuzz(func(t *testing.T, method, uri, authorization, requestID string, body []byte, which uint8) {
		fs := servers[int(which)%len(servers)]
		var req fasthttp.Request
		req.Header.SetMethod(method)
		req.SetRequestURI(uri)
		req.Header.Set(fasthttp.HeaderAuthorization, authorization)
		req.Header.Set(RequestIDHeader, requestID)
		req.SetBody(body)
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, nil, nil)
		// What the server sees, after fasthttp's parsing and normalizing.
		path := string(ctx.Path())
		sentID := bytes.Clone(ctx.Request.Header.Peek(RequestIDHeader))
		sentAuth := bytes.TrimSpace(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))
		sentBody := bytes.Clone(ctx.PostBody())
		isPost, isGet := ctx.IsPost(), ctx.IsGet() || ctx.IsHead()

		fs.s.Handle(&ctx)

		code := ctx.Response.StatusCode()
		out := ctx.Response.Body()
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("%s %q (server auth %v, body limit %d, scorer error %v), Authorization %q, body %q: %d %s: %s",
				ctx.Method(), path, fs.auth, fs.maxBody, fs.scoreErr, sentAuth, sentBody, code, out, fmt.Sprintf(format, args...))
		}
		if !json.Valid(out) {
			fail("the answer is not JSON")
		}
		if ct := string(ctx.Response.Header.ContentType()); ct != "application/json" {
			fail("Content-Type %q", ct)
		}
		if bytes.Contains(out, []byte(fuzzKey)) {
			fail("the answer shows the key")
		}
		gotID := ctx.Response.Header.Peek(RequestIDHeader)
		if validRequestID(sentID) {
			if !bytes.Equal(gotID, sentID) {
				fail("X-Request-ID %q, want %q echoed", gotID, sentID)
			}
		} else if !generatedID.Match(gotID) {
			fail("X-Request-ID %q for %q, want a generated one", gotID, sentID)
		}
		if code == fasthttp.StatusTooManyRequests && len(ctx.Response.Header.Peek("Retry-After")) == 0 {
			fail("429 without Retry-After")
		}

		scoring := path == "/v1/rerank" || path == "/v2/rerank" || path == "/rerank"
		known := scoring || path == "/info" || path == "/v1/models" || path == "/health" || path == "/"
		needsAuth := scoring || path == "/info" || path == "/v1/models"
		authorized := !fs.auth || !needsAuth
		const scheme = "bearer " // RFC 7235: the scheme in any case
		if len(sentAuth) > len(scheme) && strings.EqualFold(string(sentAuth[:len(scheme)]), scheme) {
			authorized = authorized || string(bytes.TrimSpace(sentAuth[len(scheme):])) == fuzzKey
		}
		shape := shapeDetail
		if scoring {
			shape = bodyShape(path, sentBody)
		}
		switch {
		case !known:
			if code != fasthttp.StatusNotFound {
				fail("want 404")
			}
			if err := checkErrorBody(out, shapeDetail, code); err != nil {
				fail("%v", err)
			}
			return
		case !authorized:
			if code != fasthttp.StatusUnauthorized {
				fail("want 401")
			}
			if !bytes.HasPrefix(ctx.Response.Header.Peek(fasthttp.HeaderWWWAuthenticate), []byte("Bearer ")) {
				fail("401 without a Bearer challenge")
			}
			if path == "/info" {
				shape = shapeTEI
			} else if path == "/v1/rerank" {
				shape = shapeDetail // the seed route's 401 is FastAPI's, whatever the body
			}
			if err := checkErrorBody(out, shape, code); err != nil {
				fail("%v", err)
			}
			return
		case code == fasthttp.StatusUnauthorized:
			fail("401 for an authorized request")
		case scoring && !isPost || !scoring && !isGet:
			if code != fasthttp.StatusMethodNotAllowed || len(ctx.Response.Header.Peek("Allow")) == 0 {
				fail("want 405 with Allow")
			}
			if err := checkErrorBody(out, shapeDetail, code); err != nil {
				fail("%v", err)
			}
			return
		case !scoring:
			if code != fasthttp.StatusOK || !bytes.HasPrefix(out, []byte("{")) {
				fail("want 200 with an object")
			}
			return
		}

		// A scoring route. A body over the limit is refused unread, in the
		// route's own shape (the body cannot choose it).
		if len(sentBody) > fs.maxBody {
			if code != fasthttp.StatusRequestEntityTooLarge {
				fail("want 413 for a body over the limit")
			}
			shape = bodyShape(path, nil)
		}
		if code != fasthttp.StatusOK {
			if err := checkErrorBody(out, shape, code); err != nil {
				fail("%v", err)
			}
			switch code {
			case fasthttp.StatusBadRequest, fasthttp.StatusUnprocessableEntity, fasthttp.StatusRequestEntityTooLarge,
				fasthttp.StatusTooManyRequests, fasthttp.StatusGatewayTimeout:
			case fasthttp.StatusServiceUnavailable:
				if !errors.Is(fs.scoreErr, context.Canceled) && len(ctx.Response.Header.Peek("Retry-After")) == 0 {
					fail("503 without Retry-After")
				}
			case fasthttp.StatusInternalServerError:
				if fs.scoreErr == nil {
					fail("500 with a scorer that does not fail")
				}
			default:
				fail("unexpected status")
			}
			if code == fasthttp.StatusBadRequest && shape != shapeMessage {
				fail("400 outside Cohere's routes")
			}
			return
		}
		if len(sentBody) > fs.maxBody {
			fail("200 for a body over the limit")
		}
		checkAnswer(t, fail, path, shape, sentBody, out, fs.scoreErr)
	})
}

// checkAnswer checks a 200 rerank answer against the request as the
// route's decoder reads it.
func checkAnswer(t *testing.T, fail func(string, ...any), path string, shape errShape, body, out []byte, scoreErr error) {
	t.Helper()
	var r *rerank.Request
	dialectOf, returnDocs, objects := jina, false, []json.RawMessage(nil)
	switch {
	case path == "/v1/rerank" && shape == shapeDetail:
		req, err := decodeRequest(body)
		if err != nil {
			fail("200 for a body the seed decoder refuses: %v", err)
		}
		r = req
	default:
		d := map[string]dialect{"/v1/rerank": cohereV1, "/v2/rerank": cohereV2, "/rerank": jina}[path]
		req, err := decodeDialect(body, d)
		if err != nil {
			fail("200 for a body the %s decoder refuses: %v", d, err)
		}
		if (shape == shapeTEI) != (req.dialect == tei) {
			fail("decoded as %s, the body asks for %s", req.dialect, shape)
		}
		r, dialectOf, returnDocs, objects = &req.Request, req.dialect, req.returnDocuments, req.objects
	}
	if scoreErr != nil && len(r.Candidates) > 0 {
		fail("200 with a failing scorer")
	}
	n := len(r.Candidates)
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	score := func(i int) float32 { return expectScore(r.Candidates[i], r.Options.Raw, r.HasWindows && r.Windows) }
	slices.SortStableFunc(want, func(a, b int) int {
		sa, sb := score(a), score(b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	if r.TopK > 0 && r.TopK < n {
		want = want[:r.TopK]
	}

	var results []answerResult
	if shape == shapeTEI {
		if err := decodeNumbers(out, &results); err != nil {
			fail("TEI answer: %v", err)
		}
	} else {
		var a struct {
			ID      *string         `json:"id"`
			Model   *string         `json:"model"`
			Results []answerResult  `json:"results"`
			Meta    json.RawMessage `json:"meta"`
		}
		if err := decodeNumbers(out, &a); err != nil || a.Results == nil {
			fail("answer: %v", err)
		}
		results = a.Results
		native := path == "/v1/rerank" && shape == shapeDetail
		if native != (a.ID == nil) || native != (a.Meta == nil) {
			fail("id and meta in the seed's answer, or missing in a dialect's")
		}
		if (dialectOf == cohereV2) != (a.Model == nil) || a.Model != nil && *a.Model != fuzzModel {
			fail("model in the answer")
		}
	}
	if len(results) != len(want) {
		fail("%d results, want %d", len(results), len(want))
	}
	for k, res := range results {
		num := res.Score
		if shape != shapeTEI && !(path == "/v1/rerank" && shape == shapeDetail) {
			num = res.RelevanceScore
		}
		if res.Index == nil || num == nil {
			fail("result %d without an index or a score", k)
		}
		i := *res.Index
		if i != want[k] {
			fail("result %d is candidate %d, want %d (order %v)", k, i, want[k], want)
		}
		f, err := strconv.ParseFloat(string(*num), 64)
		if err != nil || float32(f) != score(i) {
			fail("result %d: score %s, want %v", k, *num, score(i))
		}
		switch {
		case shape == shapeTEI:
			if (res.Text != nil) != returnDocs || res.Text != nil && *res.Text != r.Candidates[i] {
				fail("result %d: text %v, return_text %v", k, res.Text, returnDocs)
			}
		case dialectOf == cohereV2 || path == "/v1/rerank" && shape == shapeDetail:
			if res.Document != nil || res.Text != nil {
				fail("result %d carries its document", k)
			}
		default:
			if (res.Document != nil) != returnDocs {
				fail("result %d: document %s, return_documents %v", k, res.Document, returnDocs)
			}
			if res.Document == nil {
				continue
			}
			wantDoc := appendJSON([]byte(`{"text":`), r.Candidates[i])
			wantDoc = append(wantDoc, '}')
			if objects != nil && objects[i] != nil {
				wantDoc = objects[i]
			}
			if !jsonEqual(res.Document, wantDoc) {
				fail("result %d: document %s, want %s", k, res.Document, wantDoc)
			}
		}
	}
}

// decodeNumbers decodes JSON keeping numbers as written.
func decodeNumbers(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(a, b []byte) bool {
	var va, vb any
	if decodeNumbers(a, &va) != nil || decodeNumbers(b, &vb) != nil {
		return false
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}
