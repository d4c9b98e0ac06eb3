#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for the C++ parity test.

Builds small random Llama / Qwen2 / OPT / BERT models with transformers, saves each with
save_pretrained(safe_serialization=True) and the logits transformers computes for fixed
input ids (with padding) as .npy files:

    OUT/<case>/model/{config.json, model.safetensors}
    OUT/<case>/input_ids.npy        int64 (B, T)
    OUT/<case>/attention_mask.npy   int64 (B, T)
    OUT/<case>/logits.npy           float32, (B, T, V) for causal LMs, (B, num_labels) otherwise

Then, in the repository:

    MPQAT_HF_PARITY_DIR=OUT build/mpqat_tests --gtest_filter='HFParity.*'

loads every OUT/<case>/model with mpqat::model::load_any_model and compares the logits
(causal LMs at real, unpadded positions only) to 1e-4 x max(1, max |logit|).

Needs: torch, transformers, numpy (CPU is enough). Usage: check_hf_parity.py OUT [--seed N]
"""

import argparse
import os
import sys

import numpy as np
import torch
import transformers


def perturb(model, std=0.2):
    """transformers' init (std 0.02, unit norms) leaves logits nearly flat; widen every
    parameter so that each part of the network visibly moves the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.normal_(1.0, std)
            else:
                p.normal_(0.0, std)


def make_model(cls, config):
    try:
        return cls._from_config(config, attn_implementation="eager")
    except TypeError:  # older transformers: no attn_implementation argument
        return cls(config)


def cases():
    V = 128
    llama = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=128, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    # Qwen2: q/k/v with bias, o without (mpqat derives that from the architecture).
    qwen2 = transformers.Qwen2Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=128, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, use_sliding_window=False)
    opt = dict(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
               vocab_size=V, max_position_embeddings=64, pad_token_id=1, bos_token_id=2,
               eos_token_id=2, activation_function="relu")
    opt_pre = transformers.OPTConfig(word_embed_proj_dim=64, do_layer_norm_before=True, **opt)
    # opt-350m layout: post-LN, project_in / project_out
    opt_post = transformers.OPTConfig(word_embed_proj_dim=32, do_layer_norm_before=False, **opt)
    opt_cls = transformers.OPTConfig(word_embed_proj_dim=64, do_layer_norm_before=True,
                                     num_labels=3, **opt)
    bert = transformers.BertConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=V, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12,
        hidden_act="gelu", pad_token_id=0, num_labels=3)
    # (name, class, config, pad id, padding side)
    return [
        ("llama_causal", transformers.LlamaForCausalLM, llama, 0, "right"),
        ("qwen2_causal", transformers.Qwen2ForCausalLM, qwen2, 0, "right"),
        ("opt_causal_preln", transformers.OPTForCausalLM, opt_pre, 1, "left"),
        ("opt_causal_postln_proj", transformers.OPTForCausalLM, opt_post, 1, "right"),
        ("opt_seqcls", transformers.OPTForSequenceClassification, opt_cls, 1, "right"),
        ("bert_seqcls", transformers.BertForSequenceClassification, bert, 0, "right"),
    ]


def inputs(gen, vocab, pad, side, B=3, T=11):
    # Ids from 3 up: 0, 1, 2 are pad / bos / eos in these configs, and a pad id inside a
    # sequence would change which token the OPT classifier reads.
    ids = torch.randint(3, vocab, (B, T), generator=gen, dtype=torch.long)
    mask = torch.ones(B, T, dtype=torch.long)
    for row, n_pad in ((1, 4), (2, 1)):
        if side == "right":
            ids[row, T - n_pad:] = pad
            mask[row, T - n_pad:] = 0
        else:
            ids[row, :n_pad] = pad
            mask[row, :n_pad] = 0
    return ids, mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name, cls, config, pad, side in cases():
        torch.manual_seed(args.seed)
        model = make_model(cls, config)
        perturb(model)
        model.eval()
        gen = torch.Generator().manual_seed(args.seed)
        ids, mask = inputs(gen, config.vocab_size, pad, side)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        if not torch.isfinite(logits[mask.bool()] if logits.dim() == 3 else logits).all():
            sys.exit(f"{name}: non-finite logits")
        d = os.path.join(args.out, name)
        model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        np.save(os.path.join(d, "input_ids.npy"), ids.numpy().astype("<i8"))
        np.save(os.path.join(d, "attention_mask.npy"), mask.numpy().astype("<i8"))
        np.save(os.path.join(d, "logits.npy"), np.ascontiguousarray(logits.numpy().astype("<f4")))
        print(f"{name}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max().item():.3f} -> {d}")
    print(f"now run: MPQAT_HF_PARITY_DIR={args.out} build/mpqat_tests --gtest_filter='HFParity.*'")


if __name__ == "__main__":
    main()
