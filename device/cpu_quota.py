"""Confine a process to a fraction of one CPU with a cgroup CPU quota (a slower device).

    quota = confine_to_cpu_fraction(0.1)     # this process now gets 10% of one CPU
    ...
    quota.release()                          # also runs at interpreter exit

cgroup v1 (a `cpu` hierarchy with cpu.cfs_quota_us, e.g. /sys/fs/cgroup/cpu): the group is
created below the process's current cpu cgroup and gets cpu.cfs_quota_us = fraction x
cpu.cfs_period_us.  cgroup v2 (/sys/fs/cgroup/cgroup.controllers exists): the group is a
sibling of the current cgroup (v2 forbids controllers in a cgroup that holds processes) and
gets `cpu.max` = "QUOTA PERIOD".  Moving the process writes its pid to cgroup.procs, which
moves all of its threads; processes it forks later inherit the group.

The quota applies to the process as a whole, whatever its thread count: 0.1 means 10 ms of
CPU per 100 ms period in total.  Root (or a delegated, writable cgroup) is required;
otherwise `QuotaUnavailable` says why and the CLI exits 2.
"""
from __future__ import annotations

import atexit
import errno
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_FS = Path("/sys/fs/cgroup")
PROC = Path("/proc")
DEFAULT_PREFIX = "coinfer"
DEFAULT_PERIOD_US = 100_000        # the kernel's default CFS period
MIN_QUOTA_US = 1_000               # kernel minimum for cfs_quota_us / cpu.max quota
MAX_PERIOD_US = 1_000_000          # kernel maximum for the CFS period


class QuotaUnavailable(RuntimeError):
    """The quota cannot be applied here; the message says why (CLI: exit status 2)."""


class CgroupVersion(Enum):
    V1 = 1
    V2 = 2


@dataclass(frozen=True)
class CgroupLayout:
    """Where the CPU controller lives."""
    version: CgroupVersion
    root: Path                     # v1: the cpu hierarchy's mount; v2: the unified mount


def detect_layout(fs_root: Path = CGROUP_FS) -> CgroupLayout:
    """v2 when `fs_root/cgroup.controllers` exists, else a v1 `cpu` hierarchy under fs_root."""
    if (fs_root / "cgroup.controllers").exists():
        if "cpu" not in (fs_root / "cgroup.controllers").read_text().split():
            raise QuotaUnavailable(f"cgroup v2 at {fs_root} has no cpu controller")
        return CgroupLayout(CgroupVersion.V2, fs_root)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (fs_root / name / "cpu.cfs_quota_us").exists():
            return CgroupLayout(CgroupVersion.V1, fs_root / name)
    raise QuotaUnavailable(f"no cgroup CPU controller found: expected {fs_root}/cgroup.controllers "
                           f"(v2) or {fs_root}/cpu/cpu.cfs_quota_us (v1)")


def current_cgroup(pid: int, layout: CgroupLayout, proc_root: Path = PROC) -> str:
    """The pid's cgroup path relative to the controller's root, e.g. "/" or "/user.slice"."""
    try:
        lines = (proc_root / str(pid) / "cgroup").read_text().splitlines()
    except OSError as e:
        raise QuotaUnavailable(f"cannot read the cgroup of pid {pid}: {e}") from e
    for line in lines:
        hier, controllers, path = line.split(":", 2)
        if layout.version is CgroupVersion.V2 and hier == "0" and controllers == "":
            return path
        if layout.version is CgroupVersion.V1 and "cpu" in controllers.split(","):
            return path
    raise QuotaUnavailable(f"pid {pid} has no {layout.version.name} cpu cgroup in "
                           f"{proc_root / str(pid) / 'cgroup'}")


def own_group(pid: int | None = None, fs_root: Path = CGROUP_FS, proc_root: Path = PROC
              ) -> tuple[CgroupLayout, Path]:
    """The CPU controller's layout and the directory of the pid's (default: this process's)
    own cgroup; raises QuotaUnavailable or OSError when they cannot be found."""
    layout = detect_layout(fs_root)
    return layout, layout.root / current_cgroup(pid or os.getpid(), layout, proc_root).lstrip("/")


