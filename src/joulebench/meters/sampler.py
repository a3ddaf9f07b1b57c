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

A worker that meters many windows keeps one sampler process and records segments, so
the process start (an interpreter and NVML initialisation) is paid once, not per window:

    s = Sampler(uuids); s.open()
    s.begin(); work(); df = s.end()      # one timeline per window; the process idles between
    s.close()
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from joulebench.devices.base import SAMPLE_KEYS
from joulebench.errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

COLUMNS = ("t_s", "device_uuid", "device_index", "kind") + SAMPLE_KEYS


def _empty() -> dict[str, list]:
    return {c: [] for c in COLUMNS}


IDLE_POLL_S = 0.5   # how often an idle sampler (between segments) checks that its parent lives


def _open_devices(conn, device_uuids: list[str], cpu: bool, rapl_root: str | None) -> list | None:
    """The devices to poll, or None after sending the error to the parent (never hang it)."""
    try:
        from joulebench.devices import cpu_devices, gpus_by_uuid
        from joulebench.testing import install_from_environment

        install_from_environment()
        devices = list(gpus_by_uuid(device_uuids))
        if cpu:
            devices += cpu_devices(rapl_root) if rapl_root else cpu_devices()
        return devices
    except Exception as e:  # report, never hang the parent
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        finally:
            conn.close()
        return None


def _sample_into(cols: dict[str, list], devices: list) -> None:
    """One row per device, appended to the columns (a device that fails gives a row of None)."""
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


def _sampler_main(conn, device_uuids: list[str], hz: float, cpu: bool, rapl_root: str | None,
                  parent_pid: int, start_recording: bool = True) -> None:
    """Child process body. Only stdlib and joulebench.devices are imported here."""
    devices = _open_devices(conn, device_uuids, cpu, rapl_root)
    if devices is None:
        return
    conn.send(("ready", [d.info.uuid for d in devices]))
    cols: dict[str, list] = _empty()
    period = 1.0 / hz
    recording = start_recording
    next_t = time.monotonic()
    try:
        while True:
            if recording:
                _sample_into(cols, devices)
                next_t += period
                now = time.monotonic()
                if next_t < now - period:           # fell behind (overloaded host): skip, leaving a gap
                    next_t = now
                wait_s = max(0.0, next_t - time.monotonic())
            else:
                wait_s = IDLE_POLL_S                # between segments: only listen (and watch the parent)
            # wait for the next tick, or a message from the parent
            if conn.poll(wait_s):
                msg = conn.recv()
                if msg == "stop":
                    conn.send(("rows", cols))
                    return
                if msg == "begin":
                    cols = _empty()
                    recording = True
                    next_t = time.monotonic()
                    conn.send(("begun", None))
                elif msg == "end":
                    conn.send(("rows", cols))
                    cols = _empty()
                    recording = False
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
    """A separate process polling devices at ``hz``. ``stop()`` returns the timeline (idempotent).

    ``open()`` / ``begin()`` / ``end()`` / ``close()`` reuse one process for many segments.
    """

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
        self._recording = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive() and self._conn is not None

    def start(self) -> None:
        """Start the process, recording from now on (one segment, ended by ``stop()``)."""
        self._spawn(recording=True)
        self._recording = True

    def open(self) -> None:
        """Start the process idle; ``begin()`` starts a segment."""
        self._spawn(recording=False)

    def _spawn(self, *, recording: bool) -> None:
        if self.process is not None:
            raise RuntimeError("sampler already started")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_sampler_main, name="joulebench-sampler", daemon=True,
            args=(child, self.device_uuids, self.hz, self.cpu, self.rapl_root, os.getpid(), recording))
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

    def begin(self, timeout_s: float = 10.0) -> None:
        """Start recording a new segment (returns once the process has started it)."""
        if not self.alive:
            raise DeviceError("the sampler process is not running")
        try:
            self._conn.send("begin")
            if not self._conn.poll(timeout_s):
                raise DeviceError(f"the sampler process did not answer within {timeout_s:g} s")
            kind, _ = self._conn.recv()
        except (EOFError, BrokenPipeError, OSError) as e:
            self._kill()
            raise DeviceError(f"the sampler process died: {e}") from None
        if kind != "begun":
            raise DeviceError(f"the sampler process answered {kind!r} to begin")
        self._recording = True

    def end(self, timeout_s: float = 30.0) -> "pd.DataFrame":
        """The current segment's timeline; the process stays, idle, for the next ``begin()``."""
        cols = self._rows("end", timeout_s) if self._recording and self.alive else _empty()
        self._recording = False
        return self._frame(cols)

    def close(self) -> None:
        """End the process (a segment in progress is dropped)."""
        if self._conn is not None and self.process is not None:
            self._rows("stop", 5.0)
        self._kill()
        self._recording = False

    def stop(self, timeout_s: float = 30.0) -> "pd.DataFrame":
        if self._df is not None:
            return self._df
        cols = self._rows("stop", timeout_s) if self._conn is not None and self.process is not None else _empty()
        self._kill()
        self._recording = False
        self._df = self._frame(cols)
        return self._df

    def _rows(self, message: str, timeout_s: float) -> dict[str, list]:
        """Send ``end`` or ``stop`` and return the rows the process answers with (none if it is gone)."""
        try:
            self._conn.send(message)
            if self._conn.poll(timeout_s):
                kind, payload = self._conn.recv()
                if kind == "rows":
                    return payload
        except (EOFError, BrokenPipeError, OSError):
            self._kill()
        return _empty()

    def _frame(self, cols: dict[str, list]) -> "pd.DataFrame":
        import pandas as pd

        df = pd.DataFrame(cols, columns=list(COLUMNS))
        df.attrs["hz"] = self.hz
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


def device_window_stats(df: "pd.DataFrame | None", start_s: float, end_s: float) -> dict[str, dict]:
    """Per device (UUID), what the timeline says of the device over one window: samples, mean sampled power,
    mean and lowest SM clock, mean GPU utilisation, and the share of samples with the software power cap
    engaged or any clock-limiting reason (devices/nvml.THROTTLE_MASK). A device the clocks say little about (a
    CPU domain, a failed read) gets None for those. Pure: the sampler's DataFrame in, numbers out."""
    from joulebench.devices.nvml import THROTTLE_MASK, THROTTLE_SW_POWER_CAP

    if df is None or not len(df) or "device_uuid" not in df.columns:
        return {}
    tl = df[(df["t_s"] >= start_s) & (df["t_s"] <= end_s)]
    out: dict[str, dict] = {}

    def mean(col, g) -> float | None:
        if col not in g.columns:
            return None
        s = g[col].dropna()
        return float(s.mean()) if len(s) else None

    for uuid, g in tl.groupby("device_uuid", sort=True):
        clocks = g["sm_clock_mhz"].dropna() if "sm_clock_mhz" in g.columns else []
        reasons = g["throttle_reasons"].dropna().astype("int64") if "throttle_reasons" in g.columns else []
        out[str(uuid)] = {
            "samples": int(len(g)),
            "power_w_mean": mean("power_w", g),
            "sm_clock_mhz_mean": float(clocks.mean()) if len(clocks) else None,
            "sm_clock_mhz_min": float(clocks.min()) if len(clocks) else None,
            "gpu_util_pct_mean": mean("gpu_util_pct", g),
            "power_cap_share": float(((reasons & THROTTLE_SW_POWER_CAP) != 0).mean()) if len(reasons) else None,
            "clock_limited_share": float(((reasons & THROTTLE_MASK) != 0).mean()) if len(reasons) else None,
        }
    return out
