"""build_report: files, a self-contained HTML, headless Chromium rendering, and a real CPU sweep end to end."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from joulebench.report.build import build_report
from joulebench.results.schema import TrialRecord
from joulebench.results.store import atomic_write_json

sys.path.insert(0, str(Path(__file__).parent))
from test_table import make_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMG_RE = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def energy_report(tmp_path_factory) -> Path:
    study = make_study(tmp_path_factory.mktemp("energy"))
    return build_report(study, max_trial_timeline_files=3)


@pytest.fixture(scope="module")
def null_report(tmp_path_factory) -> Path:
    study = make_study(tmp_path_factory.mktemp("null"), energy=False, timeline=False)
    return build_report(study)


def test_report_writes_tables_plots_and_html(energy_report):
    study = energy_report.parent
    for name in ("results.parquet", "results.csv", "summary.csv", "effects.csv", "main_effects.csv", "report.html"):
        assert (study / name).stat().st_size > 0, name
    for stem in ("energy_per_output_token_j_per_config", "throughput_tok_s_per_config", "main_effects", "pareto",
                 "timelines"):
        assert (study / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert (study / "plots" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem
    per_trial = sorted((study / "plots" / "timelines").glob("*.png"))
    assert len(per_trial) == 3 and all(p.with_suffix(".pdf").exists() for p in per_trial)
    res = pd.read_parquet(study / "results.parquet")
    assert len(res) == 18 and res["outlier_energy_per_output_token_j"].sum() == 1
    summary = pd.read_csv(study / "summary.csv")
    assert len(summary) == 6 and summary["cv_above_target"].any()


def test_report_html_content(energy_report):
    html = energy_report.read_text()
    imgs = IMG_RE.findall(html)
    assert len(imgs) == 5
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)\s*=\s*["\'](?!data:|#)', html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    headline = re.search(r'id="headline-text">([^<]*)<', html).group(1)
    assert headline.startswith("batch size explains ") and "going from 1 to 16 cuts J/output-token by" in headline
    assert "Type II ANOVA" in html and "batch_size x dtype" in html
    # per-trial flags with advice, the config-level CV mark, failed trial error, the outlier listed
    assert "Raise measurement.min_window_s to at least 10 s." in html
    block = html.split('id="flag-short_window"')[1].split("</details>")[0]
    assert "6 trial(s)" in block and block.count("window 2.0 s &lt; 10 s") == 6
    assert "<code>high_cv</code>" in html and "CV&gt;" in html
    assert "out of memory (fixture)" in html
    outliers = html.split('id="outliers"')[1].split('id="flags"')[0]
    assert "batch_size=1, dtype=bfloat16" in outliers and "energy_per_output_token_j" in outliers
    for section in ("Pareto fronts", "Environment", "Methodology notes", "nvml-counter", "energy_above_loaded_idle_j",
                    "NVIDIA H100 80GB HBM3", "2.13.0"):
        assert section in html, section
    assert "No energy meter" not in html


def test_report_without_energy_says_so_and_ranks_throughput(null_report):
    html = null_report.read_text()
    assert "No energy meter on this machine." in html
    assert "throughput stands in for energy" in html
    assert "Best configuration by throughput: <b>batch_size=16, dtype=bfloat16</b>" in html
    assert "No device timeline was recorded" in html
    assert "energy_unavailable" in html
    plots = null_report.parent / "plots"
    assert (plots / "throughput_tok_s_per_config.png").exists()
    assert not (plots / "energy_per_output_token_j_per_config.png").exists()
    assert len(IMG_RE.findall(html)) == 3          # per config, main effects, Pareto (tokens/s vs latency)


def test_report_escapes_user_text_and_stays_inside_the_study(tmp_path):
    study = make_study(tmp_path, repeats=2, failed=False, timeline=True)
    recs = sorted((study / "trials").glob("*.json"))
    rec = json.loads(recs[0].read_text())
    rec["status"], rec["error"] = "failed", "<script>alert('x')</script> & boom"
    atomic_write_json(recs[0], rec)
    # a record whose id and timeline path point outside the study directory
    rec = json.loads(recs[1].read_text())
    shutil.copy(study / rec["timeseries"], tmp_path / "outside.parquet")
    rec["trial_id"], rec["timeseries"] = "../../evil", "../outside.parquet"
    atomic_write_json(recs[1], rec)
    html = build_report(study, max_trial_timeline_files=50).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; boom" in html
    assert not list(tmp_path.glob("evil*")) and not list(study.glob("evil*"))
    assert len(list((study / "plots" / "timelines").glob("*.png"))) == 10   # 12 trials, 1 failed, 1 refused


def test_report_on_empty_all_failed_and_planless_studies(tmp_path):
    empty = tmp_path / "empty"
    (empty / "trials").mkdir(parents=True)
    html = build_report(empty).read_text()
    assert "No trial records in this study directory yet." in html
    assert pd.read_csv(empty / "results.csv").empty

    failed = tmp_path / "failed"
    rec = TrialRecord(trial_id="t1", config_id="c1", study="s", params={"batch_size": 1}, repeat=0,
                      status="failed", error="worker crashed", error_kind="crash")
    atomic_write_json(failed / "trials" / "t1.json", rec.model_dump())
    html = build_report(failed).read_text()
    assert "worker crashed" in html and "nothing to compare" in html

    planless = make_study(tmp_path / "planless", repeats=2, timeline=False)
    (planless / "plan.json").unlink()
    (planless / "study.yaml").unlink()
    html = build_report(planless).read_text()
    assert "batch size explains" in html      # axes inferred from the params that vary


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs it: apt-get install chromium)")
@pytest.mark.parametrize("which", ["energy", "null"])
def test_report_renders_in_headless_chromium(which, energy_report, null_report, tmp_path):
    from PIL import Image

    report = energy_report if which == "energy" else null_report
    n_imgs = len(IMG_RE.findall(report.read_text()))
    # A probe copy (the report itself has no script): after load, record how many images decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{const i=[...document.images];"
                   "document.body.dataset.imgs=i.length;document.body.dataset.decoded="
                   "i.filter(x=>x.complete&&x.naturalWidth>100).length;"
                   "document.body.dataset.width=document.documentElement.scrollWidth;});</script></body>"))
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<body data-imgs="(\d+)" data-decoded="(\d+)" data-width="(\d+)"', dom.stdout)
    assert m, dom.stdout[:2000]
    assert int(m.group(1)) == n_imgs and int(m.group(2)) == n_imgs      # every plot decoded
    assert int(m.group(3)) <= 1280                                       # no horizontal page scroll on a laptop
    assert "Which choices matter most" in dom.stdout

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{which}.png"
    shot.unlink(missing_ok=True)
    r = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()], tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1280)
    # the headline box (#e8f1fa) and plot ink (#1f6fb4 lines, #9ecae1 bars) are on screen
    def count(rgb, tol=6):
        return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())
    assert count((0xE8, 0xF1, 0xFA)) > 20_000
    assert count((0x1F, 0x6F, 0xB4)) > 500
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200


E2E_STUDY = """\
name: report-e2e
model: synthetic:tiny-llama
backend: transformers
device: cpu
engine:
  dtype: float32