def cpu_limit(pid: int | None = None, fs_root: Path = CGROUP_FS, proc_root: Path = PROC
              ) -> tuple[float, float] | None:
    """(share of one CPU, CFS period in s) that the pid's own cgroup allows it (--cpu-quota, or a
    container's CPU limit), or None when it is unlimited or cannot be read.  Only the pid's own
    group is read, not its ancestors'."""
    try:
        layout, group = own_group(pid, fs_root, proc_root)
        if layout.version is CgroupVersion.V2:
            quota, period = (group / "cpu.max").read_text().split()
            if quota == "max":
                return None
            quota_us, period_us = int(quota), int(period)
        else:
            quota_us = int((group / "cpu.cfs_quota_us").read_text())
            period_us = int((group / "cpu.cfs_period_us").read_text())
    except (QuotaUnavailable, OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us, period_us / 1e6


def throttling(pid: int | None = None, fs_root: Path = CGROUP_FS, proc_root: Path = PROC
               ) -> tuple[int, int, float] | None:
    """(CFS periods, periods throttled, seconds throttled) so far of the pid's own cgroup
    (its cpu.stat), or None when it cannot be read: the difference over a run says whether
    the quota really rationed it."""
    try:
        layout, group = own_group(pid, fs_root, proc_root)
    except (QuotaUnavailable, OSError, ValueError):
        return None
    return group_throttling(group, layout.version)


def group_throttling(group: Path, version: CgroupVersion) -> tuple[int, int, float] | None:
    """(CFS periods, periods throttled, seconds throttled) of a cgroup directory, from its cpu.stat."""
    try:
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines() if line.strip())
        if version is CgroupVersion.V2:
            return int(stat["nr_periods"]), int(stat["nr_throttled"]), int(stat["throttled_usec"]) / 1e6
        return int(stat["nr_periods"]), int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e9
    except (OSError, ValueError, KeyError):
        return None


def quota_for(fraction: float, period_us: int = DEFAULT_PERIOD_US) -> tuple[int, int]:
    """(quota_us, period_us) for `fraction` of one CPU; the period grows for tiny fractions."""
    if fraction * period_us < MIN_QUOTA_US:
        period_us = min(MAX_PERIOD_US, math.ceil(MIN_QUOTA_US / fraction))
    quota_us = round(fraction * period_us)
    if quota_us < MIN_QUOTA_US:
        raise ValueError(f"expected a fraction >= {MIN_QUOTA_US / MAX_PERIOD_US}, got {fraction}")
    return quota_us, period_us


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:       # one write() per value, as cgroupfs expects
        f.write(text)


