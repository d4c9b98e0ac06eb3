// Runs llama.cpp (the npm package @fugood/llama.node) on a GGUF file and prints one JSON object.
//
//   node check.mjs MODEL.gguf TEXT N_PREDICT [PROMPT]
//     tokenizes TEXT and decodes N_PREDICT tokens greedily after PROMPT (default TEXT):
//     {"tokens": [...ids of TEXT...], "generated": "...", "tokens_predicted": n}
//   node check.mjs MODEL.gguf --score EVAL.json K
//     teacher-forced scoring of another engine's greedy output: EVAL.json is the output of
//     `mpqat eval DIR --generate PROMPT --greedy --json` (prompt_ids with BOS, tokens[].id). For
//     each generated position llama.cpp reads the text of the tokens before it and reports its
//     K most probable next tokens under the full softmax (temperature 1, no truncation):
//     {"steps": [{"roundtrip": true, "probs": [{"tok_str": " a", "prob": 0.41}, ...]}, ...]}
//     roundtrip is false where tokenizing the prefix's text does not give back its ids (then
//     that step scores a different sequence).
//
// Every sampler the binding enables by default beyond temperature (min-p 0.05, top-k 40, XTC
// with probability 0.1, DRY) is switched off explicitly, so greedy means argmax.
import { readFileSync } from 'node:fs'
import { loadModel } from '@fugood/llama.node'

const neutral = { top_k: 0, top_p: 1, min_p: 0, typical_p: 1, xtc_probability: 0, dry_multiplier: 0,
  penalty_last_n: 0, penalty_repeat: 1, top_n_sigma: -1, mirostat: 0, seed: 0 }

const [model, mode] = process.argv.slice(2)
const load = () => loadModel({ model, n_ctx: 2048, n_gpu_layers: 0, n_threads: 1, use_mmap: true,
  cache_type_k: 'f32', cache_type_v: 'f32', flash_attn_type: 'off' })
let ctx = await load()

// The binding (1.7.15) marks a context busy until a callback that it registers only after queueing
// the completion: when a small model finishes first, the context stays "busy" for good (and
// releasing it touches the finished worker). Such a context is left alone and a fresh one loaded;
// the process exits without releasing contexts.
async function complete(options) {
  try {
    return await ctx.completion(options)
  } catch (e) {
    if (!String(e).includes('Another completion is in progress')) throw e
    ctx = await load()
    return await ctx.completion(options)
  }
}

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i])

if (mode === '--score') {
  const evalOut = JSON.parse(readFileSync(process.argv[4], 'utf8'))
  const k = Number(process.argv[5] ?? 5)
  // mpqat's generate encodes the prompt with BOS first; llama.cpp adds its own BOS to a prompt text.
  const prompt = evalOut.prompt_ids.slice(1)
  const generated = evalOut.tokens.map((t) => t.id)
  const steps = []
  for (let i = 0; i < generated.length; ++i) {
    const ids = prompt.concat(generated.slice(0, i))
    // SentencePiece vocabularies detokenize with the space their tokenizer prefixes: drop it
    // when that is what gives the ids back.
    let text = await ctx.detokenize(ids)
    let back = Array.from((await ctx.tokenize(text)).tokens)
    if (!same(back, ids) && text.startsWith(' ')) {
      const trimmed = Array.from((await ctx.tokenize(text.slice(1))).tokens)
      if (same(trimmed, ids)) [text, back] = [text.slice(1), trimmed]
    }
    const res = await complete({ ...neutral, prompt: text, n_predict: 1, temperature: 1, n_probs: k })
    const all = res.completion_probabilities || []
    steps.push({ roundtrip: same(back, ids), probs: all.length ? all[all.length - 1].probs : [] })

  }
  console.log(JSON.stringify({ steps }))
} else {
  const [text, nPredict] = process.argv.slice(3)
  const tok = await ctx.tokenize(text)
  const res = await complete({ ...neutral, prompt: process.argv[5] ?? text, n_predict: Number(nPredict),
    temperature: 0 })
  console.log(JSON.stringify({ tokens: Array.from(tok.tokens), generated: res.text,
    tokens_predicted: res.tokens_predicted }))
}
process.exit(0)
