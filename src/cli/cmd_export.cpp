// `mpqat export gguf CKPT --out model.gguf [--embeddings f16|q8_0|f32|q6_k] [--float-type f16|f32|q8_0|qN_k]
//  [--fallback f16|f32|q8_0] [--k-quants on|off] [--imatrix FILE | --calib FILE] [--decoded-out DIR]
//  [--name NAME] [--force]`: a checkpoint for llama.cpp (docs/gguf.md).
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "mpqat/cli/commands.h"
#include "mpqat/data/gguf_vocab.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/gguf_export.h"
#include "mpqat/sensitivity/imatrix.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {

std::vector<io::GgufKV> gguf_vocab_of_folder(const std::string& dir, const std::string& what) {
  const model::ModelFolder folder(dir);
  if (!folder.has_tokenizer())
    throw InputError(what + ": '" + dir +
                     "' has no tokenizer (tokenizer.json, tokenizer.model or tokenizer.bin): llama.cpp needs one in "
                     "the GGUF file");
  return data::gguf_vocab_metadata(folder.tokenizer());
}

void add_export_command(CLI::App& app) {
  auto* ex = app.add_subcommand("export", "Write a checkpoint in a serving engine's own format");
  ex->require_subcommand(1);
  struct Opts {
    std::string dir, out, embeddings = "f16", float_type = "f16", fallback = "f16", name, k_quants = "on", imatrix,
        calib;
    int64_t samples = 128, seqlen = 512;
    std::string decoded_out;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* g = ex->add_subcommand(
      "gguf", "A Llama-family model folder (float or packed mixed-precision) as one GGUF file for llama.cpp: each "
              "quantized module in the ggml block type that holds its codes (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) or, for "
              "2/3/6 bits and other groups on rows of 256, requantized into Q2_K-Q6_K (importance-weighted with "
              "--imatrix / --calib); a table of what was exact");
  g->add_option("CKPT", o->dir, "model folder (config.json + safetensors), e.g. an `mpqat quantize` output")->required();
  g->add_option("--out", o->out, "output .gguf file (written atomically)")->required();
  g->add_option("--embeddings", o->embeddings, "token_embd / output type: f16, q8_0, f32, q6_k")->capture_default_str();
  g->add_option("--float-type", o->float_type,
                "type of the linears of a float checkpoint: f16, q8_0, f32, q2_k, q3_k, q4_k, q5_k, q6_k")
      ->capture_default_str();
  g->add_option("--fallback", o->fallback,
                "type of packed modules no block type holds (row not a multiple of 32, act-order g_idx): f16, q8_0, f32")
      ->capture_default_str();
  g->add_option("--k-quants", o->k_quants,
                "on: 2/3/6-bit modules (and asymmetric 4/5-bit ones with groups other than 32) as Q2_K ... Q6_K, "
                "requantized, where rows are multiples of 256; off: only the exact legacy types and the fallback")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  g->add_option("--imatrix", o->imatrix,
                "importance matrix (mpqat imatrix): the K-quant search weighs each input column's error by E[x^2]");
  g->add_option("--calib", o->calib,
                "measure the importance matrix on this calibration text first (on CKPT itself), instead of --imatrix");
  g->add_option("--samples", o->samples, "with --calib: windows")->capture_default_str();
  g->add_option("--seqlen", o->seqlen, "with --calib: tokens per window")->capture_default_str();
  g->add_option("--decoded-out", o->decoded_out,
                "also write the float model the GGUF file decodes to (what llama.cpp computes with) as a Hugging "
                "Face folder, for measuring it with mpqat eval");
  g->add_option("--name", o->name, "general.name (default: the base model folder's name, from the checkpoint's provenance)");
  g->add_flag("--force", o->force, "replace an existing output file")->capture_default_str();
  g->callback([o] {
    quant::GgufExportOptions opts;
    opts.embedding_type = quant::parse_gguf_float_type(o->embeddings, "--embeddings");
    opts.float_type = quant::parse_gguf_float_type(o->float_type, "--float-type");
    opts.fallback = quant::parse_gguf_float_type(o->fallback, "--fallback");
    opts.k_quants = o->k_quants == "on";
    if (!o->imatrix.empty() && !o->calib.empty())
      throw InputError("export gguf: give --imatrix FILE or --calib FILE, not both");
    if (!o->imatrix.empty()) opts.importance = sensitivity::read_importance(o->imatrix).modules;
    if (!o->calib.empty()) {
      data::CalibrationOptions co;
      co.samples = o->samples;
      co.seqlen = o->seqlen;
      opts.importance = sensitivity::importance_of_folder(o->dir, o->calib, co, model::StreamingOptions{}).modules;
    }
    opts.name = o->name;
    opts.force = o->force;
    const auto vocab = gguf_vocab_of_folder(o->dir, "export gguf");
    const auto rep = quant::export_gguf(o->dir, vocab, o->out, opts);
    std::cout << quant::format_gguf_report(rep);
    if (!o->decoded_out.empty()) {
      quant::decode_gguf_to_folder(o->out, o->dir, o->decoded_out);
      std::cout << "decoded float model: " << o->decoded_out << "\n";
    }
  });
}

}  // namespace mpqat::cli
