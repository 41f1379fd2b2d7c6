// A rerank server on transformers.js, the baseline of docs/BENCHMARKS.md
// "Speed (issue 14)": POST /v1/rerank {"query", "candidates"} answers
// {"results": [{"index", "score"}]} like rerank serve, scoring each request
// as transformers.js users do: one batch per request, padded to its longest
// pair, sigmoid of the logit. Usage: node server.mjs MODEL_DIR PORT
// (MODEL_DIR in Hugging Face layout with onnx/model.onnx; PORT 0 picks one
// and prints it).
import http from "node:http";
import path from "node:path";
import { env, AutoTokenizer, AutoModelForSequenceClassification } from "@huggingface/transformers";

const [dir, portArg] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node server.mjs MODEL_DIR [PORT]");
  process.exit(2);
}
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(dir));
const id = path.basename(path.resolve(dir));
const tokenizer = await AutoTokenizer.from_pretrained(id);
const model = await AutoModelForSequenceClassification.from_pretrained(id, { dtype: "fp32" });

// One request at a time, as a Node process runs them: inference is
// synchronous native work on the event loop's turn.
const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/v1/rerank") {
    res.writeHead(404).end('{"detail":"Not Found"}');
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      const docs = body.candidates;
      const inputs = tokenizer(new Array(docs.length).fill(body.query), {
        text_pair: docs, padding: true, truncation: true, max_length: 512,
      });
      const { logits } = await model(inputs);
      const results = Array.from(logits.data, (x, index) => ({ index, score: 1 / (1 + Math.exp(-x)) }));
      results.sort((a, b) => b.score - a.score);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ results, model: id }));
    } catch (e) {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ detail: String(e) }));
    }
  });
});
server.listen(Number(portArg ?? 0), "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
