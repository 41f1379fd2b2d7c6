#!/usr/bin/env node
// Times the Hugging Face tokenizers library (Rust, through tokref's Node
// binding) on the benchmark pairs, measuring only the encode loop.
//
// usage: UV_THREADPOOL_SIZE=1 TOKREF_DIR=DIR node tokref_bench.js TOKENIZER_JSON PAIRS_JSONL [ROUNDS]
//   TOKREF_DIR: a directory where tokref's package.json was npm-installed.
//   PAIRS_JSONL: from `go test ./sdk/tokenizer -run TestWriteBenchPairs -write-bench-pairs DIR`.
// The binding only has an asynchronous encode (each call is a task on
// libuv's thread pool) and its encodeBatch takes no pairs, so two timings are
// printed, best of ROUNDS rounds each:
//   sequential: one awaited encode after the other; run it pinned to one core
//     (taskset -c 0) and it is everything single-threaded, binding included;
//   pooled: all pairs in flight at once with UV_THREADPOOL_SIZE=1, so the
//     Rust library runs on one worker thread while JavaScript glue runs on
//     the main thread: the library's own single-threaded throughput.
'use strict';
const path = require('path');
const fs = require('fs');
const { Tokenizer } = require(path.join(process.env.TOKREF_DIR || '.', 'node_modules', '@anush008', 'tokenizers'));

const [file, pairsFile, roundsArg] = process.argv.slice(2);
const rounds = parseInt(roundsArg || '5', 10);
const pairs = fs.readFileSync(pairsFile, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
const tok = Tokenizer.fromFile(file);
tok.setTruncation(512, { strategy: 'LongestFirst' });

(async () => {
  let tokens = 0;
  for (const p of pairs) tokens += (await tok.encode(p.query, p.document)).getIds().length; // warm-up, token count
  const report = (name, s) => console.log(`${name} ${(pairs.length / s).toFixed(0)} pairs/s, ${(tokens / s).toFixed(0)} tokens/s, ${(s * 1e6 / pairs.length).toFixed(1)} us/pair`);
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (const p of pairs) await tok.encode(p.query, p.document);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  report('sequential', best);
  best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    await Promise.all(pairs.map((p) => tok.encode(p.query, p.document)));
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  report('pooled    ', best);
})();
