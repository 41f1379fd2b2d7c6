// Independent reference scores for a cross-encoder model dir, computed with
// transformers.js (its own tokenizer and onnxruntime-node), offline.
//
// usage: node reference.mjs MODEL_DIR SETS_JSON MAX_LENGTH MODEL_JSON > golden.json
//   MODEL_DIR  a Hugging Face style dir (config.json, tokenizer.json, onnx/model.onnx)
//   SETS_JSON  [{"query": "...", "candidates": ["...", ...]}, ...]
//   MAX_LENGTH longest pair in tokens; a pair longer than this is an error,
//              because transformers.js truncates a pair by cutting its tail
//              (dropping the final separator) instead of Hugging Face's
//              longest_first, so truncated pairs would not be a fair reference.
//   MODEL_JSON how the model was made ({"arch", "layers", ...}), copied into
//              the golden's "model" with the sha256 of onnx/model.onnx added
// Each set is one batch, padded on the right to its longest pair, as a server
// batches it. Scores are sigmoid(logit) computed here in float64.
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import { env, AutoTokenizer, AutoModelForSequenceClassification } from '@huggingface/transformers';

const [dir, setsPath, maxLenArg, modelArg] = process.argv.slice(2);
const maxLength = Number(maxLenArg);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(dir)) + '/';
const name = path.basename(path.resolve(dir));

const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForSequenceClassification.from_pretrained(name, { dtype: 'fp32', device: 'cpu' });
const sets = JSON.parse(fs.readFileSync(setsPath, 'utf8'));
const out = [];
for (const s of sets) {
  const queries = s.candidates.map(() => s.query);
  const encodings = [];
  for (const c of s.candidates) {
    const e = tokenizer(s.query, { text_pair: c, return_tensor: false });
    if (e.input_ids.length > maxLength) {
      throw new Error(`pair of ${e.input_ids.length} tokens exceeds max_length ${maxLength}: ${s.query} / ${c.slice(0, 40)}`);
    }
    if (e.attention_mask.some((m) => m !== 1)) throw new Error('unpadded pair with a masked token');
    const enc = { input_ids: e.input_ids };
    if (e.token_type_ids) enc.token_type_ids = e.token_type_ids;
    encodings.push(enc);
  }
  const inputs = tokenizer(queries, { text_pair: s.candidates, padding: true, truncation: true, max_length: maxLength });
  const { logits } = await model(inputs);
  const labels = logits.dims[1];
  const l = Array.from(logits.data).filter((_, i) => i % labels === 0);
  out.push({
    query: s.query,
    candidates: s.candidates,
    scores: l.map((x) => 1 / (1 + Math.exp(-x))),
    logits: l,
    encodings,
  });
}
const modelInfo = JSON.parse(modelArg);
modelInfo.model_sha256 = crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, 'onnx', 'model.onnx'))).digest('hex');
const pkg = (p) => JSON.parse(fs.readFileSync(new URL(`./node_modules/${p}/package.json`, import.meta.url), 'utf8')).version;
const golden = {
  model: modelInfo,
  max_length: maxLength,
  reference: `transformers.js ${pkg('@huggingface/transformers')} (AutoTokenizer, AutoModelForSequenceClassification) on onnxruntime-node ${pkg('onnxruntime-node')}, CPU; one padded batch per set; scores = sigmoid(logit) in float64`,
  sets: out,
};
// One set per line keeps the file reviewable and diffs small.
const lines = golden.sets.map((s) => ' ' + JSON.stringify(s));
const head = JSON.stringify({ ...golden, sets: [] }, null, 1).replace(/\[\]\n}$/, '');
process.stdout.write(head + '[\n' + lines.join(',\n') + '\n ]\n}\n');
