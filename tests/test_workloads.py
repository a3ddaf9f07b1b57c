"""Workloads: jsonl files, the AI Energy Score prompt set, synthetic lengths, truncation."""
from __future__ import annotations

import json

import pytest

from joulebench.errors import StudyError
from joulebench.models.tokenizer import builtin_tokenizer
from joulebench.workloads import build_requests

from .conftest import AIENERGYSCORE

TOK = builtin_tokenizer(512)


def test_synthetic_prompts_have_exact_token_lengths_and_are_seeded():
    a = build_requests({"dataset": "synthetic", "prompts": 5, "input_tokens": 17, "seed": 3}, TOK)
    b = build_requests({"dataset": "synthetic", "prompts": 5, "input_tokens": 17, "seed": 3}, TOK)
    assert len(a) == 5 and all(len(r.prompt_token_ids) == 17 for r in a)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    c = build_requests({"dataset": "synthetic", "prompts": 5, "input_tokens": 17, "seed": 4}, TOK)
    assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in c]


def test_jsonl_prompts_other_fields_ignored_cycled_and_truncated(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": t, "id": i}) for i, t in enumerate(["hello", "a" * 50])) + "\n")
    reqs = build_requests({"dataset": str(p), "prompts": 5, "max_input_tokens": 10}, TOK)
    assert [r.prompt for r in reqs] == ["hello", "a" * 50, "hello", "a" * 50, "hello"]
    assert [len(r.prompt_token_ids) for r in reqs] == [5, 10, 5, 10, 5]


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n{"text_": 1}\n')
    with pytest.raises(StudyError) as ei:
        build_requests({"dataset": str(p), "prompts": 2}, TOK)
    assert "bad.jsonl:2" in str(ei.value)


@pytest.mark.skipif(not AIENERGYSCORE.exists(), reason="AI Energy Score prompts not present beside the repo")
def test_aienergyscore_from_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reqs = build_requests({"dataset": "aienergyscore", "dataset_path": str(AIENERGYSCORE), "prompts": 20}, TOK)
    assert len(reqs) == 20
    assert all(isinstance(r.prompt, str) and r.prompt for r in reqs)
    assert not reqs[0].prompt.startswith("{")  # the provenance line is skipped


def test_aienergyscore_offline_without_copy_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JOULEBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("JOULEBENCH_AIENERGYSCORE", raising=False)
    with pytest.raises(StudyError) as ei:
        build_requests({"dataset": "aienergyscore", "prompts": 2}, TOK)
    assert "dataset_path" in str(ei.value)
