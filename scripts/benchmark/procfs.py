"""What the harness reads from /proc: CPU time and memory of a process tree, and who owns a listening port."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TCP_LISTEN = "0A"


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds_with_children(pid: int) -> float:
    """utime + stime of one process and of the children it waited for (cutime + cstime); 0 if it is gone.

    Read from an exited process that was not reaped yet (a zombie), this is everything its tree used.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def running(pid: int) -> bool:
    """Whether a process exists and has not exited (an exited one not yet reaped is a zombie: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def title(pid: int) -> str:
    """A process's command line as ``ps`` shows it (a title it set itself included); "" if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def system_cpu_seconds() -> tuple[float, float]:
    """CPU time of the whole machine so far: (processes: user + nice + system, interrupts: irq + softirq + steal).

    Loopback traffic is partly processed in softirq context, which no process is charged for.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system) / CLOCK_TICKS, (irq + softirq + steal) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process (from every thread's ``children`` file)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    pids = [pid]
    index = 0
    while index < len(pids):
        pids += children(pids[index])
        index += 1
    return pids


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and their descendants."""
    return sum(cpu_seconds(member) for pid in pids for member in tree(pid))


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of one process, in bytes (empty if it is gone)."""
    values: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and peak RSS summed over a process tree (a sum of peaks is an upper bound for several processes)."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for member in tree(pid):
        for key, value in memory(member).items():
            total[key] += value
    return total


def open_fds(pid: int) -> int:
    """File descriptors a process holds open (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def tree_open_fds(pid: int) -> int:
    """File descriptors held open by a process and its descendants, summed."""
    return sum(open_fds(member) for member in tree(pid))


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets a process and its descendants hold."""
    inodes: set[str] = set()
    for member in tree(pid):
        try:
            descriptors = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"/proc/{member}/fd/{descriptor}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def connections_to(pid: int, port: int) -> int:
    """TCP connections a process (or a descendant) holds to ``port`` on another process (a redis-server's)."""
    mine = socket_inodes(pid)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in mine:
                count += 1
    return count


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def accept_queue(port: int) -> int | None:
    """Connections waiting to be accepted on ``port`` (its longest listening queue); None when nothing listens."""
    longest: int | None = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 4 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                waiting = int(fields[4].split(":")[1], 16)
                longest = waiting if longest is None else max(longest, waiting)
    return longest


def listens_on(pid: int, port: int) -> bool:
    """Whether this process (or a descendant) holds the socket listening on ``port``."""
    inodes = listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for member in tree(pid):
        try:
            descriptors = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{member}/fd/{descriptor}") in wanted:
                    return True
            except OSError:
                continue
    return False
