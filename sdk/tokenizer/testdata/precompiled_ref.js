#!/usr/bin/env node
// Reference outputs for the Precompiled normalizer and Unigram model goldens
// (precompiled_test.go, unigram_test.go with -update), from the Hugging Face
// tokenizers Rust library through its Node binding @anush008/tokenizers 0.6.0
// (the same library as ../shared/tools/tokref; NODE_PATH must reach it).
// Development tool only: nothing in the product runs it.
//
// usage: node precompiled_ref.js normalize TOKENIZER_JSON  stdin {"text"} -> {"normalized"}
//          (the tokenizer's Precompiled normalizer, alone)
//        node precompiled_ref.js encode TOKENIZER_JSON     stdin {"text"} -> {"ids","tokens"}
//          (the whole tokenizer, without special tokens)
'use strict';
const tk = require('@anush008/tokenizers');
const fs = require('fs');
const readline = require('readline');
const [mode, file] = process.argv.slice(2);
let norm, tok;
if (mode === 'normalize') {
  const j = JSON.parse(fs.readFileSync(file, 'utf8'));
  let n = j.normalizer;
  if (n.type === 'Sequence') n = n.normalizers[0];
  norm = tk.precompiled(Array.from(Buffer.from(n.precompiled_charsmap, 'base64')));
} else {
  tok = tk.Tokenizer.fromFile(file);
}
(async () => {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const { text } = JSON.parse(line);
    try {
      if (mode === 'normalize') {
        process.stdout.write(JSON.stringify({ normalized: norm.normalizeString(text) }) + '\n');
      } else {
        const e = await tok.encode(text, null, { addSpecialTokens: false });
        process.stdout.write(JSON.stringify({ ids: e.getIds(), tokens: e.getTokens() }) + '\n');
      }
    } catch (err) {
      process.stdout.write(JSON.stringify({ error: String(err) }) + '\n');
    }
  }
})();
