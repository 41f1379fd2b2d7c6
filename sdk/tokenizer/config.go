package tokenizer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// fileJSON is the part of a tokenizer.json that encoding uses. truncation and
// padding are ignored: the caller passes Options per encoding.
type fileJSON struct {
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	Model         json.RawMessage  `json:"model"`
	PostProcessor json.RawMessage  `json:"post_processor"`
}

type addedTokenJSON struct {
	ID         *int64 `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	Lstrip     bool   `json:"lstrip"`
	Rstrip     bool   `json:"rstrip"`
	Normalized *bool  `json:"normalized"`
	Special    bool   `json:"special"`
}

// component is the common head of every typed component.
type component struct {
	Type string `json:"type"`
}

// isNull reports whether a component is absent or JSON null.
func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

// FromBytes loads a tokenizer from the contents of a tokenizer.json.
func FromBytes(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokenizer: invalid tokenizer.json: %w", err)
	}
	t := &Tokenizer{}
	var err error
	if isNull(f.Model) {
		return nil, errors.New("tokenizer: tokenizer.json has no model")
	}
	var lookup func(string) (int32, bool)
	var maxID int64 = -1
	var modelSize int
	if t.model, lookup, modelSize, maxID, err = parseModel(f.Model); err != nil {
		return nil, err
	}
	if !isNull(f.Normalizer) {
		if t.normalizer, err = parseNormalizer(f.Normalizer); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PreTokenizer) {
		if t.pre, err = parsePreTokenizer(f.PreTokenizer); err != nil {
			return nil, err
		}
		t.needFirst = usesFirstScheme(t.pre)
	}

	// The reference library re-derives added token ids rather than trusting
	// the file: special tokens first, then the others, each gets the id it
	// already has (as an added token or in the model's vocabulary), else the
	// next free id after the vocabulary and the added tokens.
	for i, a := range f.AddedTokens {
		if a.ID == nil || *a.ID < 0 || *a.ID > math.MaxInt32 {
			return nil, fmt.Errorf("tokenizer: added token %d (%q) has no valid id", i, a.Content)
		}
	}
	ordered := make([]addedTokenJSON, 0, len(f.AddedTokens))
	for _, special := range []bool{true, false} {
		for _, a := range f.AddedTokens {
			if a.Special == special && a.Content != "" { // empty tokens are ignored
				ordered = append(ordered, a)
			}
		}
	}
	added := make(map[string]int32, len(f.AddedTokens))
	var maxAdded int64 = -1
	var raw, normalized []addedToken
	for _, a := range ordered {
		id, ok := added[a.Content]
		if !ok {
			if id, ok = lookup(a.Content); !ok {
				next := int64(modelSize)
				if maxAdded >= int64(modelSize) {
					next = maxAdded + 1
				}
				if next > math.MaxInt32 {
					return nil, fmt.Errorf("tokenizer: added token %q would get id %d, out of range", a.Content, next)
				}
				id = int32(next)
			}
			added[a.Content] = id
			maxAdded = max(maxAdded, int64(id))
		} else {
			continue // a duplicate: the first one wins
		}
		maxID = max(maxID, int64(id))
		tok := addedToken{content: a.Content, id: id, singleWord: a.SingleWord, lstrip: a.Lstrip, rstrip: a.Rstrip}
		isNormalized := !a.Special // the reference library's default
		if a.Normalized != nil {
			isNormalized = *a.Normalized
		}
		if !isNormalized {
			raw = append(raw, tok)
			continue
		}
		// A normalized token is matched in normalized text, so its content
		// is normalized too.
		if t.normalizer != nil {
			tok.content = t.normalizer.normalize(tok.content, new(scratch))
		}
		if tok.content != "" {
			normalized = append(normalized, tok)
		}
	}
	if len(raw) > 0 {
		t.raw = &addedMatcher{tokens: raw}
	}
	if len(normalized) > 0 {
		t.norm = &addedMatcher{tokens: normalized}
	}
	t.tokens = func(s string) (int32, bool) {
		if id, ok := added[s]; ok {
			return id, true
		}
		return lookup(s)
	}

	t.post = defaultPostProcessor()
	if !isNull(f.PostProcessor) {
		if t.post, err = parsePostProcessor(f.PostProcessor, t.tokens); err != nil {
			return nil, err
		}
	}
	// The post-processor's special tokens carry their own ids, which need
	// not be in the vocabulary: VocabSize covers every id an encoding can
	// hold, so that a model too small for them is refused at load.
	for _, tmpl := range [][]templatePiece{t.post.single, t.post.pair} {
		for _, p := range tmpl {
			for _, id := range p.special {
				maxID = max(maxID, int64(id))
			}
		}
	}
	t.vocabSize = int(maxID + 1)
	return t, nil
}

// parseModel returns the model, its token lookup, its vocabulary size and
// its largest id.
func parseModel(raw json.RawMessage) (model, func(string) (int32, bool), int, int64, error) {
	var m struct {
		Type string `json:"type"`
		// WordPiece
		Vocab                   json.RawMessage `json:"vocab"`
		UnkToken                *string         `json:"unk_token"`
		ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
		MaxInputCharsPerWord    *int            `json:"max_input_chars_per_word"`
		// Unigram
		UnkID        *int64          `json:"unk_id"`
		ByteFallback bool            `json:"byte_fallback"`
		Merges       json.RawMessage `json:"merges"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, nil, 0, 0, fmt.Errorf("tokenizer: invalid model: %w", err)
	}
	typ := m.Type
	if typ == "" {
		// Old files omit the type; the reference library tells them apart
		// by their fields.
		switch v := bytes.TrimSpace(m.Vocab); {
		case m.Merges != nil:
			typ = "BPE"
		case len(v) > 0 && v[0] == '[':
			typ = "Unigram"
		case m.ContinuingSubwordPrefix != nil || m.MaxInputCharsPerWord != nil:
			typ = "WordPiece"
		default:
			typ = "WordLevel"
		}
	}
	switch typ {
	case "WordPiece":
		var vocab map[string]int64
		if err := json.Unmarshal(m.Vocab, &vocab); err != nil {
			return nil, nil, 0, 0, fmt.Errorf("tokenizer: invalid WordPiece vocab: %w", err)
		}
		// "##" and 100 characters are the reference library's defaults for
		// continuing_subword_prefix and max_input_chars_per_word.
		wp := &wordPiece{vocab: make(map[string]int32, len(vocab)), prefix: "##", maxChars: 100}
		var maxID int64 = -1
		for k, v := range vocab {
			if v < 0 || v > math.MaxInt32 {
				return nil, nil, 0, 0, fmt.Errorf("tokenizer: WordPiece id %d of %q out of range", v, k)
			}
			wp.vocab[k] = int32(v)
			maxID = max(maxID, v)
		}
		if m.ContinuingSubwordPrefix != nil {
			wp.prefix = *m.ContinuingSubwordPrefix
		}
		if m.MaxInputCharsPerWord != nil {
			wp.maxChars = *m.MaxInputCharsPerWord
		}
		unk := "[UNK]"
		if m.UnkToken != nil {
			unk = *m.UnkToken
		}
		id, ok := wp.vocab[unk]
		if !ok {
			return nil, nil, 0, 0, fmt.Errorf("tokenizer: WordPiece unk_token %q is not in the vocabulary", unk)
		}
		wp.unkID = id
		lookup := func(s string) (int32, bool) { id, ok := wp.vocab[s]; return id, ok }
		return wp, lookup, len(wp.vocab), maxID, nil
	case "Unigram":
		var entries [][2]json.RawMessage
		if err := json.Unmarshal(m.Vocab, &entries); err != nil {
			return nil, nil, 0, 0, fmt.Errorf("tokenizer: invalid Unigram vocab: %w", err)
		}
		pieces := make([]unigramPiece, len(entries))
		for i, e := range entries {
			if err := json.Unmarshal(e[0], &pieces[i].Piece); err != nil {
				return nil, nil, 0, 0, fmt.Errorf("tokenizer: invalid Unigram piece %d: %w", i, err)
			}
			if err := json.Unmarshal(e[1], &pieces[i].Score); err != nil {
				return nil, nil, 0, 0, fmt.Errorf("tokenizer: invalid Unigram score %d: %w", i, err)
			}
		}
		unkID := -1
		if m.UnkID != nil && *m.UnkID >= 0 && *m.UnkID < int64(len(pieces)) {
			unkID = int(*m.UnkID)
		}
		u, err := newUnigram(pieces, unkID, m.ByteFallback)
		if err != nil {
			return nil, nil, 0, 0, err
		}
		return unigramModel{u}, u.tokenToID, len(pieces), int64(len(pieces)) - 1, nil
	default:
		return nil, nil, 0, 0, fmt.Errorf("tokenizer: unsupported model %q (supported: WordPiece, Unigram)", typ)
	}
}