workload:
  dataset: synthetic
  prompts: 4
  input_tokens: 16
  max_output_tokens: 8
sweep:
  batch_size: [1, 4]
  max_output_tokens: [4, 8]
repeats: 2
measurement:
  min_window_s: 0.5
  device_idle_s: 0
  loaded_idle_s: 0
  warmup: {cv_target: 0.5, k: 2, min_passes: 1, max_passes: 2}
runner: process
"""


@pytest.mark.slow
def test_end_to_end_real_cpu_sweep_then_report(tmp_path):
    """A real sweep (tiny synthetic Llama, real transformers, spawned worker) and both report entry points."""
    (tmp_path / "study.yaml").write_text(E2E_STUDY)
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "joulebench.cli"]
    run = subprocess.run([*cli, "run", str(tmp_path / "study.yaml"), "--out", str(out), "-q", "--no-report"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (out / "report.html").exists()

    import joulebench

    trials = joulebench.load_results(out)
    assert len(trials) == 8 and (trials["status"] == "ok").all()
    assert set(trials["param.batch_size"]) == {1, 4} and set(trials["param.max_output_tokens"]) == {4, 8}
    assert (trials["throughput_tok_s"] > 0).all() and trials["ttft_s_median"].notna().all()

    path = build_report(out)
    html = path.read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary["throughput_tok_s_n"] == 2).all()
    headline = re.search(r'id="headline-text">([^<]*)<', html).group(1)
    on_cpu_without_meter = trials["energy_per_output_token_j"].isna().all()
    if on_cpu_without_meter:
        assert "No energy meter on this machine." in html and "tokens/s" in headline
    assert re.search(r"(batch size|max output tokens) explains \d+ % of the variance", headline), headline
    assert len(IMG_RE.findall(html)) >= 3

    # the CLI entry point rebuilds the same files
    (out / "report.html").unlink()
    rep = subprocess.run([*cli, "report", str(out)], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    assert (out / "report.html").exists() and (out / "results.parquet").exists()
    if CHROMIUM:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report-e2e-cpu.png"
        r = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", (out / "report.html").as_uri()], tmp_path)
        assert r.returncode == 0 and shot.exists()


def test_study_targets_follow_the_repeats_grammar():
    from joulebench.config.study import StudyConfig
    from joulebench.report.build import study_targets

    def study(**kw) -> StudyConfig:
        return StudyConfig.model_validate({"name": "s", "model": "synthetic:smollm2-135m", **kw})

    assert study_targets(study(repeats=3)) == (0.05, None)
    assert study_targets(study(repeats={"min": 3, "max": 10})) == (0.05, 0.02)
    assert study_targets(study(repeats={"min": 3, "max": 10, "ci_target": 0.05})) == (0.05, 0.05)
    assert study_targets(study(repeats={"min": 3, "max": 3, "ci_target": None})) == (0.05, None)
    assert study_targets(study()) == (0.05, 0.02)
    assert study_targets(None) == (0.05, 0.02)          # no readable study.yaml: the config defaults


def test_recorded_study_is_read_typed_and_tolerantly(tmp_path):
    """The report reads study.yaml through the config loader: keys this version rejects (``repeats.cv_target``,
    an unknown top-level key) are left out and the rest of the study kept."""
    from joulebench.config.loader import load_recorded_study

    assert load_recorded_study(tmp_path) is None                        # no study.yaml
    (tmp_path / "study.yaml").write_text("- not\n- a mapping\n")
    assert load_recorded_study(tmp_path) is None
    (tmp_path / "study.yaml").write_text("model: synthetic:smollm2-135m\n")   # no name: not a study
    assert load_recorded_study(tmp_path) is None
    (tmp_path / "study.yaml").write_text(
        "name: old\nmodel: synthetic:smollm2-135m\nfuture_key: 1\n"
        "repeats: {min: 2, max: 6, ci_target: 0.04, cv_target: 0.5}\nmeasurement: {min_window_s: 2.5}\n")
    cfg = load_recorded_study(tmp_path)
    assert cfg.name == "old" and (cfg.repeats.min, cfg.repeats.max, cfg.repeats.ci_target) == (2, 6, 0.04)
    assert cfg.measurement.min_window_s == 2.5


def test_report_uses_the_recorded_targets_and_window(tmp_path):
    study = make_study(tmp_path, repeats=2, failed=False, timeline=False)
    (study / "study.yaml").write_text(yaml.safe_dump({
        "name": "fixture", "model": "synthetic:smollm2-135m", "repeats": {"min": 2, "max": 5, "ci_target": 0.07,
                                                                        "cv_target": 0.9},
        "measurement": {"min_window_s": 2.5}}))
    html = build_report(study).read_text()
    assert "exceeds the target (5.0 %); <span class='bad'>CI&gt;</span> one whose CI half-width exceeds 7.0 %" in html
    assert "(2.5 s in this study" in html
    summary = pd.read_csv(study / "summary.csv")
    assert (summary["cv_target"] == 0.05).all() and (summary["ci_target"] == 0.07).all()
    (study / "study.yaml").write_text(yaml.safe_dump({"name": "fixture", "model": "synthetic:smollm2-135m",
                                                      "repeats": 2}))
    html = build_report(study).read_text()
    assert "The study has a fixed repeat count, so no CI target is checked." in html
    assert "(10 s in this study" in html


def test_devices_table_shares_a_served_window_by_its_whole_energy():
    """Device rows hold each GPU's energy over the whole window; a served record's energy_j is its steady state,
    a part of it: the share of the total is over the whole window (it read 240 % before)."""
    import pandas as pd

    from joulebench.report.details import devices_table

    rec = {"trial_id": "c-r0", "config_id": "c", "status": "ok", "energy_j": 250.0,
           "whole_window": {"energy_j": 600.0, "duration_s": 2.0},
           "devices": [{"index": 0, "name": "H100", "uuid": "GPU-a", "energy_j": 450.0},
                       {"index": 1, "name": "H100", "uuid": "GPU-b", "energy_j": 150.0}]}
    html = devices_table([rec], pd.DataFrame([{"trial_id": "c-r0", "config_id": "c"}]), [])
    assert "75.0 %" in html and "25.0 %" in html and "240" not in html
    offline = {**rec, "whole_window": None, "energy_j": 600.0}
    html = devices_table([offline], pd.DataFrame([{"trial_id": "c-r0", "config_id": "c"}]), [])
    assert "75.0 %" in html and "25.0 %" in html
