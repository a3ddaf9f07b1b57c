"""Random-weight models of built-in architectures, built without any download.

Initialisation is fast for multi-billion-parameter shapes: the module tree is built
on the meta device (no default init), storage is allocated directly on the target
device, and each tensor is filled once from a seeded generator. Rotary buffers,
which the meta device leaves empty, are recomputed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from joulebench.models import architectures
from joulebench.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_builtin_tokenizer

INIT_STD = 0.02


def arch_config_dict(arch: str) -> dict[str, Any]:
    cfg = {k: v for k, v in architectures()[arch].items() if not k.startswith("_")}
    cfg.update(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return cfg


def build_config(arch: str):
    from transformers import AutoConfig

    cfg = arch_config_dict(arch)
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def parameter_count(arch: str) -> dict[str, int]:
    """Analytic parameter counts of a built-in decoder-only Llama/Qwen/Mistral shape."""
    return parameter_count_of(architectures()[arch])


def parameter_count_of(c) -> dict[str, int]:
    """Analytic parameter counts of a decoder-only Llama/Qwen/Mistral shape from its config.json keys (KeyError
    when one is missing)."""
    h, i, n = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or h // heads)
    v = int(c["vocab_size"])
    bias = c.get("model_type") == "qwen2"
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h + ((heads + 2 * kv) * hd if bias else 0)
    mlp = 3 * h * i
    per_layer = attn + mlp + 2 * h
    embed = v * h
    lm_head = 0 if c.get("tie_word_embeddings") else v * h
    return {"non_embedding": n * per_layer + h, "embedding": embed, "lm_head": lm_head,
            "total": n * per_layer + h + embed + lm_head}


def _fill_random(model, *, seed: int, device) -> None:
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                if name.endswith("norm.weight") or "norm" in name.rsplit(".", 2)[-2]:
                    p.fill_(1.0)
                else:
                    p.zero_()
            else:
                p.normal_(0.0, INIT_STD, generator=gen)


def _reinit_rotary(model, device) -> None:
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "config"):
            fresh = type(module)(config=module.config)
            for bname, buf in fresh.named_buffers(recurse=False):
                module._buffers[bname] = buf.to(device)
            for attr in ("attention_scaling",):
                if hasattr(fresh, attr):
                    setattr(module, attr, getattr(fresh, attr))


def build_model(arch: str, *, dtype, device, seed: int = 0, attn_implementation: str | None = None):
    """A random-weight causal LM of `arch` on `device` (torch dtype, torch device)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = build_config(arch)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.to_empty(device=device)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    _fill_random(model, seed=seed, device=device)
    _reinit_rotary(model, device)
    model.eval()
    return model


def cache_root() -> Path:
    base = os.environ.get("JOULEBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "joulebench")
    return Path(base)


def materialize_synthetic(arch: str, *, dtype: str = "bfloat16", seed: int = 0,
                          root: Path | None = None, weights: bool = True) -> Path:
    """Write a synthetic model as a normal model directory (safetensors, config, tokenizer).

    Engines that load from disk (vLLM, SGLang) use this. Cached by (arch, dtype, seed); written to
    a temporary folder and renamed, so a crash never leaves a half model behind.
    ``weights=False`` writes only config.json and the tokenizer: for engines that make their own
    random weights (vLLM's and SGLang's ``load_format: dummy``), which saves writing and reading
    16 GB for an 8B shape.
    """
    root = Path(root) if root else cache_root() / "synthetic"
    target = root / (f"{arch}-{dtype}-seed{seed}" if weights else f"{arch}-{dtype}-config-only")
    if (target / "joulebench-synthetic.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=root))
    try:
        if weights:
            import torch

            model = build_model(arch, dtype=getattr(torch, dtype), device="cpu", seed=seed)
            model.save_pretrained(tmp, safe_serialization=True)
            vocab_size = model.config.vocab_size
            del model
        else:
            config = build_config(arch)
            config.torch_dtype = dtype
            config.save_pretrained(tmp)
            vocab_size = config.vocab_size
        save_builtin_tokenizer(vocab_size, tmp)
        (tmp / "joulebench-synthetic.json").write_text(json.dumps(
            {"arch": arch, "dtype": dtype, "seed": seed if weights else None, "synthetic_weights": True,
             "weights_written": weights}, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