// patternJSON is a Replace or Split pattern: {"String": …} or {"Regex": …}.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

// compile returns the regexp of a Regex pattern (nil for a String one).
// Hugging Face compiles with Oniguruma; a pattern Go's RE2 syntax cannot
// express (look-around, backreferences) is rejected rather than approximated.
func (p patternJSON) compile(what string) (*regexp.Regexp, string, error) {
	switch {
	case p.String != nil:
		return nil, *p.String, nil
	case p.Regex != nil:
		re, err := compileHFRegex(*p.Regex)
		if err != nil {
			return nil, "", fmt.Errorf("tokenizer: unsupported %s regex %q: %w", what, *p.Regex, err)
		}
		return re, "", nil
	}
	return nil, "", fmt.Errorf("tokenizer: %s pattern has neither String nor Regex", what)
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("tokenizer: invalid normalizer: %w", err)
	}
	switch c.Type {
	case "BertNormalizer":
		var n struct {
			CleanText          *bool `json:"clean_text"`
			HandleChineseChars *bool `json:"handle_chinese_chars"`
			StripAccents       *bool `json:"strip_accents"`
			Lowercase          *bool `json:"lowercase"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid BertNormalizer: %w", err)
		}
		or := func(b *bool, def bool) bool {
			if b == nil {
				return def
			}
			return *b
		}
		lower := or(n.Lowercase, true)
		return &bertNormalizer{
			cleanText:    or(n.CleanText, true),
			chinese:      or(n.HandleChineseChars, true),
			stripAccents: or(n.StripAccents, lower), // null follows lowercase
			lowercase:    lower,
		}, nil
	case "Precompiled":
		var n struct {
			Charsmap *string `json:"precompiled_charsmap"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Precompiled normalizer: %w", err)
		}
		if n.Charsmap == nil || *n.Charsmap == "" {
			// An empty charsmap is the identity in the reference library.
			return sequenceNormalizer(nil), nil
		}
		data, err := base64.StdEncoding.DecodeString(*n.Charsmap)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Precompiled charsmap: %w", err)
		}
		p, err := newPrecompiled(data)
		if err != nil {
			return nil, err
		}
		return precompiledNormalizer{p}, nil
	case "Replace":
		var n struct {
			Pattern patternJSON `json:"pattern"`
			Content string      `json:"content"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Replace normalizer: %w", err)
		}
		re, lit, err := n.Pattern.compile("Replace")
		if err != nil {
			return nil, err
		}
		return &replaceNormalizer{literal: lit, re: re, content: n.Content}, nil
	case "NFC":
		return unicodeNormalizer{norm.NFC}, nil
	case "NFD":
		return unicodeNormalizer{norm.NFD}, nil
	case "NFKC":
		return unicodeNormalizer{norm.NFKC}, nil
	case "NFKD":
		return unicodeNormalizer{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNormalizer{}, nil
	case "StripAccents":
		return stripAccentsNormalizer{}, nil
	case "Strip":
		var n struct {
			Left  bool `json:"strip_left"`
			Right bool `json:"strip_right"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Strip normalizer: %w", err)
		}
		return stripNormalizer{n.Left, n.Right}, nil
	case "Prepend":
		var n struct {
			Prepend string `json:"prepend"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Prepend normalizer: %w", err)
		}
		return prependNormalizer{n.Prepend}, nil
	case "Sequence":
		var n struct {
			Normalizers []json.RawMessage `json:"normalizers"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid normalizer Sequence: %w", err)
		}
		seq := make(sequenceNormalizer, 0, len(n.Normalizers))
		for _, r := range n.Normalizers {
			x, err := parseNormalizer(r)
			if err != nil {
				return nil, err
			}
			seq = append(seq, x)
		}
		return seq, nil
	}
	return nil, fmt.Errorf("tokenizer: unsupported normalizer %q", c.Type)
}

