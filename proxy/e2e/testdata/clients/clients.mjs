// Runs the real client SDKs against a rerank server and prints, as one JSON
// object on stdout, each client's scores by document index. Used by
// proxy/e2e/clients_e2e_test.go, which starts the server and compares the
// scores with the seed route's.
//
// Environment: RERANK_URL (http://host:port), RERANK_MODEL_NAME,
// RERANK_TOKEN (a bearer key; any string when auth is off), RERANK_QUERY,
// RERANK_DOCS (a JSON array of strings).
import { CohereClient, CohereClientV2 } from "cohere-ai";
import { CohereRerank } from "@langchain/cohere";
import { Document } from "@langchain/core/documents";
import { rerank } from "ai";
import { createCohere } from "@ai-sdk/cohere";

const base = process.env.RERANK_URL;
const model = process.env.RERANK_MODEL_NAME;
const token = process.env.RERANK_TOKEN;
const query = process.env.RERANK_QUERY;
const docs = JSON.parse(process.env.RERANK_DOCS);
const out = {};

// Cohere SDK v2: POST /v2/rerank.
const v2 = new CohereClientV2({ token, environment: base });
const r2 = await v2.rerank({ model, query, documents: docs, topN: docs.length });
out.cohere_v2 = r2.results.map((r) => ({ index: r.index, score: r.relevanceScore }));

// Cohere SDK v1: POST /v1/rerank with object documents and returnDocuments.
const v1 = new CohereClient({ token, environment: base });
const r1 = await v1.rerank({
  model,
  query,
  documents: docs.map((text, i) => ({ text, id: `doc-${i}` })),
  returnDocuments: true,
  topN: docs.length,
});
out.cohere_v1 = r1.results.map((r) => ({ index: r.index, score: r.relevanceScore, document: r.document }));

// LangChain: CohereRerank.compressDocuments over the Cohere v1 client.
const lc = new CohereRerank({ client: v1, model, topN: docs.length });
const compressed = await lc.compressDocuments(
  docs.map((text, i) => new Document({ pageContent: text, metadata: { i } })),
  query,
);
out.langchain = compressed.map((d) => ({ index: d.metadata.i, score: d.metadata.relevanceScore }));

// Vercel AI SDK: rerank() with the Cohere provider pointed at /v2.
const cohere = createCohere({ baseURL: `${base}/v2`, apiKey: token });
const { ranking } = await rerank({ model: cohere.reranking(model), query, documents: docs, topN: docs.length, maxRetries: 0 });
out.ai_sdk = ranking.map((r) => ({ index: r.originalIndex, score: r.score }));

process.stdout.write(JSON.stringify(out) + "\n");
