"""Run inside GPTQModel's venv (:mod:`bitalloc.toolkits.gptqmodel`), never imported by
bitalloc: ``python gptqmodel_worker.py CONFIG.json MODEL_DIR CALIB.safetensors OUT PROBE``.

Quantizes MODEL_DIR with GPTQModel and the ``quantization_config`` in CONFIG.json on the token
batches ``batch_i`` of CALIB, saves the checkpoint to OUT, loads it back with GPTQModel on the
CPU, and writes PROBE: the dequantized weight of every quantized layer (float32, by module
name) and ``__logits__`` of GPTQModel's forward on ``__probe_ids__``.
"""

import json
import sys

import torch
from gptqmodel import GPTQModel, QuantizeConfig
from safetensors.torch import load_file, save_file


def main(config, model_dir, calib, out, probe):
    cfg = json.load(open(config))
    qc = QuantizeConfig(
        bits=cfg["bits"],
        group_size=cfg["group_size"],
        sym=cfg["sym"],
        desc_act=cfg.get("desc_act", False),
        dynamic=cfg.get("dynamic") or None,
        # GPTQModel's group-aware reordering (on by default) refuses per-channel layers
        # (group_size -1); the exported config is plain GPTQ without act-order
        act_group_aware=False,
    )
    data = load_file(calib)
    batches = [data[k] for k in sorted(k for k in data if k.startswith("batch_"))]
    rows = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in batches]
    model = GPTQModel.load(model_dir, qc, device="cpu")
    model.quantize(rows, batch_size=1)
    model.save(out)
    quantized = GPTQModel.load(out, device="cpu")
    tensors = {}
    for name, module in quantized.model.named_modules():
        if hasattr(module, "dequantize_weight") and hasattr(module, "qweight"):
            w = module.dequantize_weight().T.contiguous().float()  # [out, in]
            tensors[name] = w
    with torch.no_grad():
        tensors["__logits__"] = quantized.model(data["__probe_ids__"]).logits.float().contiguous()
    save_file(tensors, probe)


if __name__ == "__main__":
    main(*sys.argv[1:6])
