package api

import (
	"bytes"
	"encoding/json"

	"github.com/valyala/fasthttp"
)

// Authenticator checks bearer tokens; *auth.Keys is the production one.
type Authenticator interface {
	// Check reports whether token is an accepted key.
	Check(token []byte) bool
}

// authRoutes are the routes that need a bearer token when authentication is
// on: every scoring route of every dialect, and what describes the model.
// /health and GET / stay open, as in the server this replaces, so probes
// need no secret.
var authRoutes = map[string]bool{
	"/v1/rerank": true,
	"/v2/rerank": true,
	"/rerank":    true,
	"/v1/models": true,
	"/info":      true,
}

// authorized reports whether the request may go on, and otherwise answers
// it with 401 and WWW-Authenticate in the route's error shape. With
// authentication off it never looks at the Authorization header, so an
// empty one (Dify sends "Authorization: " when no key is set) is as good as
// none.
func (s *Server) authorized(ctx *fasthttp.RequestCtx, path []byte) bool {
	if s.cfg.Auth == nil || !authRoutes[string(path)] {
		return true
	}
	h := bytes.TrimSpace(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))
	if len(h) == 0 {
		ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, `Bearer realm="rerank"`)
		writeAuthError(ctx, string(path), "Not authenticated: send Authorization: Bearer <token>")
		return false
	}
	// The scheme is case-insensitive (RFC 7235); the token is what follows
	// the space.
	const scheme = "bearer "
	if len(h) > len(scheme) && bytes.EqualFold(h[:len(scheme)], []byte(scheme)) {
		if s.cfg.Auth.Check(bytes.TrimSpace(h[len(scheme):])) {
			return true
		}
	}
	ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, `Bearer realm="rerank", error="invalid_token", error_description="the bearer token is not valid"`)
	writeAuthError(ctx, string(path), "Invalid bearer token")
	return false
}

// writeAuthError writes a 401 in the shape of the route's dialect: Cohere's
// {"message"} on /v2/rerank, TEI's on /info and on /rerank with "texts",
// FastAPI's {"detail"} elsewhere.
func writeAuthError(ctx *fasthttp.RequestCtx, path, msg string) {
	const code = fasthttp.StatusUnauthorized
	switch {
	case path == "/v2/rerank":
		writeDialectError(ctx, cohereV2, code, msg)
	case path == "/info" || (path == "/rerank" && teiBody(ctx.PostBody())):
		writeDialectError(ctx, tei, code, msg)
	default:
		writeDetail(ctx, code, msg)
	}
}

// teiBody reports whether body is a TEI request (see isTEI), as the
// decoder would read it; anything it cannot read is not.
func teiBody(body []byte) bool {
	var fields map[string]json.RawMessage
	return json.Unmarshal(body, &fields) == nil && isTEI(fields)
}
