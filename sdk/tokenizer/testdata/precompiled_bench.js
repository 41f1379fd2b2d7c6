#!/usr/bin/env node
// Times the Hugging Face tokenizers library (Rust, through the Node binding
// @anush008/tokenizers 0.6.0) on the Precompiled/Unigram benchmark documents,
// the baseline of BenchmarkPrecompiledCorpus and BenchmarkUnigramCorpus
// (precompiled_test.go, unigram_test.go): the lines of precompiled_corpus.json
// joined by a space in groups of 8.
//
// usage: UV_THREADPOOL_SIZE=1 NODE_PATH=DIR/node_modules node precompiled_bench.js unigram_xlmr.json precompiled_corpus.json [ROUNDS]
//
// Prints, best of ROUNDS rounds, microseconds per document for:
//   normalize: the Precompiled normalizer alone (normalizeString, synchronous);
//   encode:    the whole test tokenizer (Precompiled, WhitespaceSplit, Unigram
//              with byte fallback off, no special tokens), all documents in
//              flight at once with UV_THREADPOOL_SIZE=1 so that the Rust
//              library runs single-threaded on the one worker thread.
// Development tool only: nothing in the product runs it.
'use strict';
const tk = require('@anush008/tokenizers');
const fs = require('fs');

const [file, corpus, roundsArg] = process.argv.slice(2);
const rounds = parseInt(roundsArg || '5', 10);
const docsPerGroup = 8; // as benchDocuments in precompiled_test.go
const lines = fs.readFileSync(corpus, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l).text);
const docs = [];
for (let i = 0; i < lines.length; i += docsPerGroup) docs.push(lines.slice(i, i + docsPerGroup).join(' '));

const j = JSON.parse(fs.readFileSync(file, 'utf8'));
const norm = tk.precompiled(Array.from(Buffer.from(j.normalizer.precompiled_charsmap, 'base64')));
j.model.byte_fallback = false;
const tok = tk.Tokenizer.fromString(JSON.stringify(j));

(async () => {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (const d of docs) norm.normalizeString(d);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e3);
  }
  console.log(`normalize ${(best / docs.length).toFixed(1)} us/doc (${docs.length} docs)`);
  best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    await Promise.all(docs.map((d) => tok.encode(d, null, { addSpecialTokens: false })));
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e3);
  }
  console.log(`encode    ${(best / docs.length).toFixed(1)} us/doc (${docs.length} docs)`);
})();
