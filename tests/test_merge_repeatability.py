"""benchmarks/merge_repeatability.py joins GPU runs made in separate commands into one summary."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_repeatability.py"


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _merge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def _adaptive(gpu: str, ci: float, runs: int) -> dict:
    return {"gpu": gpu, "settings": {"adaptive_max": 25},
            "environment": {"gpus": [{"uuid": "GPU-abc"}]},
            "configs": {"m bs16 eager": {"runs": runs, "ci_halfwidth_rel": ci, "cv_energy_per_output_token": 0.04}}}


def test_merged_summary_keeps_its_parts_and_gains_adaptive_and_a_new_overhead(tmp_path):
    main = _write(tmp_path / "merged.json", {
        "gpu": "H200", "configs": {}, "overhead_paired": {"ratio_mean": 0.99}, "overhead_ratio": 0.99,
        "parts": {"main": "a-main.json", "overhead": "a-overhead.json"}})
    ov = _write(tmp_path / "ov.json", {"gpu": "H200", "overhead_paired": {"ratio_mean": 1.002}})
    ad1 = _write(tmp_path / "ad16.json", _adaptive("H200", 0.0195, 19))
    ad2 = _write(tmp_path / "ad64.json", {**_adaptive("H200", 0.024, 25),
                                          "configs": {"m bs64 eager": {"runs": 25, "ci_halfwidth_rel": 0.024}}})
    out = tmp_path / "out.json"
    r = _merge(main, "--overhead", ov, "--adaptive", ad1, ad2, "--out", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["parts"]["main"] == "a-main.json"
    assert m["parts"]["overhead"] == "ov.json" and m["parts"]["overhead_earlier"] == "a-overhead.json"
    assert m["overhead_ratio"] == 1.002 and m["overhead_paired_earlier"] == {"ratio_mean": 0.99}
    assert "overhead_paired_main" not in m
    assert m["adaptive"]["m bs16 eager"]["reached_target"] is True
    assert m["adaptive"]["m bs16 eager"]["runs"] == 19 and m["adaptive"]["m bs16 eager"]["gpu_uuid"] == "GPU-abc"
    assert m["adaptive"]["m bs64 eager"]["reached_target"] is False
    assert m["parts"]["adaptive"] == ["ad16.json", "ad64.json"]


def test_first_merge_keeps_the_main_runs_own_overhead_apart(tmp_path):
    main = _write(tmp_path / "main.json", {"gpu": "H200", "configs": {}, "overhead_paired": {"ratio_mean": 1.04}})
    ov = _write(tmp_path / "ov.json", {"gpu": "H200", "overhead_paired": {"ratio_mean": 0.991}})
    out = tmp_path / "out.json"
    assert _merge(main, "--overhead", ov, "--out", out).returncode == 0
    m = json.loads(out.read_text())
    assert m["overhead_paired_main"] == {"ratio_mean": 1.04} and m["overhead_ratio"] == 0.991
    assert m["parts"] == {"main": "main.json", "overhead": "ov.json"}


def test_parts_from_another_gpu_are_refused(tmp_path):
    main = _write(tmp_path / "main.json", {"gpu": "H200", "configs": {}})
    ad = _write(tmp_path / "ad.json", _adaptive("H100", 0.01, 5))
    out = tmp_path / "out.json"
    r = _merge(main, "--adaptive", ad, "--out", out)
    assert r.returncode == 1 and "different GPUs" in r.stderr and not out.exists()
