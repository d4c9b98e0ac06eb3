#!/usr/bin/env python3
"""A uniform bit plan for a Llama-family model folder: every block linear (q/k/v/o, gate/up/down)
at BITS bits with group GROUP, asymmetric, written as bitplan.json (docs/formats.md) to OUT or
standard output. For the tools' benchmarks; `mpqat allocate` makes plans from sensitivity.

    tools/uniform_plan.py MODEL_DIR BITS GROUP [OUT]
"""
import json
import sys

RELS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

if len(sys.argv) not in (4, 5):
    sys.exit("usage: tools/uniform_plan.py MODEL_DIR BITS GROUP [OUT]")
n = json.load(open(sys.argv[1] + "/config.json"))["num_hidden_layers"]
bits, group = int(sys.argv[2]), int(sys.argv[3])
plan = {"version": 1, "modules": {f"model.layers.{i}.{r}": {"bits": bits, "group_size": group, "sym": False}
                                  for i in range(n) for r in RELS}}
if len(sys.argv) == 5:
    json.dump(plan, open(sys.argv[4], "w"))
else:
    print(json.dumps(plan))
