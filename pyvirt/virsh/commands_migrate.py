"""Job and migration commands: domjobinfo, domjobabort, migrate-*, and migrate itself.

``migrate`` itself lives in :mod:`pyvirt.virsh.migrate` (options → MigrateRequest, the
destination connection, the worker thread) and :mod:`pyvirt.virsh.progress` (``--verbose``
progress, ``--timeout``, Ctrl-C abort).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyvirt.constants import AbortJobFlags, JobStatsFlags, JobType, MigrateMaxSpeedFlags
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.virsh import output
from pyvirt.virsh.commands_domain import optional_method, require
from pyvirt.virsh.options import CommandError, ParsedCommand

if TYPE_CHECKING:
    from pyvirt.virsh.api import Domain
    from pyvirt.virsh.shell import Shell


JOB_TYPES = ("None", "Bounded", "Unbounded", "Completed", "Failed", "Cancelled")
JOB_OPERATIONS = ("Unknown", "Start", "Save", "Restore", "Incoming migration",
                  "Outgoing migration", "Snapshot", "Snapshot revert", "Dump", "Backup",
                  "Snapshot delete")  # fmt: skip
#: jobInfo()'s list, after its type, in libvirt's virDomainJobInfo order
JOB_INFO_FIELDS = ("time_elapsed", "time_remaining", "data_total", "data_processed",
                   "data_remaining", "memory_total", "memory_processed", "memory_remaining",
                   "disk_total", "disk_processed", "disk_remaining")  # fmt: skip


def _name(names: tuple[str, ...], index: int) -> str:
    return names[index] if 0 <= index < len(names) else "unknown"


# -- domjobinfo --------------------------------------------------------------------------------
def job_stats(dom: Domain, flags: int, rawstats: bool) -> tuple[int, dict[str, object]]:
    """The job's type and statistics; falls back to jobInfo() on an older daemon."""
    try:
        stats = dict(dom.jobStats(flags))
    except VirtError as exc:
        if exc.code != ErrorCode.NO_SUPPORT:
            raise
        if flags or rawstats:
            raise CommandError("Optional flags or --rawstats are not supported by the daemon",
                               cause=exc) from exc  # fmt: skip
        info = dom.jobInfo()
        return info[0], dict(zip(JOB_INFO_FIELDS, info[1:], strict=False))
    job_type = stats.pop("type", JobType.NONE)
    assert isinstance(job_type, int)
    return job_type, stats


