"""transformers engine: static batches through ``model.generate``.

Timing: a streamer receives every decoding step's tokens (already on the host, so
the step has finished on the device) and stamps them with ``time.perf_counter()``.
A request's submit time is when its batch starts (static batching: a batch is
submitted as a whole). Output tokens are counted up to and including the first
EOS; padding and anything after EOS are never counted.
"""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from joulebench.config.device import DeviceSpec
from joulebench.errors import BackendError
from joulebench.backends.base import Backend, EngineParams, LoadInfo, Request, RequestResult


class TransformersParams(EngineParams):
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    batch_size: int = Field(1, ge=1, le=4096)
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] = "sdpa"
    quantization: Literal["none", "bnb-8bit", "bnb-4bit"] = "none"
    cache_implementation: Literal["dynamic", "static"] = "dynamic"
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int = 0


class _StepClock:
    """A generate() streamer that stamps each decoding step."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[list[int]] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:   # the first call carries the prompt ids
            self._prompt_seen = True
            return
        ids = value.detach().reshape(-1).tolist()   # host copy: the step is done on the device
        self.times.append(time.perf_counter())
        self.tokens.append(ids)

    def end(self):
        pass


class TransformersBackend(Backend):
    name = "transformers"
    Params = TransformersParams
    load_keys = frozenset({"dtype", "attn_implementation", "quantization"})
    runtime_keys = frozenset({"batch_size", "cache_implementation", "temperature", "top_p", "top_k", "seed"})

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[str]:
        problems = []
        on_cpu = DeviceSpec.of(params).is_cpu
        if params.get("quantization", "none") != "none" and on_cpu:
            problems.append("bitsandbytes quantization needs a CUDA device (device: cpu given)")
        if params.get("attn_implementation", "").startswith("flash_attention") and on_cpu:
            problems.append(f"{params['attn_implementation']} needs a CUDA device")
        if params.get("attn_implementation", "").startswith("flash_attention") and params.get("dtype") == "float32":
            problems.append("flash attention needs float16 or bfloat16")
        if params.get("dtype") == "float16" and on_cpu:
            problems.append("float16 generation is not supported well on CPU; use bfloat16 or float32")
        return problems

    @classmethod
    def preload(cls) -> None:
        import torch  # noqa: F401 - importing creates no CUDA context
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401 - the lazy modules load here

    # --- load -------------------------------------------------------------------------
    def _device_spec(self) -> DeviceSpec:
        import torch

        spec = DeviceSpec.parse(self.options.get("device")).resolved(cuda_available=torch.cuda.is_available())
        if not spec.is_cpu and not torch.cuda.is_available():
            raise BackendError(f"device '{spec}' was asked for, but torch sees no CUDA device")
        return spec

    def load(self, model) -> LoadInfo:
        import torch

        p: TransformersParams = self.params
        t0 = time.perf_counter()
        spec = self._device_spec()
        dev = self.device_str = str(spec)
        ordinals = self._ordinals = list(spec.ordinals)
        dtype = getattr(torch, p.dtype)
        torch.manual_seed(p.seed)
        info_notes: dict[str, Any] = {"device": dev}
        if model.kind == "synthetic":
            self._load_synthetic(model, dtype, dev, ordinals)
        else:
            self._load_pretrained(model, dtype, dev, ordinals)
        self.synchronize()
        weights = sum(t.numel() * t.element_size() for t in self.model.parameters())
        nparams = sum(t.numel() for t in self.model.parameters())
        cfg = self.model.config.to_dict()
        keep = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
        return LoadInfo(load_s=time.perf_counter() - t0, weights_bytes=weights, parameters=nparams,
                        synthetic_weights=model.synthetic,
                        model_config={k: cfg.get(k) for k in keep}, notes=info_notes)

    def _load_synthetic(self, model, dtype, dev: str, ordinals: list[int]) -> None:
        from joulebench.models.synthetic import build_model
        from joulebench.models.tokenizer import builtin_tokenizer

        p: TransformersParams = self.params
        if len(ordinals) > 1:
            self.model = self._synthetic_multi_gpu(model.arch, dtype, ordinals)
        else:
            self.model = build_model(model.arch, dtype=dtype, device=dev if dev != "cpu" else "cpu",
                                     seed=self.options.get("weights_seed", 0),
                                     attn_implementation=p.attn_implementation)
        self.tokenizer = builtin_tokenizer(self.model.config.vocab_size)

    def _pretrained_kwargs(self, model, dtype, dev: str, ordinals: list[int]) -> tuple[str, dict[str, Any]]:
        """The path and ``from_pretrained`` arguments of a Hugging Face (or GGUF) model."""
        import torch

        p: TransformersParams = self.params
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": p.attn_implementation,
                                  "trust_remote_code": bool(self.options.get("trust_remote_code", False))}
        path = model.path or model.spec
        if model.kind == "gguf":
            from pathlib import Path

            gp = Path(model.path).expanduser().resolve()
            path, kwargs["gguf_file"] = str(gp.parent), gp.name
        if p.quantization != "none":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=p.quantization == "bnb-8bit",
                                                               load_in_4bit=p.quantization == "bnb-4bit")
        if len(ordinals) > 1:
            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = {i: torch.cuda.mem_get_info(i)[0] for i in ordinals}
        elif dev != "cpu":
            kwargs["device_map"] = dev
        return path, kwargs

    def _load_pretrained(self, model, dtype, dev: str, ordinals: list[int]) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from joulebench.models.tokenizer import hf_tokenizer

        path, kwargs = self._pretrained_kwargs(model, dtype, dev, ordinals)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"],
                                                **({"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}))
        except OSError as e:
            raise BackendError(f"cannot load model '{model.spec}': {e}") from None
        if dev == "cpu" and "device_map" not in kwargs:
            self.model.to("cpu")
        self.model.eval()
        self.tokenizer = hf_tokenizer(tok, model.spec)

    def _synthetic_multi_gpu(self, arch, dtype, ordinals):
        """Random weights split over several GPUs by layer (accelerate's device map)."""
        import torch
        from accelerate import dispatch_model, infer_auto_device_map

        from joulebench.models.synthetic import build_model

        model = build_model(arch, dtype=dtype, device="cpu", seed=self.options.get("weights_seed", 0),
                            attn_implementation=self.params.attn_implementation)
        from accelerate.utils import get_balanced_memory

        no_split = getattr(model, "_no_split_modules", None)
        # Balanced like device_map="balanced": a budget of half the weights per GPU is too tight (accelerate keeps
        # room for the largest layer), and the last layers would be sent to CPU/disk.
        max_memory = {i: int(torch.cuda.mem_get_info(i)[0] * 0.9) for i in ordinals}
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
        dmap = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
        off = sorted({str(v) for v in dmap.values() if v in ("cpu", "disk")})
        if off:
            raise BackendError(f"the model does not fit on GPUs {ordinals}: accelerate would offload to {off}")
        return dispatch_model(model, device_map=dmap)

    # --- generate ---------------------------------------------------------------------
    def generate(self, requests: list[Request], runtime: dict[str, Any]) -> list[RequestResult]:
        import torch

        p: TransformersParams = self.params
        bs = int(runtime.get("batch_size", p.batch_size))
        max_new = int(runtime["max_output_tokens"])
        forced = bool(runtime.get("force_output_tokens", True))
        temperature = float(runtime.get("temperature", p.temperature))
        tok = self.tokenizer
        first_device = self._input_device()
        results: list[RequestResult] = []
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new, "pad_token_id": tok.pad_id, "eos_token_id": tok.eos_id,
            "do_sample": temperature > 0, "return_dict_in_generate": False,
            "cache_implementation": runtime.get("cache_implementation", p.cache_implementation),
        }
        if forced:
            gen_kwargs["min_new_tokens"] = max_new
        if temperature > 0:
            gen_kwargs.update(temperature=temperature, top_p=float(runtime.get("top_p", p.top_p)))
            if runtime.get("top_k", p.top_k):
                gen_kwargs["top_k"] = int(runtime.get("top_k", p.top_k))
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        for start in range(0, len(requests), bs):
            batch = requests[start:start + bs]
            ids = [list(r.prompt_token_ids) if r.prompt_token_ids is not None else tok.encode(r.prompt)
                   for r in batch]
            ids = [x if x else [tok.bos_id if tok.bos_id is not None else tok.pad_id] for x in ids]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), tok.pad_id, dtype=torch.long)
            attn = torch.zeros((len(ids), width), dtype=torch.long)
            for i, x in enumerate(ids):   # left padding
                input_ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
                attn[i, width - len(x):] = 1
            input_ids, attn = input_ids.to(first_device), attn.to(first_device)
            clock = _StepClock()
            submit = time.perf_counter()
            with torch.inference_mode():
                self.model.generate(input_ids=input_ids, attention_mask=attn, streamer=clock, **gen_kwargs)
            steps = len(clock.tokens)
            for i, r in enumerate(batch):
                n = 0
                for s in range(steps):
                    n += 1
                    if clock.tokens[s][i] == tok.eos_id and not forced:
                        break
                results.append(RequestResult(index=r.index, input_tokens=len(ids[i]), output_tokens=n,
                                             submit_s=submit, token_times_s=clock.times[:n],
                                             finish_reason="length" if n == max_new else "stop"))
        return results

    def warmup_requests(self, requests, runtime):
        """One batch: every batch of a pass runs the same shapes, so one warms them all."""
        bs = int(runtime.get("batch_size", self.params.batch_size))
        return requests[:bs]

    def _input_device(self):
        try:
            return self.model.get_input_embeddings().weight.device
        except Exception:  # noqa: BLE001
            return next(self.model.parameters()).device

    def synchronize(self) -> None:
        import torch

        for i in getattr(self, "_ordinals", []):
            torch.cuda.synchronize(i)

    def cuda_device_indices(self) -> list[int]:
        return list(getattr(self, "_ordinals", []))

    def reset_peak_memory(self) -> None:
        import torch

        for i in self.cuda_device_indices():
            torch.cuda.reset_peak_memory_stats(i)

    def peak_memory_bytes(self) -> int | None:
        import torch

        if self.cuda_device_indices():
            return int(sum(torch.cuda.max_memory_allocated(i) for i in self.cuda_device_indices()))
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def close(self) -> None:
        self.model = None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
