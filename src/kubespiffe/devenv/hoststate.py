"""Machine-global state a kubelet node changes, captured before it starts so teardown can put it back.

A kubelet, kube-proxy and containerd write to places no directory option moves: sysctls, iptables, cgroup
roots, /run/netns, /var/lib/kubelet/device-plugins, /var/log/pods. `HostSnapshot.take()` records what
exists beforehand; the `undo_*` functions remove what appeared since; `check_clean()` raises an
AssertionError naming every difference left, so tests prove the machine is as found.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Paths the node components create outside any directory we can give them.
GLOBAL_PATHS = (
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/usr/libexec/kubernetes",
    "/run/containerd",
    "/run/netns",
    "/run/kubernetes",
    "/etc/kubernetes",
    "/etc/cni",
    "/opt/cni",
    "/var/lib/containerd",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "kubepods.slice")
# Commands whose processes must not outlive a node (comm is cut at 15 characters by the kernel).
NODE_COMMANDS = frozenset(
    {"kubelet", "kube-proxy", "kube-scheduler", "kube-controller", "containerd", "containerd-shim"}
)
_VOLATILE_SYSCTLS = frozenset({"kernel/ns_last_pid"})
_PER_INTERFACE = re.compile(r"^net/ipv[46]/(conf|neigh)/(?!all/|default/)")
_MNT_DETACH = 2
_NFT_FAMILY = {"iptables": "ip", "ip6tables": "ip6"}


def read_sysctls() -> dict[str, str]:
    """Every writable sysctl except per-interface ones (interfaces come and go with pods) and counters."""
    values: dict[str, str] = {}
    for root, _dirs, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, "/proc/sys")
            if key in _VOLATILE_SYSCTLS or _PER_INTERFACE.match(key):
                continue
            try:
                if not os.stat(path).st_mode & stat.S_IWUSR:
                    continue
                with open(path) as handle:
                    values[key] = handle.read()
            except OSError:
                continue  # write-only (vm/drop_caches) or refused on read
    return values


def write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return [_unescape(line.split()[4]) for line in handle]


def is_under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def filesystem_type(path: str) -> str:
    """The type of the file system holding `path` (from the deepest mount containing it)."""
    target, best, kind = os.path.realpath(path), "", ""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = _unescape(fields[4])
            if is_under(target, [point]) and len(point) >= len(best):
                best, kind = point, fields[fields.index("-") + 1]
    return kind


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones and the v2 unified tree)."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(_unescape(fields[4])))
    return found


def _cgroup_dirs() -> list[str]:
    return sorted(str(h / n) for h in cgroup_hierarchies() for n in CGROUP_NAMES if (h / n).is_dir())


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def node_processes() -> list[int]:
    """Live node processes (zombies excluded: orphans wait for PID 1 to reap them, which may take a while)."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return sorted(pid for pid in pids if comm(pid) in NODE_COMMANDS and _alive(pid))


def _save(tool: str) -> str:
    return subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=True).stdout


def _tables(dump: str) -> dict[str, list[str]]:
    """iptables-save output as table -> lines, without counters and comments, empty tables dropped.

    iptables-nft creates a table the first time anything touches it; a table holding only built-in chains
    with ACCEPT policy and no rules filters nothing, so it counts as absent.
    """
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in dump.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line.startswith(":"):
            current.append(re.sub(r"\s*\[\d+:\d+\]$", "", line))
        elif line.startswith("-"):
            current.append(line)
    return {
        name: lines
        for name, lines in tables.items()
        if any(not (line.startswith(":") and line.endswith(" ACCEPT")) for line in lines)
    }


def iptables_rules() -> dict[str, dict[str, list[str]]]:
    return {tool: _tables(_save(tool)) for tool in _NFT_FAMILY}


def _raw_tables(tool: str) -> list[str]:
    return [line[1:] for line in _save(tool).splitlines() if line.startswith("*")]


def links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(link["ifname"] for link in json.loads(out))


def _netns() -> list[str]:
    directory = Path("/run/netns")
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


@dataclass
class HostSnapshot:
    """What the machine looked like before a node started; JSON so a crashed run can be cleaned up later."""

    sysctls: dict[str, str]
    paths: list[str]
    cgroups: list[str]
    netns: list[str]
    links: list[str]
    processes: list[int]
    iptables: dict[str, dict[str, list[str]]]
    nft_tables: dict[str, list[str]]
    mounts: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            sysctls=read_sysctls(),
            paths=[p for p in GLOBAL_PATHS if os.path.lexists(p)],
            cgroups=_cgroup_dirs(),
            netns=_netns(),
            links=links(),
            processes=node_processes(),
            iptables=iptables_rules(),
            nft_tables={tool: _raw_tables(tool) for tool in _NFT_FAMILY},
            mounts=[m for m in mount_points() if is_under(m, GLOBAL_PATHS)],
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HostSnapshot:
        return cls(**json.loads(text))