// parseBehavior reads a SplitDelimiterBehavior name.
func parseBehavior(s, what string) (splitBehavior, error) {
	switch s {
	case "Removed":
		return removed, nil
	case "Isolated":
		return isolated, nil
	case "MergedWithPrevious":
		return mergedWithPrevious, nil
	case "MergedWithNext":
		return mergedWithNext, nil
	case "Contiguous":
		return contiguous, nil
	}
	return 0, fmt.Errorf("tokenizer: unsupported %s behavior %q", what, s)
}

func parsePreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("tokenizer: invalid pre_tokenizer: %w", err)
	}
	switch c.Type {
	case "BertPreTokenizer":
		return bertPreTokenizer{}, nil
	case "Metaspace":
		var p struct {
			Replacement    *string `json:"replacement"`
			AddPrefixSpace *bool   `json:"add_prefix_space"`
			PrependScheme  *string `json:"prepend_scheme"`
			Split          *bool   `json:"split"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Metaspace: %w", err)
		}
		// ▁ (U+2581), "always" and split are the reference library's defaults.
		m := &metaspacePreTokenizer{replacement: "\u2581", scheme: prependAlways, split: true}
		if p.Replacement != nil {
			m.replacement = *p.Replacement
		}
		if m.replacement == "" {
			return nil, errors.New("tokenizer: Metaspace replacement is empty")
		}
		if p.PrependScheme != nil {
			switch *p.PrependScheme {
			case prependAlways, prependFirst, prependNever:
				m.scheme = *p.PrependScheme
			default:
				return nil, fmt.Errorf("tokenizer: unsupported Metaspace prepend_scheme %q", *p.PrependScheme)
			}
		} else if p.AddPrefixSpace != nil && !*p.AddPrefixSpace {
			// The old form: add_prefix_space false is "never".
			m.scheme = prependNever
		}
		if p.Split != nil {
			m.split = *p.Split
		}
		return m, nil
	case "Whitespace":
		return whitespacePreTokenizer{}, nil
	case "WhitespaceSplit":
		return &runePreTokenizer{isDelim: isHFWhitespace, behavior: removed}, nil
	case "Punctuation":
		var p struct {
			Behavior *string `json:"behavior"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Punctuation: %w", err)
		}
		b := isolated
		if p.Behavior != nil {
			var err error
			if b, err = parseBehavior(*p.Behavior, "Punctuation"); err != nil {
				return nil, err
			}
		}
		return &runePreTokenizer{isDelim: isBertPunct, behavior: b}, nil
	case "Digits":
		var p struct {
			Individual bool `json:"individual_digits"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Digits: %w", err)
		}
		b := contiguous
		if p.Individual {
			b = isolated
		}
		return &runePreTokenizer{isDelim: isNumeric, behavior: b}, nil
	case "Split":
		var p struct {
			Pattern  patternJSON `json:"pattern"`
			Behavior string      `json:"behavior"`
			Invert   bool        `json:"invert"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid Split: %w", err)
		}
		re, lit, err := p.Pattern.compile("Split")
		if err != nil {
			return nil, err
		}
		b, err := parseBehavior(p.Behavior, "Split")
		if err != nil {
			return nil, err
		}
		return &splitPreTokenizer{re: re, literal: lit, behavior: b, invert: p.Invert}, nil
	case "Sequence":
		var p struct {
			PreTokenizers []json.RawMessage `json:"pretokenizers"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("tokenizer: invalid pre_tokenizer Sequence: %w", err)
		}
		seq := make(sequencePreTokenizer, 0, len(p.PreTokenizers))
		for _, r := range p.PreTokenizers {
			x, err := parsePreTokenizer(r)
			if err != nil {
				return nil, err
			}
			seq = append(seq, x)
		}
		return seq, nil
	}
	return nil, fmt.Errorf("tokenizer: unsupported pre_tokenizer %q", c.Type)
}

// tokenRef is the [token, id] form BertProcessing and RobertaProcessing use.
type tokenRef [2]json.RawMessage

func (r tokenRef) id(what string) (int32, error) {
	var id int64
	if err := json.Unmarshal(r[1], &id); err != nil || id < 0 || id > math.MaxInt32 {
		return 0, fmt.Errorf("tokenizer: invalid %s token id %s", what, r[1])
	}
	return int32(id), nil
}

func parsePostProcessor(raw json.RawMessage, lookup func(string) (int32, bool)) (postProcessor, error) {
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return postProcessor{}, fmt.Errorf("tokenizer: invalid post_processor: %w", err)
	}
	switch c.Type {
	case "BertProcessing", "RobertaProcessing":
		var p struct {
			Sep tokenRef `json:"sep"`
			Cls tokenRef `json:"cls"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return postProcessor{}, fmt.Errorf("tokenizer: invalid %s: %w", c.Type, err)
		}
		sep, err := p.Sep.id("sep")
		if err != nil {
			return postProcessor{}, err
		}
		cls, err := p.Cls.id("cls")
		if err != nil {
			return postProcessor{}, err
		}
		if c.Type == "BertProcessing" {
			return bertPostProcessor(cls, sep), nil
		}
		return robertaPostProcessor(cls, sep), nil
	case "TemplateProcessing":
		return parseTemplate(raw)
	case "Sequence":
		var p struct {
			Processors []json.RawMessage `json:"processors"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return postProcessor{}, fmt.Errorf("tokenizer: invalid post_processor Sequence: %w", err)
		}
		if len(p.Processors) != 1 {
			// Chaining token-adding processors is not needed by any model this
			// server runs; ByteLevel, the usual companion, is unsupported anyway.
			return postProcessor{}, fmt.Errorf("tokenizer: unsupported post_processor Sequence of %d processors (one is supported)", len(p.Processors))
		}
		return parsePostProcessor(p.Processors[0], lookup)
	}
	return postProcessor{}, fmt.Errorf("tokenizer: unsupported post_processor %q", c.Type)
}

func parseTemplate(raw json.RawMessage) (postProcessor, error) {
	type pieceJSON struct {
		SpecialToken *struct {
			ID     string `json:"id"`
			TypeID int32  `json:"type_id"`
		} `json:"SpecialToken"`
		Sequence *struct {
			ID     string `json:"id"`
			TypeID int32  `json:"type_id"`
		} `json:"Sequence"`
	}
	var p struct {
		Single        []pieceJSON `json:"single"`
		Pair          []pieceJSON `json:"pair"`
		SpecialTokens map[string]struct {
			IDs []int64 `json:"ids"`
		} `json:"special_tokens"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return postProcessor{}, fmt.Errorf("tokenizer: invalid TemplateProcessing: %w", err)
	}
	convert := func(in []pieceJSON, name string) ([]templatePiece, error) {
		out := make([]templatePiece, 0, len(in))
		for _, x := range in {
			switch {
			case x.SpecialToken != nil:
				st, ok := p.SpecialTokens[x.SpecialToken.ID]
				if !ok {
					return nil, fmt.Errorf("tokenizer: TemplateProcessing %s template names special token %q missing from special_tokens", name, x.SpecialToken.ID)
				}
				ids := make([]int32, len(st.IDs))
				for i, id := range st.IDs {
					if id < 0 || id > math.MaxInt32 {
						return nil, fmt.Errorf("tokenizer: TemplateProcessing special token %q has id %d out of range", x.SpecialToken.ID, id)
					}
					ids[i] = int32(id)
				}
				if len(ids) == 0 {
					continue
				}
				out = append(out, templatePiece{special: ids, typeID: x.SpecialToken.TypeID})
			case x.Sequence != nil:
				switch x.Sequence.ID {
				case "A":
					out = append(out, templatePiece{typeID: x.Sequence.TypeID})
				case "B":
					if name == "single" {
						return nil, errors.New("tokenizer: TemplateProcessing single template uses sequence B")
					}
					out = append(out, templatePiece{seqB: true, typeID: x.Sequence.TypeID})
				default:
					return nil, fmt.Errorf("tokenizer: TemplateProcessing %s template has unknown sequence %q", name, x.Sequence.ID)
				}
			default:
				return nil, fmt.Errorf("tokenizer: TemplateProcessing %s template has an unknown piece", name)
			}
		}
		return out, nil
	}
	single, err := convert(p.Single, "single")
	if err != nil {
		return postProcessor{}, err
	}
	pair, err := convert(p.Pair, "pair")
	if err != nil {
		return postProcessor{}, err
	}
	// Truncation budgets each sequence once: a template that repeats or
	// drops one would make encodings longer than max_length (or lose a
	// sequence), so it is refused.
	count := func(tmpl []templatePiece, seqB bool) int {
		n := 0
		for _, x := range tmpl {
			if x.special == nil && x.seqB == seqB {
				n++
			}
		}
		return n
	}
	if count(single, false) != 1 {
		return postProcessor{}, fmt.Errorf("tokenizer: TemplateProcessing single template uses sequence A %d times (want once)", count(single, false))
	}
	if a, b := count(pair, false), count(pair, true); a != 1 || b != 1 {
		return postProcessor{}, fmt.Errorf("tokenizer: TemplateProcessing pair template uses sequence A %d times and B %d times (want each once)", a, b)
	}
	return newPostProcessor(single, pair), nil
}

