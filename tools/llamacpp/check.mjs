// Runs llama.cpp (the npm package @fugood/llama.node) on a GGUF file: tokenizes a text and
// decodes greedily from BOS, printing one JSON object on stdout:
//   {"tokens": [...ids of TEXT...], "generated": "...", "pieces": [...], "probs": [...]}
// usage: node tools/llamacpp/check.mjs MODEL.gguf TEXT N_PREDICT [PROMPT (default TEXT)]
import { loadModel } from '@fugood/llama.node'

const [model, text, nPredict] = process.argv.slice(2)
const ctx = await loadModel({ model, n_ctx: 512, n_gpu_layers: 0, n_threads: 1, use_mmap: true,
  cache_type_k: 'f32', cache_type_v: 'f32', flash_attn_type: 'off' })
const tok = await ctx.tokenize(text)
const res = await ctx.completion({
  prompt: process.argv[5] ?? text,
  n_predict: Number(nPredict),
  temperature: 0,
  n_probs: 1,
  seed: 0,
})
const probs = (res.completion_probabilities || []).map((p) => ({ content: p.content, probs: p.probs }))
console.log(JSON.stringify({ tokens: Array.from(tok.tokens), generated: res.text, probs,
  tokens_predicted: res.tokens_predicted }))
await ctx.release()
