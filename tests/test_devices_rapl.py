"""RAPL through a fake powercap sysfs tree: wrap-around and no double counting of nested domains."""
from __future__ import annotations

from pathlib import Path

import pytest

from joulebench.devices import cpu_devices
from joulebench.meters import EnergyWindow

MAX = 262_143_328_850


def zone(path: Path, name: str, energy_uj: int, max_uj: int = MAX) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "powercap"
    p0 = zone(root / "intel-rapl:0", "package-0", 1_000_000)
    zone(p0 / "intel-rapl:0:0", "core", 500_000)
    zone(p0 / "intel-rapl:0:1", "uncore", 100_000)
    zone(p0 / "intel-rapl:0:2", "dram", 2_000_000)
    zone(root / "intel-rapl:1", "package-1", 3_000_000)
    zone(root / "intel-rapl:2", "psys", 9_000_000)            # platform: contains the packages
    zone(root / "intel-rapl-mmio:0", "package-0", 7_000_000)  # duplicate interface
    (root / "intel-rapl:0:0").symlink_to(p0 / "intel-rapl:0:0")   # as in the real tree
    return root


def set_uj(root: Path, rel: str, value: int) -> None:
    (root / rel / "energy_uj").write_text(f"{value}\n")


def test_only_packages_and_dram_are_metered(tree):
    devs = cpu_devices(tree)
    assert [(d.info.uuid, d.info.kind, d.info.index) for d in devs] == [
        ("rapl:intel-rapl:0", "cpu-package", 0),
        ("rapl:intel-rapl:0:2", "dram", 0),
        ("rapl:intel-rapl:1", "cpu-package", 1),
    ]
    assert devs[0].energy_counter_j() == pytest.approx(1.0)


def test_window_energy_is_sum_of_packages_and_dram_not_core(tree):
    devs = cpu_devices(tree)
    with EnergyWindow(devs) as w:
        set_uj(tree, "intel-rapl:0", 1_000_000 + 50_000_000)           # +50 J
        set_uj(tree, "intel-rapl:0/intel-rapl:0:0", 500_000 + 40_000_000)  # core: inside the 50 J
        set_uj(tree, "intel-rapl:0/intel-rapl:0:2", 2_000_000 + 5_000_000)  # dram +5 J
        set_uj(tree, "intel-rapl:1", 3_000_000 + 30_000_000)           # +30 J
        set_uj(tree, "intel-rapl:2", 9_000_000 + 999_000_000)          # psys: ignored
    r = w.result
    assert r.energy_j == pytest.approx(85.0)
    assert r.energy_source == "rapl"
    assert [d.energy_j for d in r.devices] == pytest.approx([50.0, 5.0, 30.0])
    assert r.cpu_energy_j is None       # no GPU in this window: the CPU figure is the total


def test_wrap_around(tree):
    (d,) = [x for x in cpu_devices(tree) if x.info.uuid == "rapl:intel-rapl:1"]
    set_uj(tree, "intel-rapl:1", MAX - 1_000_000)
    e0 = d.energy_counter_j()
    set_uj(tree, "intel-rapl:1", 2_000_000)        # wrapped: 1 J to the top, 1 uJ to zero, 2 J after
    e1 = d.energy_counter_j()
    assert e1 - e0 == pytest.approx(3.000001)
    set_uj(tree, "intel-rapl:1", 5_000_000)
    assert d.energy_counter_j() - e1 == pytest.approx(3.0)


def test_absent_or_unreadable_tree(tmp_path):
    assert cpu_devices(tmp_path / "nope") == []
    root = tmp_path / "pc"
    z = zone(root / "intel-rapl:0", "package-0", 1)
    (z / "energy_uj").unlink()                      # unreadable energy: no device
    assert cpu_devices(root) == []


def test_sample_gives_power_from_successive_reads(tree):
    import time

    (d,) = [x for x in cpu_devices(tree) if x.info.uuid == "rapl:intel-rapl:1"]
    assert d.sample()["power_w"] is None
    time.sleep(0.05)
    set_uj(tree, "intel-rapl:1", 3_000_000 + 1_000_000)
    row = d.sample()
    assert row["energy_j"] == pytest.approx(4.0)
    assert 1.0 < row["power_w"] < 30.0             # 1 J over ~50 ms


def test_long_window_sees_every_wrap(tree):
    """Two wraps inside one window: the keeper thread's reads in between catch both."""
    import time

    (d,) = [x for x in cpu_devices(tree) if x.info.uuid == "rapl:intel-rapl:1"]
    set_uj(tree, "intel-rapl:1", 0)
    with EnergyWindow([d], keepalive_s=0.02) as w:
        for v in (MAX // 2, MAX - 10, 100, MAX // 2, MAX - 10, 200):   # up, wrap, up, wrap
            set_uj(tree, "intel-rapl:1", v)
            time.sleep(0.15)
    expected_uj = 2 * (MAX + 1) + 200
    assert w.result.energy_j == pytest.approx(expected_uj / 1e6)


def test_edges_only_would_miss_wraps(tree):
    (d,) = [x for x in cpu_devices(tree) if x.info.uuid == "rapl:intel-rapl:1"]
    set_uj(tree, "intel-rapl:1", 0)
    with EnergyWindow([d], keepalive_s=0) as w:     # keeper off: the failure the keeper prevents
        for v in (MAX // 2, MAX - 10, 100, MAX // 2, MAX - 10, 200):
            set_uj(tree, "intel-rapl:1", v)
    assert w.result.energy_j == pytest.approx(200 / 1e6)