def _raw_value(value: object) -> str:
    """virTypedParameterToString: booleans as yes/no, doubles with six decimals."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


def cmd_domjobinfo(shell: Shell, cmd: ParsedCommand) -> bool:
    require(cmd, ("keep-completed", "completed"))
    dom, _ = shell.domain(cmd)
    flags = int((JobStatsFlags.COMPLETED if cmd.flag("completed") else 0)
                | (JobStatsFlags.KEEP_COMPLETED if cmd.flag("keep-completed") else 0))
    job_type, stats = job_stats(dom, flags, cmd.flag("rawstats"))
    if cmd.flag("rawstats"):
        shell.out(f"Job type: {job_type}\n\n")
        for field, value in stats.items():
            shell.out(f"{field}: {_raw_value(value)}\n")
        return True
    shell.out(f"{'Job type:':<17} {_name(JOB_TYPES, job_type):<12}\n")
    operation = stats.get("operation")
    if isinstance(operation, int):
        shell.out(f"{'Operation:':<17} {_name(JOB_OPERATIONS, operation):<12}\n")
    running = job_type in (JobType.BOUNDED, JobType.UNBOUNDED)
    completed = bool(flags & JobStatsFlags.COMPLETED) and job_type == JobType.COMPLETED
    if running or completed or cmd.flag("anystats"):
        shell.out(JobReport(stats, job_type).render())
    return True


class JobReport:
    """The statistics lines of ``domjobinfo``, in virsh 9.0's order and formats."""

    def __init__(self, stats: dict[str, object], job_type: int) -> None:
        self.stats = stats
        self.job_type = job_type
        self.lines: list[str] = []

    def get(self, field: str) -> int:
        value = self.stats.get(field, 0)
        return value if isinstance(value, int) else 0

    def has(self, field: str) -> bool:
        return field in self.stats

    def ms(self, label: str, value: int) -> None:
        self.lines.append(f"{label:<17} {value:<12} ms\n")

    def count(self, label: str, value: int, width: int = 12, unit: str = "") -> None:
        self.lines.append(f"{label:<17} {value:<{width}}{unit}\n")

    def size(self, label: str, value: int, suffix: str = "") -> None:
        scaled, unit = output.pretty_capacity(value)
        self.lines.append(f"{label:<17} {scaled:.3f} {unit}{suffix}\n")

    def render(self) -> str:
        self.ms("Time elapsed:", self.get("time_elapsed"))
        if self.has("time_elapsed_net"):
            self.ms("Time elapsed w/o network:", self.get("time_elapsed_net"))
        if self.job_type == JobType.BOUNDED:
            self.ms("Time remaining:", self.get("time_remaining"))
        self._progress("data", "Data")
        if self._progress("memory", "Memory"):
            self._memory_rates()
        if self._progress("disk", "File") and self.get("disk_bps"):
            self.size("File bandwidth:", self.get("disk_bps"), "/s")
        self._pages_and_times()
        self._compression()
        return "".join(self.lines)

    def _progress(self, prefix: str, label: str) -> bool:
        values = [self.get(f"{prefix}_{part}") for part in ("processed", "remaining", "total")]
        if not any(values):
            return False
        for part, value in zip(("processed", "remaining", "total"), values, strict=True):
            self.size(f"{label} {part}:", value)
        return True

    def _memory_rates(self) -> None:
        if self.get("memory_bps"):
            self.size("Memory bandwidth:", self.get("memory_bps"), "/s")
        for field, label, unit in (("memory_dirty_rate", "Dirty rate:", " pages/s"),
                                   ("memory_page_size", "Page size:", " bytes"),
                                   ("memory_iteration", "Iteration:", ""),
                                   ("memory_postcopy_requests", "Postcopy requests:", "")):
            if self.has(field):
                self.count(label, self.get(field), unit=unit)

    def _pages_and_times(self) -> None:
        if self.has("memory_constant"):
            self.count("Constant pages:", self.get("memory_constant"))
        if self.has("memory_normal"):
            self.count("Normal pages:", self.get("memory_normal"))
        if self.has("memory_normal_bytes"):
            self.size("Normal data:", self.get("memory_normal_bytes"))
        if self.has("downtime"):
            total = self.job_type == JobType.COMPLETED
            self.ms("Total downtime:" if total else "Expected downtime:", self.get("downtime"))
        if self.has("downtime_net"):
            self.ms("Downtime w/o network:", self.get("downtime_net"))
        if self.has("setup_time"):
            self.ms("Setup time:", self.get("setup_time"))

    def _compression(self) -> None:
        for field, label in (("compression_cache", "Compression cache:"),
                             ("compression_bytes", "Compressed data:")):
            if self.has(field):
                self.size(label, self.get(field))
        for field, label in (("compression_pages", "Compressed pages:"),
                             ("compression_cache_misses", "Compression cache misses:"),
                             ("compression_overflow", "Compression overflows:"),
                             ("auto_converge_throttle", "Auto converge throttle:")):
            if self.has(field):
                self.count(label, self.get(field), width=13)
        for field, label in (("disk_temp_used", "Temporary disk space use:"),
                             ("disk_temp_total", "Temporary disk space total:")):
            if self.has(field):
                self.size(label, self.get(field))
        if self.has("errmsg"):
            self.lines.append(f"{'Error message:':<17} {self.stats['errmsg']}\n")


# -- the small migration commands --------------------------------------------------------------
def cmd_domjobabort(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    if cmd.flag("postcopy"):
        optional_method(dom, "abortJobFlags")(AbortJobFlags.POSTCOPY)
    else:
        dom.abortJob()
    return True


def cmd_setmaxdowntime(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    downtime = cmd.number("downtime", "ull") or 0
    if downtime < 1:
        raise CommandError("migrate: Invalid downtime")
    dom.migrateSetMaxDowntime(downtime, 0)
    return True


def cmd_getmaxdowntime(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    shell.out(f"{dom.migrateGetMaxDowntime(0)}\n")
    return True


def cmd_compcache(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    size = cmd.number("size", "ull")
    if size is not None:
        dom.migrateSetCompressionCache(size, 0)
    scaled, unit = output.pretty_capacity(dom.migrateGetCompressionCache(0))
    shell.out(f"Compression cache: {scaled:.3f} {unit}")  # virsh prints no newline here
    return True


def cmd_setspeed(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    bandwidth = cmd.number("bandwidth", "ulwrap") or 0  # virsh lets -1 wrap around
    dom.migrateSetMaxSpeed(bandwidth, _speed_flags(cmd))
    return True


def cmd_getspeed(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    shell.out(f"{dom.migrateGetMaxSpeed(_speed_flags(cmd))}\n")
    return True


def _speed_flags(cmd: ParsedCommand) -> int:
    return int(MigrateMaxSpeedFlags.POSTCOPY) if cmd.flag("postcopy") else 0


def cmd_postcopy(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    dom.migrateStartPostCopy(0)
    return True


# -- migrate -----------------------------------------------------------------------------------
def cmd_migrate(shell: Shell, cmd: ParsedCommand) -> bool:
    from pyvirt.virsh import migrate

    return migrate.run(shell, cmd)