// usesFirstScheme reports whether a Metaspace with prepend_scheme "first"
// is among the pre-tokenizers.
func usesFirstScheme(p preTokenizer) bool {
	switch p := p.(type) {
	case *metaspacePreTokenizer:
		return p.scheme == prependFirst
	case sequencePreTokenizer:
		for _, x := range p {
			if usesFirstScheme(x) {
				return true
			}
		}
	}
	return false
}

// Unicode versions of the Perl classes: the reference library's regex
// engines match \s, \d and \w on all of Unicode, Go's RE2 on ASCII only.
const (
	reSpace = `\t-\r\x{85}\p{Z}`
	reDigit = `\p{Nd}`
	reWord  = `\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\x{200C}\x{200D}`
)

// compileHFRegex compiles a Hugging Face (Oniguruma) pattern with Go's RE2,
// rewriting \s, \d, \w and their negations to their Unicode meaning. What
// cannot be rewritten faithfully (word boundaries, negated classes inside a
// bracket expression) or compiled (look-around, backreferences) is an error.
func compileHFRegex(pat string) (*regexp.Regexp, error) {
	var b strings.Builder
	inClass := false
	for i := 0; i < len(pat); i++ {
		c := pat[i]
		switch {
		case c == '\\' && i+1 < len(pat):
			i++
			e := pat[i]
			var in, out string
			switch e {
			case 's':
				in, out = reSpace, "["+reSpace+"]"
			case 'S':
				out = "[^" + reSpace + "]"
			case 'd':
				in, out = reDigit, reDigit
			case 'D':
				out = "[^" + reDigit + "]"
			case 'w':
				in, out = reWord, "["+reWord+"]"
			case 'W':
				out = "[^" + reWord + "]"
			case 'b', 'B':
				return nil, fmt.Errorf("word boundary \\%c has ASCII semantics in Go", e)
			default:
				b.WriteByte(c)
				b.WriteByte(e)
				continue
			}
			if inClass {
				if in == "" {
					return nil, fmt.Errorf("negated class \\%c inside brackets", e)
				}
				b.WriteString(in)
			} else {
				b.WriteString(out)
			}
			continue
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			// A ] right after [ or [^ is a literal.
			if i+1 < len(pat) && pat[i+1] == '^' {
				i++
				b.WriteByte('^')
			}
			if i+1 < len(pat) && pat[i+1] == ']' {
				i++
				b.WriteString(`\]`)
			}
			continue
		case c == ']' && inClass:
			inClass = false
		}
		b.WriteByte(c)
	}
	return regexp.Compile(b.String())
}
