"""The `joulebench` command line (thin: every command calls the Python API)."""
from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from joulebench import __version__
from joulebench.errors import EXIT_INTERRUPTED, EXIT_INVALID, JoulebenchError, StudyErrors
from joulebench.testing import install_from_environment
from joulebench.runners.registry import KIND_NAMES

console = Console()
err_console = Console(stderr=True)


def quickstart_path() -> Path:
    return Path(str(resources.files("joulebench").joinpath("studies/quickstart.yaml")))


def _fail(e: JoulebenchError) -> None:
    if isinstance(e, StudyErrors):
        err_console.print(f"[bold red]error:[/] {len(e.errors)} problem(s) in the study:", highlight=False)
        for sub in e.errors:
            err_console.print(f"  - {sub.render()}", highlight=False, markup=False, soft_wrap=True)
    else:
        err_console.print("[bold red]error:[/] ", end="", highlight=False)
        err_console.print(str(e), highlight=False, markup=False, soft_wrap=True)
    sys.exit(e.exit_code)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JoulebenchError as e:
            _fail(e)
        except KeyboardInterrupt as stop:
            from joulebench.study.orchestrator import Terminated

            err_console.print(str(stop) if isinstance(stop, Terminated) else "interrupted", highlight=False)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="joulebench")
def main() -> None:
    """Measure the energy, speed and cost of LLM inference across deployment configurations."""
    install_from_environment()


@main.command()
@click.argument("study", required=False, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="study directory (default ./joulebench-results/<study>-<UTC time>)")
@click.option("--dry-run", is_flag=True, help="validate and print the plan; run nothing")
@click.option("--runner", type=click.Choice(KIND_NAMES), help="override the study's runner")
@click.option("--quiet", "-q", is_flag=True, help="plain log lines instead of a progress display")
@click.option("--no-report", is_flag=True, help="skip building report.html at the end")
@click.option("--on-busy-lock", type=click.Choice(["wait", "skip", "fail"]),
              help="another joulebench holds these GPUs: wait (bounded), skip (exit 0) or fail (exit 75)")
@click.option("--lock-wait-s", type=click.FloatRange(min=0), help="longest wait for the GPU lock (default 3600)")
@click.option("--nightly", is_flag=True, help="cron mode: resume last night's unfinished study or start a dated "
              "one under --results-root, `latest` link, log file, retention, summary (docs/nightly.md)")
@click.option("--results-root", type=click.Path(file_okay=False), help="--nightly: folder of the study folders")
@click.option("--keep", type=click.IntRange(min=1), help="--nightly: keep the N newest finished study folders")
@click.option("--keep-days", type=click.FloatRange(min=0), help="--nightly: keep finished study folders younger "
              "than D days (with --keep: kept if either rule keeps it)")
