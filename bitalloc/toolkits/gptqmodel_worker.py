"""Run inside GPTQModel's venv (:mod:`bitalloc.toolkits.gptqmodel`), never imported by
bitalloc: ``python gptqmodel_worker.py CONFIG.json MODEL_DIR CALIB.safetensors OUT PROBE
[CODES.safetensors]``.

Quantizes MODEL_DIR with GPTQModel and the ``quantization_config`` in CONFIG.json on the token
batches ``batch_i`` of CALIB, saves the checkpoint to OUT, loads it back with GPTQModel on the
CPU, and writes PROBE: the dequantized weight of every quantized layer (float32, by module
name) and ``__logits__`` of GPTQModel's forward on ``__probe_ids__``.

With CODES (per layer ``NAME.weight`` ``W_hat`` [out, in], ``NAME.scale`` and ``NAME.zero``
[out, groups], GPTQ's unsigned zero points), GPTQModel's GPTQ step returns those instead of
solving its own: the rest of GPTQModel's flow is unchanged (its per-module ``dynamic``
config, its quantized-linear class packing ``qweight``/``qzeros``/``scales``/``g_idx``, its
v1 checkpoint writer and loader), so the checkpoint holds bitalloc's codes in GPTQModel's own
layout. The model is then quantized in float32, so the codes GPTQModel re-derives from
``W_hat`` are exactly bitalloc's.
"""

import json
import sys

import torch
from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
from gptqmodel.nn_modules.qlinear import PackableQuantLinear
from gptqmodel.quantization import gptq
from safetensors.torch import load_file, save_file


def plant(codes):
    """Make GPTQModel's GPTQ step return ``codes`` for every module it quantizes."""
    done = set()

    def quantize(self, blocksize=128):
        name = self._named_module.full_name
        if f"{name}.weight" not in codes:
            raise RuntimeError(f"GPTQModel quantizes {name}, which the plan does not list")
        w = codes[f"{name}.weight"]
        scale, zero = codes[f"{name}.scale"].float(), codes[f"{name}.zero"].float()
        rows, cols = w.shape
        group = self.qcfg.group_size if self.qcfg.group_size > 0 else cols
        if tuple(scale.shape) != (rows, cols // group):
            raise RuntimeError(
                f"{name}: GPTQModel's config gives group {self.qcfg.group_size}, but the plan's "
                f"scales are {tuple(scale.shape)} for a [{rows}, {cols}] weight"
            )
        if int(zero.max()) > 2**self.qcfg.bits - 1:
            raise RuntimeError(f"{name}: zero points exceed GPTQModel's {self.qcfg.bits} bits")
        g_idx = torch.arange(cols, dtype=torch.int32) // group
        # fresh tensors made here, in whatever grad mode GPTQModel runs its GPTQ step
        wq = torch.empty_like(self.module.weight.data).copy_(w)
        scale, zero = scale.clone(), zero.clone()
        done.add(name)
        return wq, scale, zero, g_idx, 0.0, 0.0, 0.0, self.nsamples

    gptq.GPTQ.quantize = quantize
    return done


def unpacked(name, module):
    """What GPTQModel's own unpacking reads from the checkpoint for one layer (loaded with its
    torch kernel, which keeps the checkpoint's layout): the integer codes ``NAME.codes``
    [out, in], zero points ``NAME.zeros`` and ``NAME.scales`` [out, groups], captured where
    its reference ``PackableQuantLinear.dequantize_weight`` hands them to
    ``_dequantize_from_codes``."""
    seen = {}
    inner = module._dequantize_from_codes

    def capture(weight, zeros, num_itr=1):
        seen["codes"], seen["zeros"] = weight, zeros
        return inner(weight, zeros, num_itr=num_itr)

    module._dequantize_from_codes = capture
    try:
        PackableQuantLinear.dequantize_weight(module)
    finally:
        del module._dequantize_from_codes
    rows = module.out_features
    return {
        f"{name}.codes": seen["codes"][: module.in_features].T.to(torch.int16).contiguous(),
        f"{name}.zeros": seen["zeros"][:, :rows].T.to(torch.int16).contiguous(),
        f"{name}.scales": module.scales[:, :rows].T.float().contiguous(),
    }


def main(config, model_dir, calib, out, probe, codes=None):
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
    load = {"dtype": torch.float32} if codes else {}
    given = load_file(codes) if codes else None
    planted = plant(given) if given else None
    model = GPTQModel.load(model_dir, qc, device="cpu", **load)
    model.quantize(rows, batch_size=1)
    if planted is not None:
        wanted = {k.rpartition(".")[0] for k in given if k.endswith(".weight")}
        if wanted - planted:
            raise RuntimeError(f"GPTQModel left planned layers alone: {sorted(wanted - planted)}")
    model.save(out)
    quantized = GPTQModel.load(out, device="cpu")
    tensors = {}
    if codes:
        reference = GPTQModel.load(out, device="cpu", backend=BACKEND.TORCH)
        for name, module in reference.model.named_modules():
            if isinstance(module, PackableQuantLinear):
                tensors.update(unpacked(name, module))
        del reference
    for name, module in quantized.model.named_modules():
        if hasattr(module, "dequantize_weight") and hasattr(module, "qweight"):
            w = module.dequantize_weight().T.contiguous().float()  # [out, in]
            tensors[name] = w
    with torch.no_grad():
        tensors["__logits__"] = quantized.model(data["__probe_ids__"]).logits.float().contiguous()
    save_file(tensors, probe)


if __name__ == "__main__":
    main(*sys.argv[1:7])