def _procs(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass
class CpuQuota:
    """A process confined to `fraction` of one CPU; `release()` undoes it (idempotent)."""
    fraction: float
    pid: int
    group: Path                    # the cgroup directory created for it
    home: Path                     # the cgroup the process came from (gets it back)
    layout: CgroupLayout
    quota_us: int
    period_us: int
    _released: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release(self) -> bool:
        """Move every process of the group back home and remove the group; best effort.

        Returns True when the group directory is gone.
        """
        with self._lock:
            if self._released:
                return not self.group.exists()
            self._released = True
        atexit.unregister(self.release)
        for pid in _procs(self.group):
            try:
                _write(self.home / "cgroup.procs", str(pid))
            except OSError as e:
                if e.errno != errno.ESRCH:
                    log.warning("could not move pid %d back to %s: %s", pid, self.home, e)
        try:
            self.group.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove cgroup %s: %s", self.group, e)
            return False
        log.info("released cpu quota of pid %d (%s removed)", self.pid, self.group)
        return True

    def throttling(self) -> tuple[int, int, float] | None:
        """(CFS periods, periods throttled, seconds throttled) of the group so far."""
        return group_throttling(self.group, self.layout.version)

    def __enter__(self) -> "CpuQuota":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _placement(pid: int, fs_root: Path, proc_root: Path) -> tuple[CgroupLayout, Path, Path]:
    """(layout, the pid's current cgroup dir, the dir the new group goes in); checks access."""
    layout = detect_layout(fs_root)
    rel = current_cgroup(pid, layout, proc_root)
    home = layout.root / rel.lstrip("/")
    if layout.version is CgroupVersion.V1:
        base = home                  # v1: nest below the current group (keeps its limits)
    else:
        base = home if rel == "/" else home.parent   # v2: no controllers where processes live
    if not os.access(base, os.W_OK):
        why = (f"needs root (running as uid {os.geteuid()})" if os.geteuid() != 0
               else "the cgroup filesystem is read-only here")
        raise QuotaUnavailable(f"cannot create a cgroup in {base}: {why}")
    return layout, home, base


def require_cpu_quota(pid: int | None = None, *, fs_root: Path = CGROUP_FS,
                      proc_root: Path = PROC) -> None:
    """Raise QuotaUnavailable (with the reason) unless `confine_to_cpu_fraction` can work;
    cheap, so a CLI can fail before loading its model."""
    _placement(os.getpid() if pid is None else pid, fs_root, proc_root)


def confine_to_cpu_fraction(fraction: float, pid: int | None = None, name: str | None = None,
                            *, fs_root: Path = CGROUP_FS, proc_root: Path = PROC) -> CpuQuota:
    """Put `pid` (default: this process) in a new cgroup limited to `fraction` of one CPU.

    `name` defaults to "coinfer-PID".  Raises ValueError for a fraction outside
    (0, number of CPUs], QuotaUnavailable when no writable CPU cgroup is available.
    """
    cpus = _cpu_count()
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= cpus):
        raise ValueError(f"expected 0 < fraction <= {cpus} (CPUs here), got {fraction!r}")
    pid = os.getpid() if pid is None else pid
    name = name or f"{DEFAULT_PREFIX}-{pid}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise ValueError(f"expected a cgroup name of letters, digits, '_', '.', '-', got {name!r}")

    quota_us, period_us = quota_for(fraction)
    layout, home, base = _placement(pid, fs_root, proc_root)

    if layout.version is CgroupVersion.V2:
        control = base / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            try:
                _write(control, "+cpu")
            except OSError as e:
                raise QuotaUnavailable(f"cannot enable the cpu controller in {base}: {e}") from e

    group = base / name
    try:
        group.mkdir()
    except FileExistsError:
        others = [p for p in _procs(group) if p != pid]
        if others:
            raise QuotaUnavailable(f"cgroup {group} exists and holds other processes {others}")
    except OSError as e:
        raise QuotaUnavailable(f"cannot create cgroup {group}: {e}") from e

    try:
        if layout.version is CgroupVersion.V1:
            _write(group / "cpu.cfs_period_us", str(period_us))
            _write(group / "cpu.cfs_quota_us", str(quota_us))
        else:
            _write(group / "cpu.max", f"{quota_us} {period_us}")
        _write(group / "cgroup.procs", str(pid))
    except BaseException as e:
        try:
            group.rmdir()
        except OSError:
            pass
        if isinstance(e, ProcessLookupError) or getattr(e, "errno", None) == errno.ESRCH:
            raise ValueError(f"expected a running process, got pid {pid}") from e
        if isinstance(e, OSError):
            raise QuotaUnavailable(f"cannot set the quota in {group}: {e}") from e
        raise

    quota = CpuQuota(fraction, pid, group, home, layout, quota_us, period_us)
    atexit.register(quota.release)
    log.info("pid %d confined to %g CPU (%d/%d us) in %s", pid, fraction, quota_us, period_us, group)
    return quota


def cleanup_stale(prefix: str = DEFAULT_PREFIX, fs_root: Path = CGROUP_FS) -> list[Path]:
    """Remove empty cgroups named PREFIX-PID directly below the controller root (leftovers of
    killed processes) whose pid is gone.  Returns the directories removed."""
    try:
        layout = detect_layout(fs_root)
    except QuotaUnavailable:
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    removed = []
    for group in sorted(layout.root.iterdir()):
        m = pattern.match(group.name)
        if not (m and group.is_dir()) or _procs(group):
            continue
        if (PROC / m[1]).exists():
            continue                 # its process still runs (it may confine itself again)
        try:
            group.rmdir()
            removed.append(group)
        except OSError as e:
            log.warning("could not remove stale cgroup %s: %s", group, e)
    return removed
