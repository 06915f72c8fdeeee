"""A migration job's statistics in libvirt's forms.

QMP ``query-migrate`` (the job's ``info``) and the storage copy's mirrors become
virDomainGetJobInfo's fields and libvirt's typed job statistics (``domjobinfo``).
"""

from __future__ import annotations

from pyvirt.constants import JobType
from pyvirt.qemu.migration.job import MigrationJob, OutgoingJob
from pyvirt.qemu.migration.storage import StorageCopy, disk_stats


def _storage(job: MigrationJob) -> StorageCopy | None:
    return job.storage if isinstance(job, OutgoingJob) else None


def job_info(job: MigrationJob | None) -> dict[str, int]:
    """virDomainGetJobInfo's fields (bytes and milliseconds) for an active job."""
    fields = {name: 0 for name in _INFO_FIELDS}
    if job is None:
        return {"type": JobType.NONE, **fields}
    ram = job.info.get("ram", {})
    total, remaining = int(ram.get("total", 0)), int(ram.get("remaining", 0))
    processed = int(ram.get("transferred", 0))
    disk = disk_stats(_storage(job), completed=False)
    file_total, file_processed = disk.get("disk_total", 0), disk.get("disk_processed", 0)
    file_remaining = disk.get("disk_remaining", 0)
    fields.update(time_elapsed=job.elapsed_ms(), data_total=total + file_total,
                  data_processed=processed + file_processed,
                  data_remaining=remaining + file_remaining, mem_total=total,
                  mem_processed=processed, mem_remaining=remaining, file_total=file_total,
                  file_processed=file_processed, file_remaining=file_remaining)
    return {"type": JobType.UNBOUNDED, **fields}


_INFO_FIELDS = ("time_elapsed", "time_remaining", "data_total", "data_processed",
                "data_remaining", "mem_total", "mem_processed", "mem_remaining", "file_total",
                "file_processed", "file_remaining")

#: query-migrate "ram" fields → libvirt's VIR_DOMAIN_JOB_* stats
_RAM_STATS = {
    "total": "memory_total", "transferred": "memory_processed",
    "remaining": "memory_remaining", "duplicate": "memory_constant",
    "normal": "memory_normal", "normal-bytes": "memory_normal_bytes",
    "mbps": "memory_bps", "dirty-pages-rate": "memory_dirty_rate",
    "dirty-sync-count": "memory_iteration", "postcopy-requests": "memory_postcopy_requests",
    "page-size": "memory_page_size",
}
_XBZRLE_STATS = {
    "cache-size": "compression_cache", "bytes": "compression_bytes",
    "pages": "compression_pages", "cache-miss": "compression_cache_misses",
    "overflow": "compression_overflow",
}


def job_stats(job: MigrationJob, *, completed: bool) -> dict[str, int]:
    """libvirt's typed job statistics (all ULLONG but ``operation``) from query-migrate."""
    info = job.info
    ram = info.get("ram", {})
    stats: dict[str, int] = {"operation": int(job.operation)}
    elapsed = int(info.get("total-time", job.elapsed_ms())) if completed else job.elapsed_ms()
    stats["time_elapsed"] = elapsed
    for qemu_key, name in _RAM_STATS.items():
        if qemu_key in ram:
            value = float(ram[qemu_key])
            # QEMU reports mbps in megabits/s; libvirt reports bytes/s
            stats[name] = int(value * 1_000_000 / 8) if qemu_key == "mbps" else int(value)
    stats.update(disk_stats(_storage(job), completed=completed))
    for part in ("total", "processed", "remaining"):  # libvirt: data = memory + disk
        stats[f"data_{part}"] = stats.get(f"memory_{part}", 0) + stats.get(f"disk_{part}", 0)
    for key, name in (("downtime", "downtime"), ("setup-time", "setup_time")):
        if key in info:
            stats[name] = int(info[key])
    if not completed and "expected-downtime" in info:
        stats["downtime"] = int(info["expected-downtime"])
    for qemu_key, name in _XBZRLE_STATS.items():
        if qemu_key in info.get("xbzrle-cache", {}):
            stats[name] = int(info["xbzrle-cache"][qemu_key])
    if "cpu-throttle-percentage" in info:
        stats["auto_converge_throttle"] = int(info["cpu-throttle-percentage"])
    return stats
