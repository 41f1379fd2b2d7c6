// Package auth holds the bearer tokens the server accepts: it loads them from
// key files (one token per line), refuses files that would make weak or
// unusable keys, and checks a presented token against every key in constant
// time. It never logs or returns a token.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// DefaultTokenFile is where the replaced server read its token when
// INFERENCE_SERVICE_TOKEN_FILE is unset: a Docker or Kubernetes secret.
const DefaultTokenFile = "/run/secrets/inference_service_token"

// MinKeyLength is the shortest key accepted: 16 characters of the b64token
// alphabet carry at least 96 bits when drawn at random, beyond guessing.
const MinKeyLength = 16

// Config says where keys come from.
type Config struct {
	// KeyFile is --api-key-file (RERANK_API_KEY_FILE); empty when unset.
	KeyFile string
	// TokenFile is INFERENCE_SERVICE_TOKEN_FILE; empty when unset.
	TokenFile string
	// Disabled is INFERENCE_SERVICE_AUTH=disabled: no keys, whatever the
	// files.
	Disabled bool
	// DefaultTokenFile is used when neither file is set and it exists;
	// empty means DefaultTokenFile.
	DefaultTokenFile string
}

// Keys are the accepted tokens, kept only as SHA-256 digests: every check
// compares fixed-size digests, so its time depends on neither the keys'
// lengths nor the token's.
type Keys struct {
	digests [][sha256.Size]byte
}

// Load reads the keys c names. It returns nil keys when authentication is
// off, with a sentence for the start-up log saying why (or, when on, where
// the keys came from, never the keys). A configured file that is missing,
// unreadable, empty, or holds a key shorter than MinKeyLength or outside RFC
// 6750's b64token alphabet is an error.
func Load(c Config) (*Keys, string, error) {
	if c.Disabled {
		return nil, "authentication off: INFERENCE_SERVICE_AUTH=disabled", nil
	}
	var files []string
	if c.KeyFile != "" {
		files = append(files, c.KeyFile)
	}
	if c.TokenFile != "" {
		files = append(files, c.TokenFile)
	}
	if len(files) == 0 {
		def := c.DefaultTokenFile
		if def == "" {
			def = DefaultTokenFile
		}
		if _, err := os.Stat(def); err == nil {
			files = append(files, def)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("auth: the default token file %s: %w", def, err)
		} else {
			return nil, "authentication off: no key file configured (--api-key-file, INFERENCE_SERVICE_TOKEN_FILE) and no " + def + "; every route is open", nil
		}
	}
	k := &Keys{}
	for _, f := range files {
		n, err := k.readFile(f)
		if err != nil {
			return nil, "", err
		}
		if n == 0 {
			return nil, "", fmt.Errorf("auth: key file %s holds no key: write one token per line, or set INFERENCE_SERVICE_AUTH=disabled to serve without authentication", f)
		}
	}
	return k, fmt.Sprintf("authentication on: %d bearer key(s) from %s; /health and / stay open", len(k.digests), strings.Join(files, ", ")), nil
}

// readFile adds the keys of one file, one per non-blank line, surrounding
// spaces ignored, and returns how many it added.
func (k *Keys) readFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("auth: cannot read key file: %w", err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, len(b)+1)
	for line := 1; sc.Scan(); line++ {
		key := bytes.TrimSpace(sc.Bytes())
		if len(key) == 0 {
			continue
		}
		if err := checkKey(key); err != nil {
			return 0, fmt.Errorf("auth: key file %s, line %d: %w", path, line, err)
		}
		k.digests = append(k.digests, sha256.Sum256(key))
		n++
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("auth: key file %s: %w", path, err)
	}
	return n, nil
}

// checkKey refuses a key that is too short or that a client could not send
// as a bearer token (RFC 6750's b64token: letters, digits, "-._~+/", then
// any "=" padding). Its messages say where, never what, the key is.
func checkKey(key []byte) error {
	if len(key) < MinKeyLength {
		return fmt.Errorf("the key is %d characters long; at least %d are required", len(key), MinKeyLength)
	}
	if i := invalidTokenByte(key); i >= 0 {
		return fmt.Errorf("the key's character %d is outside RFC 6750's bearer token alphabet (letters, digits, - . _ ~ + / and trailing =)", i+1)
	}
	return nil
}

// invalidTokenByte returns the index of the first byte of tok outside the
// b64token grammar, or -1.
func invalidTokenByte(tok []byte) int {
	padding := false
	for i, c := range tok {
		switch {
		case c == '=':
			padding = true
		case padding:
			return i
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return i
		}
	}
	if len(tok) > 0 && tok[0] == '=' {
		return 0
	}
	return -1
}

// Len is the number of keys.
func (k *Keys) Len() int { return len(k.digests) }

// Check reports whether token is one of the keys. It hashes the token and
// compares the digest with every key's, without stopping at a match or on a
// length difference, so its time tells nothing about the keys.
func (k *Keys) Check(token []byte) bool {
	d := sha256.Sum256(token)
	match := 0
	for i := range k.digests {
		match |= subtle.ConstantTimeCompare(d[:], k.digests[i][:])
	}
	return match == 1
}
