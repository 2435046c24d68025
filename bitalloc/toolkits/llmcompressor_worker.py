"""Run inside llm-compressor's venv (:mod:`bitalloc.toolkits.llmcompressor`), never imported
by bitalloc: ``python llmcompressor_worker.py CONFIG.json MODEL_DIR CALIB.safetensors OUT
gptq|rtn``.

Builds a ``GPTQModifier`` (gptq) or ``QuantizationModifier`` (rtn) from the ``config_groups``
and ``ignore`` of the compressed-tensors ``quantization_config`` in CONFIG.json, runs
llm-compressor's ``oneshot`` on the token batches ``batch_i`` of CALIB, and saves the
compressed checkpoint and the tokenizer to OUT.
"""

import json
import sys

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(config, model_dir, calib, out, modifier):
    qc = json.load(open(config))
    groups = {
        name: {"targets": g["targets"], "weights": g["weights"]}
        for name, g in qc["config_groups"].items()
    }
    cls = GPTQModifier if modifier == "gptq" else QuantizationModifier
    recipe = cls(config_groups=groups, ignore=qc.get("ignore", []))
    data = load_file(calib)
    rows = [data[k][0].tolist() for k in sorted(k for k in data if k.startswith("batch_"))]
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    oneshot(
        model=model,
        dataset=ds,
        recipe=recipe,
        num_calibration_samples=len(rows),
        max_seq_length=max(len(r) for r in rows),
    )
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:6])
