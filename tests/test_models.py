"""Synthetic models: built-in shapes, parameter counts, fast init, the built-in tokenizer."""
from __future__ import annotations

import pytest

from joulebench.errors import StudyError
from joulebench.models import architectures, parse_model
from joulebench.models.synthetic import build_config, build_model, materialize_synthetic, parameter_count
from joulebench.models.tokenizer import builtin_tokenizer

# Published parameter counts of the real models these shapes copy.
KNOWN = {"smollm2-135m": 134_515_008, "llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248,
         "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "mistral-7b": 7_248_023_552}


@pytest.mark.parametrize("arch", sorted(KNOWN))
def test_builtin_shapes_match_published_parameter_counts(arch):
    assert arch in architectures()
    assert parameter_count(arch)["total"] == KNOWN[arch]


@pytest.mark.parametrize("arch", sorted(KNOWN))
def test_meta_build_matches_analytic_count_without_allocating(arch):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(build_config(arch))
    assert sum(p.numel() for p in m.parameters()) == KNOWN[arch]


def test_random_model_generates_and_rotary_buffers_are_real():
    import torch

    m = build_model("tiny-llama", dtype=torch.float32, device="cpu", seed=1)
    rot = [b for n, b in m.named_buffers() if n.endswith("inv_freq")]
    assert rot and all(torch.isfinite(b).all() and (b > 0).all() for b in rot)
    out = m.generate(torch.tensor([[0, 5, 6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                     pad_token_id=2)
    assert out.shape == (1, 7)
    m2 = build_model("tiny-llama", dtype=torch.float32, device="cpu", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))  # seeded


def test_builtin_tokenizer_round_trips_and_covers_the_vocabulary():
    tok = builtin_tokenizer(49152)
    text = "Hello, wörld! 集大成"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text.encode("utf-8"))
    assert tok.decode([40000]).strip()  # filler ids decode to text


def test_materialized_model_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = materialize_synthetic("tiny-llama", dtype="float32", root=tmp_path)
    assert materialize_synthetic("tiny-llama", dtype="float32", root=tmp_path) == d  # cached
    m = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok("abc")["input_ids"][-3:] == builtin_tokenizer(512).encode("abc")
    assert m.config.vocab_size == 512


@pytest.mark.parametrize("spec, kind", [("synthetic:tiny-llama", "synthetic"), ("org/model-1.5B", "hub"),
                                        ("./dir", "local"), ("x.gguf", "gguf")])
def test_parse_model(spec, kind):
    assert parse_model(spec).kind == kind


def test_parse_model_rejects_nonsense():
    with pytest.raises(StudyError):
        parse_model("not a model spec")


def test_config_only_synthetic_model_for_dummy_weight_engines(tmp_path):
    """load_format: dummy engines get config.json and the tokenizer, no weight files (8B: no 16 GB write)."""
    from transformers import AutoConfig, AutoTokenizer

    from joulebench.models.synthetic import architectures, materialize_synthetic

    path = materialize_synthetic("llama-3.1-8b", dtype="bfloat16", root=tmp_path, weights=False)
    assert not list(path.glob("*.safetensors"))
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.hidden_size == architectures()["llama-3.1-8b"]["hidden_size"]
    assert cfg.num_hidden_layers == architectures()["llama-3.1-8b"]["num_hidden_layers"]
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok("hello world")["input_ids"]) > 0
    # cached: a second call returns the same folder without rewriting it
    stamp = (path / "config.json").stat().st_mtime_ns
    assert materialize_synthetic("llama-3.1-8b", dtype="bfloat16", root=tmp_path, weights=False) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp
