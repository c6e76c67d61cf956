"""CPU time of the processes a scenario runs on, read from /proc: the server's (every process in the
process group of the one whose command line has its port: the web processes and the background
process) and the database's (PostgreSQL's server processes). Divided by the requests answered, it
says where a request's time goes, without a profiler."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ("cpu_by_process", "cpu_seconds", "cpu_used", "group_cpu_by_process", "group_cpu_seconds")

_TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> list[tuple[str, list[str]]]:
    """(command line, fields of /proc/<pid>/stat after the name) of every process."""
    return [(c, f) for c, f, _ in _processes_with_pid()]


def _processes_with_pid() -> list[tuple[str, list[str], int]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        found.append((command, fields, int(entry.name)))
    return found


def _seconds(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime in ticks


def cpu_seconds(*needles: str) -> float:
    """User and system CPU seconds of the processes whose command line contains every needle.
    Processes that end in between take their time with them: use on long-lived processes."""
    return sum(_seconds(f) for c, f in _processes() if c and all(n in c for n in needles)) / _TICKS


def group_cpu_seconds(*needles: str) -> float:
    """CPU seconds of every process in the process groups of those whose command line contains
    every needle (a server started in a session of its own, and every process it started)."""
    processes = _processes()
    groups = {f[2] for c, f in processes if c and all(n in c for n in needles)}
    return sum(_seconds(f) for _, f in processes if f[2] in groups) / _TICKS


def cpu_by_process(*needles: str) -> dict[int, int]:
    """CPU ticks per process whose command line contains every needle."""
    return {pid: _seconds(f) for c, f, pid in _processes_with_pid() if c and all(n in c for n in needles)}


def group_cpu_by_process(*needles: str) -> dict[int, int]:
    """CPU ticks per process in the process groups of those whose command line contains every needle."""
    processes = _processes_with_pid()
    groups = {f[2] for c, f, _ in processes if c and all(n in c for n in needles)}
    return {pid: _seconds(f) for _, f, pid in processes if f[2] in groups}


def cpu_used(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the second (a process
    that started meanwhile counts whole; one that ended took its time with it and counts nothing,
    rather than less than nothing)."""
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / _TICKS