@click.option("--notify-command", help="--nightly: command run at the end (no shell) with the summary JSON on stdin")
@click.option("--notify-webhook", help="--nightly: URL that gets the summary JSON by POST")
def run(study, out, dry_run, runner, quiet, no_report, on_busy_lock, lock_wait_s, nightly, results_root, keep,
        keep_days, notify_command, notify_webhook):
    """Run a study (with no file: the built-in quickstart study)."""
    from joulebench.study.locks import LockSkipped
    from joulebench.study.run import run_study

    path = Path(study) if study else quickstart_path()
    if dry_run:
        _print_plan(path)
        return
    nightly_only = {"--results-root": results_root, "--keep": keep, "--keep-days": keep_days,
                    "--notify-command": notify_command, "--notify-webhook": notify_webhook}
    if nightly:
        if not study or out:
            raise click.UsageError("--nightly needs a STUDY file and takes --results-root instead of --out")
        from joulebench.study.nightly import run_nightly

        summary = run_nightly(path, results_root=results_root, keep=keep, keep_days=keep_days,
                              on_busy_lock=on_busy_lock, lock_wait_s=lock_wait_s, notify_command=notify_command,
                              notify_webhook=notify_webhook, runner=runner, report=not no_report)
        sys.exit(summary.exit_code)
    given = [k for k, v in nightly_only.items() if v is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply with --nightly")
    try:
        result = run_study(path, out=out, runner=runner, quiet=quiet, report=not no_report,
                           on_busy_lock=on_busy_lock, lock_wait_s=lock_wait_s)
    except LockSkipped as e:
        err_console.print(str(e), highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    print_results(result.study_dir)
    console.print(f"study directory: {result.study_dir}")
    sys.exit(result.exit_code)


PLAN_ROWS = 100      # trials `plan` lists without --all


@main.command()
@click.argument("study", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print plan.json instead of a table")
@click.option("--all", "show_all", is_flag=True, help=f"list every trial (default: the first {PLAN_ROWS})")
@click.option("--results-root", type=click.Path(file_okay=False), default=None,
              help="where earlier runs of this study are (their measured trial times refine the estimate; "
                   "default: joulebench-results)")
def plan(study, as_json, show_all, results_root):
    """Print the expanded trials (ids, parameters, order) and counts; runs nothing."""
    _print_plan(Path(study), as_json=as_json, show_all=show_all, results_root=results_root)


def _estimate(loaded, p, results_root: str | None):
    """The plan's time estimate, refined by the trial times of earlier runs of the same study."""
    from joulebench.config.device import DeviceSpec
    from joulebench.study.checks import model_config_of
    from joulebench.study.estimate import earlier_runs, estimate_study, measured_trial_seconds
    from joulebench.results.store import DEFAULT_RESULTS_ROOT

    spec = DeviceSpec.parse(loaded.config.device)
    try:
        on_gpu = bool(spec.resolve().devices) if not spec.is_cpu else False
    except Exception:  # noqa: BLE001 - no NVML: the CPU
        on_gpu = False
    roots = [Path(results_root)] if results_root else [DEFAULT_RESULTS_ROOT]
    history = measured_trial_seconds(earlier_runs(p.study, roots))
    return estimate_study(p, on_gpu=on_gpu, model_config=model_config_of(loaded.config.model, loaded.base_dir),
                          history=history)


def _print_plan(path: Path, as_json: bool = False, show_all: bool = False, results_root: str | None = None) -> None:
    from joulebench.config import load_study
    from joulebench.study.plan import build_plan

    loaded = load_study(path)
    p = build_plan(loaded)
    doc = p.to_json()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    axes = list(p.axes)
    table = Table(title=f"study {p.study}: {len(p.configs)} configurations", show_lines=False)
    table.add_column("round", justify="right")
    table.add_column("pos", justify="right")
    table.add_column("trial id")
    table.add_column("load group")
    for a in axes or ["backend", "model"]:
        table.add_column(a)
    rows = [t for t in doc["trials"] if not t["conditional"]]
    cfgs = {c["config_id"]: c for c in doc["configs"]}
    hidden = 0 if show_all else max(0, len(rows) - PLAN_ROWS)
    for t in rows[: len(rows) - hidden]:
        c = cfgs[t["config_id"]]
        table.add_row(str(t["round"]), str(t["position"]), t["trial_id"], c["load_group"],
                      *[str(c["params"].get(a)) for a in (axes or ["backend", "model"])])
    console.print(table)
    if hidden:
        console.print(f"... and {hidden:,} more trials (`joulebench plan --all` lists them, --json prints plan.json)")
    counts = doc["counts"]
    rep = doc["repeats"]
    adaptive = rep["ci_target"] is not None and rep["max"] > rep["min"]
    on = f" on {rep['metric']}" if rep.get("metric") not in (None, "energy_per_output_token_j") else ""
    console.print(f"{counts['configs']} configurations in {counts['load_groups']} load group(s); "
                  f"{counts['trials_min']} trials" + (f" (up to {counts['trials_max']} with adaptive repeats "
                                                      f"to a {rep['ci_target']:.0%} CI target{on})"
                                                      if adaptive else ""))
    console.print(f"{p.worker_starts(rep['min'])} worker start(s) (model loads) over the first {rep['min']} "
                  "round(s)")
    from joulebench.study.inputs import input_policies

    for policy in input_policies(p.configs, loaded.base_dir):
        console.print(policy.describe())
    est = _estimate(loaded, p, results_root)
    console.print(est.describe())
    console.print("  assumes: " + "; ".join(est.assumptions))
    if p.skipped:
        console.print(f"[yellow]{len(p.skipped)} invalid combination(s) skipped:[/]")
        for s in p.skipped:
            console.print(f"  - {s['where']}: {'; '.join(s['reasons'])}", markup=False)


@main.command()
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--runner", type=click.Choice(KIND_NAMES))
@click.option("--quiet", "-q", is_flag=True)
@click.option("--retry-failed", is_flag=True, help="also run again the trials that failed")
@click.option("--no-report", is_flag=True)
def resume(study_dir, runner, quiet, retry_failed, no_report):
    """Continue an interrupted study: finished trials are kept, nothing runs twice."""
    from joulebench.study.run import resume_study

    result = resume_study(study_dir, runner=runner, quiet=quiet, retry_failed=retry_failed,
                          report=not no_report)
    print_results(result.study_dir)
    sys.exit(result.exit_code)


@main.command()
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True))
def report(study_dir):
    """Write report.html, results.parquet, results.csv and summary.csv."""
    from joulebench.report.build import build_report

    path = build_report(Path(study_dir))
    print_results(Path(study_dir))
    console.print(f"report: {path}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def env(as_json):
    """Devices, meters, container engine, images, installed backends, versions."""
    from joulebench.cli.envinfo import environment_report, print_environment

    rep = environment_report()
    if as_json:
        click.echo(json.dumps(rep, indent=2, default=str))
    else:
        print_environment(rep, console)


def print_results(study_dir: Path) -> None:
    """A compact per-configuration table straight from the trial records, with the same judgement of
    each configuration's repeats as the report (``analysis.summary.config_flags``)."""
    from joulebench.analysis.summary import (SummaryTargets, config_flags, summarize_configs_of,
                                             summarize_records)
    from joulebench.config.loader import load_recorded_study
    from joulebench.report.build import study_targets
    from joulebench.results.store import StudyStore

    store = StudyStore(study_dir)
    try:
        plan_doc = store.read_plan()
    except (OSError, ValueError):
        return
    axes = list(plan_doc.get("axes") or {}) or ["backend", "model"]
    config = load_recorded_study(study_dir)
    cv_target, ci_target = study_targets(config)
    targets = SummaryTargets(cv_target=cv_target, ci_target=ci_target,
                             ci_metric=config.repeats.metric if config is not None else None)
    summaries = {s.repeats.config_id: s for s in
                 summarize_configs_of(summarize_records(store.iter_records()), targets, n_resamples=999)}
    table = Table(title="results (mean [95 % CI])")
    for a in axes:
        table.add_column(a)
    # served mode's figures only where some configuration has them (the one summary decides)
    served = [(m, head) for m, head in (("goodput_req_per_j", "goodput/W"), ("request_energy_j_median", "J/req p50"),
                                        ("request_energy_j_p90", "J/req p90"))
              if any(v is not None and v == v for s in summaries.values() for v in s.repeats.ok_values(m))]
    for col in ("ok/n", "tokens/s", "J/output token", "TTFT median s", *(h for _, h in served), "flags"):
        table.add_column(col, justify="right")

    def fmt(s, metric):
        m, lo, hi = s.mean_ci(metric)
        if m != m:  # nan
            return "n/a"
        return f"{m:.4g}" + (f" [{lo:.3g}, {hi:.3g}]" if lo == lo else "")

    notes = []
    for c in plan_doc["configs"]:
        summary = summaries.get(c["config_id"])
        if summary is None:
            continue
        s = summary.repeats
        judged = config_flags(summary.row([]))
        flags = sorted(s.flags - {"synthetic_weights", "SYNTHETIC_WEIGHTS"}) + [f.code for f in judged]
        label = [str(c["params"].get(a)) for a in axes]
        table.add_row(*label, f"{s.n_ok}/{s.n_trials}", fmt(s, "throughput_tok_s"),
                      fmt(s, "energy_per_output_token_j"), fmt(s, "ttft_s_median"),
                      *(fmt(s, m) for m, _ in served), ", ".join(flags) or "-")
        notes += [f"{', '.join(label)}: {f.code}: {f.detail}" for f in judged if f.code == "too_few_repeats"]
    console.print(table)
    for n in notes:
        console.print(n)
    if notes:
        console.print("flags are explained in report.html (the same judgement as this table)")


def _register_optional() -> None:
    try:
        from joulebench.cli.containers import register

        register(main)
    except ImportError:
        pass


_register_optional()


if __name__ == "__main__":
    main()
