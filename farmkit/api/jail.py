"""A jail for one command on Linux: a root filesystem of its own, its own processes and no network.

Started inside new mount, PID, network, IPC and UTS namespaces (``unshare``, as root, or with a user
namespace of its own otherwise), it builds the command's world and executes it:

- a new root, a size-limited tmpfs, holding read-only binds of what the command needs (the system's
  ``/usr`` and libraries, a few files of ``/etc``, the Python installation and packages) and nothing
  else: no home, no ``FARM_HOME``, no agents folder, no credentials file, no host ``/proc``;
- paths to hide inside those binds (say a ``FARM_HOME`` inside the checkout) covered by empty ones;
- a fresh ``/proc`` (only its own processes: no other process's environment to read), a minimal
  ``/dev``, a writable work folder and ``/tmp`` inside the tmpfs;
- loopback only (127.0.0.1 is its own: nothing of the host is reachable);
- then, as root, it drops to an unprivileged user; in a user namespace it enters one more, which locks
  every mount in place (none can be unmounted or made writable); ``no_new_privs`` either way.

    python jail.py limits LIMITS.json -- unshare --mount --net --pid --ipc --uts --fork --kill-child \
        python jail.py enter SPEC.json -- CMD ...

``limits`` comes first wherever the sandbox runs (also where no namespace can be made): resource limits
(CPU seconds, address space, file size, no core dumps, processes) and death with the thread that
started it. It uses the standard library only and imports nothing of farmkit: it runs as a script,
before the command, and on a failure says which step failed and exits 70.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import socket
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 0x20, 0x400, 0x800, 0x1000, 0x4000
MS_SLAVE, MS_RELATIME = 1 << 19, 1 << 21
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR = 442          # the same number on every architecture (new syscalls share one table)
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 0x1, 0x8000, -100
SYS_PIVOT_ROOT = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203,
                  "s390x": 217, "i686": 217, "armv7l": 218}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
FAILED = 70

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class JailError(RuntimeError):
    pass


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _call(_libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                      ctypes.c_ulong(flags), data and data.encode()), f"mount {source or fstype} on {target}")


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _readonly(target: str) -> None:
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)     # struct mount_attr
    buffer = ctypes.create_string_buffer(attr, len(attr))
    if _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), target.encode(),
                     ctypes.c_uint(AT_RECURSIVE), buffer, ctypes.c_size_t(len(attr))) == 0:
        return
    # Before Linux 5.12: remount the bind read-only, keeping the flags it has (locked ones must stay).
    st = os.statvfs(target)
    kept = 0
    for have, flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                       (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                       (getattr(os, "ST_RELATIME", 4096), MS_RELATIME)):
        if st.f_flag & have:
            kept |= flag
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)


def bind(root: str, path: str) -> None:
    """``path`` at the same place under ``root``, read-only (a symlink is copied as a symlink)."""
    target = _inside(root, path)
    if os.path.islink(path):
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
        return
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(path, target, None, MS_BIND | MS_REC)
    _readonly(target)


def hide(root: str, path: str) -> None:
    """Cover ``path`` (when a bind brought it in) with an empty, read-only folder or file."""
    target = _inside(root, path)
    if os.path.islink(target) or not os.path.exists(target):
        return
    if os.path.isdir(target):
        mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
    else:
        empty = os.path.join(root, ".empty")
        open(empty, "a").close()
        mount(empty, target, None, MS_BIND)
        _readonly(target)


def devices(root: str) -> None:
    dev = _inside(root, "/dev")
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(os.path.join(dev, name), "a").close()
            mount(f"/dev/{name}", os.path.join(dev, name), None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "shm"))
    os.chmod(os.path.join(dev, "shm"), 0o1777)


def loopback_up() -> None:
    """Bring up ``lo`` of the new network namespace (it starts down), the only interface it has."""
    import fcntl
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def pivot(root: str) -> None:
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise JailError(f"pivot_root: unknown system call number on {platform.machine()}")
    os.chdir(root)
    _call(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    mount(None, ".", None, MS_SLAVE | MS_REC)       # the old root's unmount must reach nothing outside
    _call(_libc.umount2(b".", MNT_DETACH), "unmount the old root")
    os.chdir("/")


def lock() -> None:
    """Enter a user and mount namespace of its own: every mount made so far is locked in place."""
    _call(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare a user namespace")
    for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def build(spec: dict) -> None:
    root = spec["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec.get('size', '1g')},mode=0755")
    for path in spec.get("binds", ()):
        bind(root, path)
    for path in spec.get("hide", ()):
        hide(root, path)
    devices(root)
    os.makedirs(_inside(root, "/proc"), exist_ok=True)
    mount("proc", _inside(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for folder, mode in (("/tmp", 0o1777), (spec["work"], 0o700)):
        os.makedirs(_inside(root, folder), exist_ok=True)
        os.chmod(_inside(root, folder), mode)
    uid, gid = spec.get("uid"), spec.get("gid")
    for source, target in spec.get("copy", ()):
        shutil.copyfile(source, _inside(root, target))
    if uid is not None:
        for folder, _, files in os.walk(_inside(root, spec["work"])):
            for name in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(name, uid, gid)
    if spec.get("loopback", True):
        loopback_up()
    pivot(root)
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    else:
        lock()
    # A change of user clears the death signal unshare --kill-child set: set it again.
    _call(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "parent-death signal")
    _call(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.chdir(spec["work"])


def limits(spec: dict) -> None:
    """Resource limits (``cpu`` seconds, ``as`` and ``fsize`` bytes, ``nproc``, ``core``), then SIGKILL
    when the thread that started this process ends."""
    import resource
    for name, value in spec.items():
        kind = getattr(resource, f"RLIMIT_{name.upper()}", None)
        if kind is None or value is None:
            continue
        soft = int(value)
        hard = soft + 5 if name == "cpu" else soft      # SIGXCPU at the soft limit, SIGKILL 5 s later
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError) as exc:     # macOS, for one, refuses an address-space limit
            print(f"jail: limit {name} not applied: {exc}", file=sys.stderr, flush=True)
    if sys.platform.startswith("linux"):
        _call(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "parent-death signal")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[1] not in ("limits", "enter") or "--" not in argv:
        print("usage: jail.py {limits LIMITS.json | enter SPEC.json} -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        spec = json.load(f)
    command = argv[argv.index("--") + 1:]
    try:
        limits(spec) if argv[1] == "limits" else build(spec)
    except (OSError, JailError) as exc:
        print(f"jail: {exc}", file=sys.stderr, flush=True)
        return FAILED
    try:
        os.execve(command[0], command, os.environ)
    except OSError as exc:
        print(f"jail: cannot run {command[0]}: {exc}", file=sys.stderr, flush=True)
    return FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
