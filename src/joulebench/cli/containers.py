"""CLI commands for containers: ``images build [ENGINE]``, ``images list``, ``doctor``.

``register(main)`` adds them to the main click group (cli.py calls it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _console():
    from rich.console import Console

    return Console(stderr=False)


def _engine_error(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("images")
def images_group() -> None:
    """Engine images: one per engine, built from docker/<engine>/Dockerfile, tagged by content hash."""


def _parse_build_args(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"'{v}' is not KEY=VALUE", param_hint="--build-arg")
        k, _, val = v.partition("=")
        out[k.strip()] = val
    return out


@images_group.command("build")
@click.argument("engines", nargs=-1)
@click.option("--base-image", help="BASE_IMAGE build argument (default: $JOULEBENCH_BASE_IMAGE or the Dockerfile's)")
@click.option("--cpu/--gpu", "cpu", default=None,
              help="torch CPU or CUDA build (default: CPU when the base image is a localhost/ one)")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="extra build argument")
@click.option("--wheels", "wheels_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="folder of wheels offered to pip in the build (e.g. a local torch CPU wheel)")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="extra CA certificates (PEM) for TLS-intercepting proxies during the build")
@click.option("--force", is_flag=True, help="rebuild even when the inputs are unchanged")
@click.option("--verbose", "-v", is_flag=True, help="print the whole build log")
def images_build(engines, base_image, cpu, build_args, wheels_dir, ca_bundle, force, verbose) -> None:
    """Build the images of ENGINES (default: every docker/<engine>/Dockerfile); unchanged ones are skipped."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from joulebench.runners.docker import images
    from joulebench.errors import JoulebenchError

    console = _console()
    try:
        known = images.available_engines()
    except JoulebenchError as exc:
        raise _engine_error(exc) from None
    for e in engines:
        if e not in known:
            from joulebench.errors import did_you_mean

            hint = did_you_mean(e, known)
            raise click.BadParameter(f"no docker/{e}/Dockerfile" + (f"; {hint}" if hint else "")
                                     + f" (engines: {', '.join(known)})", param_hint="ENGINE")
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[engine]}[/]"), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_line(engine: str, line: str) -> None:
            if engine not in tasks:
                tasks[engine] = progress.add_task("", engine=engine, total=None)
            progress.update(tasks[engine], description=line.strip()[:100])
            if verbose:
                progress.console.print(f"[dim]{engine}[/] {line}", markup=True, highlight=False)

        try:
            infos = images.build_images(list(engines) or None, base_image=base_image, progress=on_line, cpu=cpu,
                                        build_args=_parse_build_args(build_args), wheels_dir=wheels_dir,
                                        ca_bundle=ca_bundle, force=force)
        except JoulebenchError as exc:
            raise _engine_error(exc) from None
    for i in infos:
        took = f" in {i.build_s:.0f} s" if i.build_s is not None else ""
        console.print(f"{i.engine}: {i.ref} " + (f"[green]built[/]{took}" if i.built else "current, not rebuilt"))


@images_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def images_list(as_json: bool) -> None:
    """Each engine's image: the tag its current inputs hash to, and whether it exists or is stale."""
    from rich.table import Table

    from joulebench.runners.docker import images
    from joulebench.errors import JoulebenchError

    try:
        infos = images.image_status()
    except JoulebenchError as exc:
        raise _engine_error(exc) from None
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    t = Table(title="engine images")
    for col in ("engine", "image", "state", "id", "stale tags"):
        t.add_column(col)
    colors = {"current": "green", "stale": "yellow", "missing": "red"}
    for i in infos:
        t.add_row(i.engine, i.ref, f"[{colors[i.state]}]{i.state}[/]", (i.image_id or "-").replace("sha256:", "")[:12],
                  ", ".join(i.stale_tags) or "-")
    _console().print(t)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--image", help="image to run the in-container GPU probe with (default: the transformers image)")
@click.option("--gpu-passthrough", type=click.Choice(["auto", "device-request", "device-nodes", "cdi"]),
              default="auto", show_default=True,
              help="how the probe gets its GPUs (as runner_options.docker.gpu_passthrough; cdi: Podman only)")
@click.option("--python", "python", default="python", show_default=True, help="the interpreter in the image")
@click.option("--driver-dir", help="NVIDIA driver folder to bind for device-nodes (default: from ldconfig)")
@click.option("--cdi-spec-dir", "cdi_spec_dirs", multiple=True,
              help="cdi: a folder of CDI specs (repeatable; default: /etc/cdi and /var/run/cdi)")
def doctor_cmd(as_json: bool, image: str | None, gpu_passthrough: str, python: str, driver_dir: str | None,
               cdi_spec_dirs: tuple[str, ...]) -> None:
    """Pre-flight: container engine, images, GPUs inside a container, driver/CUDA, free GPUs."""
    from rich.table import Table

    from joulebench.cli import doctor

    checks = doctor.run_checks(probe_image=image, gpu_passthrough=gpu_passthrough, python=python,
                               driver_dir=driver_dir, cdi_spec_dirs=list(cdi_spec_dirs) or None)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        t = Table(title="joulebench doctor")
        for col in ("check", "status", "detail", "fix"):
            t.add_column(col, overflow="fold")
        colors = {"ok": "green", "warn": "yellow", "FAIL": "red"}
        for c in checks:
            t.add_row(c.name, f"[{colors[c.status]}]{c.status}[/]", c.detail, c.fix or "")
        _console().print(t)
    sys.exit(doctor.exit_code(checks))


def register(main: click.Group) -> None:
    main.add_command(images_group)
    main.add_command(doctor_cmd)
