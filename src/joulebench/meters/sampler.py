"""The 10 Hz device timeline, polled in a SEPARATE PROCESS.

Not a thread in the inference process: the GIL slows CPU-bound generation
loops (METHODOLOGY.md section 3, phase 7). The child is started with the
``spawn`` context (no inherited CUDA state), as a daemon; it finds its
devices by UUID, sends "ready", polls ``Device.sample()`` on a fixed
schedule, and returns every row when told to stop. It exits on its own when
the parent dies (pipe EOF or a changed parent PID), so it is never left
running after a crash.

    with Sampler([gpu.info.uuid for gpu in gpus], hz=10) as s:
        work()
    df = s.stop()              # columns: t_s (unix), device_uuid, device_index, kind, + SAMPLE_KEYS
    write_timeseries(df, study_dir / "timeseries" / f"{trial_id}.parquet")
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..devices.base import SAMPLE_KEYS
from ..errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

COLUMNS = ("t_s", "device_uuid", "device_index", "kind") + SAMPLE_KEYS


def _sampler_main(conn, device_uuids: list[str], hz: float, cpu: bool, rapl_root: str | None,
                  parent_pid: int) -> None:
    """Child process body. Only stdlib and joulebench.devices are imported here."""
    try:
        from ..devices import cpu_devices, gpus_by_uuid

        devices = list(gpus_by_uuid(device_uuids))
        if cpu:
            devices += cpu_devices(rapl_root) if rapl_root else cpu_devices()
    except Exception as e:  # report, never hang the parent
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        finally:
            conn.close()
        return
    conn.send(("ready", [d.info.uuid for d in devices]))
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    period = 1.0 / hz
    next_t = time.monotonic()
    try:
        while True:
            for d in devices:
                try:
                    row = d.sample()
                except Exception:
                    row = dict.fromkeys(SAMPLE_KEYS)
                cols["t_s"].append(time.time())
                cols["device_uuid"].append(d.info.uuid)
                cols["device_index"].append(d.info.index)
                cols["kind"].append(d.info.kind)
                for k in SAMPLE_KEYS:
                    cols[k].append(row.get(k))
            next_t += period
            now = time.monotonic()
            if next_t < now - period:           # fell behind (overloaded host): skip, leaving a gap
                next_t = now
            # wait for the next tick, or a message from the parent
            if conn.poll(max(0.0, next_t - time.monotonic())):
                msg = conn.recv()
                if msg == "stop":
                    conn.send(("rows", cols))
                    return
            if os.getppid() != parent_pid:
                return                          # parent died: never outlive it
    except (EOFError, BrokenPipeError, OSError):
        return                                  # parent closed the pipe or died
    finally:
        try:
            conn.close()
        except OSError:
            pass


class Sampler:
    """A separate process polling devices at ``hz``. ``stop()`` returns the timeline (idempotent)."""

    def __init__(self, device_uuids: list[str], *, hz: float = 10.0, cpu: bool = True,
                 rapl_root: str | Path | None = None, start_timeout_s: float = 60.0):
        if hz <= 0:
            raise ValueError("sampler hz must be positive")
        self.device_uuids = list(device_uuids)
        self.hz = float(hz)
        self.cpu = cpu
        self.rapl_root = str(rapl_root) if rapl_root is not None else None
        self.start_timeout_s = start_timeout_s
        self.process: mp.process.BaseProcess | None = None
        self.devices: list[str] = []
        self._conn = None
        self._df = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("sampler already started")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_sampler_main, name="joulebench-sampler", daemon=True,
            args=(child, self.device_uuids, self.hz, self.cpu, self.rapl_root, os.getpid()))
        self.process.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout_s):
            self._kill()
            raise DeviceError(f"the sampler process did not start within {self.start_timeout_s:g} s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            self._kill()
            raise DeviceError("the sampler process died while starting") from None
        if kind == "error":
            self._kill()
            raise DeviceError(f"the sampler process could not open its devices: {payload}")
        self.devices = payload

    def stop(self, timeout_s: float = 30.0) -> "pd.DataFrame":
        import pandas as pd

        if self._df is not None:
            return self._df
        cols = {c: [] for c in COLUMNS}
        if self._conn is not None and self.process is not None:
            try:
                self._conn.send("stop")
                if self._conn.poll(timeout_s):
                    kind, payload = self._conn.recv()
                    if kind == "rows":
                        cols = payload
            except (EOFError, BrokenPipeError, OSError):
                pass
        self._kill()
        df = pd.DataFrame(cols, columns=list(COLUMNS))
        df.attrs["hz"] = self.hz
        self._df = df
        return df

    def _kill(self) -> None:
        p = self.process
        if p is not None:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def __enter__(self) -> "Sampler":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def __del__(self):  # pragma: no cover - best effort
        try:
            if self.process is not None and self.process.is_alive():
                self.process.kill()
        except Exception:
            pass


def write_timeseries(df: "pd.DataFrame", path: Path | str) -> None:
    """Write the timeline as Parquet, atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = df.copy()
        out.attrs = {}
        for c in ("throttle_reasons", "memory_used_bytes", "device_index"):
            if c in out.columns:
                out[c] = pd_int(out[c])
        out.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def pd_int(series):
    """Nullable integer column (None stays missing)."""
    return series.astype("Int64")