def kill_pids(pids: Iterable[int], sig: signal.Signals = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Poll until the processes are gone (reaped or zombies of someone else); return those still there."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if _alive(pid)]
        if remaining:
            time.sleep(0.05)
    return remaining


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def undo_cgroups(before: HostSnapshot, timeout: float = 10.0) -> None:
    """Kill every process left in the node's cgroups, then remove the cgroups bottom-up."""
    roots = [Path(d) for d in _cgroup_dirs() if d not in before.cgroups]
    deadline = time.monotonic() + timeout
    while roots and time.monotonic() < deadline:
        for root in roots:
            dirs = sorted((Path(d) for d, _, _ in os.walk(root)), key=lambda p: len(p.parts), reverse=True)
            for directory in dirs:
                try:
                    procs = (directory / "cgroup.procs").read_text().split()
                except OSError:
                    procs = []
                kill_pids(int(p) for p in procs)
                with contextlib.suppress(OSError):  # still busy (processes dying): the next round retries
                    directory.rmdir()
        roots = [r for r in roots if r.exists()]
        if roots:
            time.sleep(0.05)
    if roots:
        raise RuntimeError(f"cgroups still busy after {timeout:.0f}s: {', '.join(map(str, roots))}")


def unmount_under(prefixes: Iterable[str], keep: Iterable[str] = ()) -> None:
    """Lazily unmount every mount at or below the prefixes (deepest first), except those in `keep`."""
    libc = ctypes.CDLL(None, use_errno=True)
    prefixes, kept = list(prefixes), set(keep)
    for _ in range(20):  # stacked mounts on one point need one pass each
        targets = sorted(
            {m for m in mount_points() if is_under(m, prefixes) and m not in kept},
            key=lambda m: m.count("/"),
            reverse=True,
        )
        if not targets:
            return
        for target in targets:
            if libc.umount2(target.encode(), _MNT_DETACH) != 0:
                code = ctypes.get_errno()
                if code not in (errno.EINVAL, errno.ENOENT):
                    raise OSError(code, f"umount {target}: {os.strerror(code)}")
    raise RuntimeError(f"mounts remain under {prefixes}")


def undo_netns(before: HostSnapshot) -> None:
    """Network namespaces containerd pinned under /run/netns for pods (their veths go with them)."""
    for name in set(_netns()) - set(before.netns):
        path = f"/run/netns/{name}"
        unmount_under([path])
        Path(path).unlink(missing_ok=True)


def undo_iptables(before: HostSnapshot, own_comment: str) -> None:
    """Delete the KUBE-* chains and the rules pointing at them (and ours), table by table, atomically.

    Deleting precisely rather than restoring a saved dump leaves alone whatever else changed meanwhile.
    """
    for tool, family in _NFT_FAMILY.items():
        script: list[str] = []
        for table, lines in _tables(_save(tool)).items():
            known = set(before.iptables.get(tool, {}).get(table, []))
            chains = [
                line.split()[0][1:] for line in lines if line.startswith(":KUBE-") and line not in known
            ]
            rules = [
                line
                for line in lines
                if line.startswith("-A ")
                and line not in known
                and not line.split()[1].startswith("KUBE-")
                and (re.search(r" -[jg] KUBE-", line) or own_comment in line)
            ]
            if chains or rules:
                script += [f"*{table}"]
                script += ["-D " + rule[3:] for rule in rules]
                script += [f"-F {chain}" for chain in chains] + [f"-X {chain}" for chain in chains]
                script += ["COMMIT"]
        if script:
            subprocess.run(
                [f"{tool}-restore", "--noflush"], input="\n".join(script) + "\n", text=True, check=True
            )
        _drop_new_empty_tables(tool, family, before)


def _drop_new_empty_tables(tool: str, family: str, before: HostSnapshot) -> None:
    """iptables-nft leaves the tables it created (empty); drop them if nft is there and nobody filled them."""
    if not Path("/usr/sbin/nft").exists():
        return
    populated = _tables(_save(tool))
    for table in _raw_tables(tool):
        if table not in before.nft_tables.get(tool, []) and table not in populated:
            subprocess.run(["nft", "delete", "table", family, table], capture_output=True, check=False)


def undo_sysctls(before: HostSnapshot) -> list[str]:
    """Write back every sysctl that changed; ip_forward first, since setting it resets other values."""
    now = read_sysctls()
    changed = [k for k, v in before.sysctls.items() if now.get(k, v) != v]
    changed.sort(key=lambda k: k != "net/ipv4/ip_forward")
    for key in changed:
        try:
            write_sysctl(key, before.sysctls[key])
        except OSError:
            continue  # reported by check_clean
    return changed


def check_clean(before: HostSnapshot, bridge: str | None = None, veths: Iterable[str] = ()) -> None:
    """Raise AssertionError listing every way the machine differs from `before` in what a node touches."""
    problems: list[str] = []
    now = read_sysctls()
    problems += [
        f"sysctl {k.replace('/', '.')} = {now.get(k, '?').strip()!r}, was {v.strip()!r}"
        for k, v in before.sysctls.items()
        if now.get(k, v) != v
    ]
    problems += [f"{p} left behind" for p in GLOBAL_PATHS if os.path.lexists(p) and p not in before.paths]
    problems += [f"cgroup {d} left behind" for d in _cgroup_dirs() if d not in before.cgroups]
    problems += [f"netns {n} left behind" for n in _netns() if n not in before.netns]
    problems += [
        f"mount {m} left behind"
        for m in mount_points()
        if is_under(m, GLOBAL_PATHS) and m not in before.mounts
    ]
    present = set(links())
    problems += [f"link {name} left behind" for name in [bridge, *veths] if name and name in present]
    problems += [
        f"process {pid} ({comm(pid)}) still running"
        for pid in node_processes()
        if pid not in before.processes
    ]
    for tool, tables in iptables_rules().items():
        was = before.iptables.get(tool, {})
        for table in sorted(set(tables) | set(was)):
            added = [line for line in tables.get(table, []) if line not in was.get(table, [])]
            removed = [line for line in was.get(table, []) if line not in tables.get(table, [])]
            problems += [f"{tool} -t {table}: added {line}" for line in added]
            problems += [f"{tool} -t {table}: missing {line}" for line in removed]
        if Path("/usr/sbin/nft").exists():
            left = set(_raw_tables(tool)) - set(before.nft_tables.get(tool, [])) - set(tables)
            problems += [f"{tool}: empty table {table} left behind" for table in sorted(left)]
    if problems:
        raise AssertionError("the machine is not as found:\n  " + "\n  ".join(problems))
