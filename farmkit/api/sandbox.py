"""Where the REST API checks an uploaded notebook: never in its own process. An upload is hostile code;
its check (what ``farm promote`` does: run it, run its promoted copy, compare) runs in a sandbox.

:class:`LocalSandbox` runs ``python -m farmkit.api.sandbox check NOTEBOOK --name NAME`` as a child
process with an environment built from an allow-list (no credential of any kind), a scratch home,
limits on CPU seconds, address space and file size, and a wall-clock limit that kills it and
everything it started. On Linux with ``unshare`` (util-linux) it also gets a jail (:mod:`farmkit.api.jail`):
a read-only root of its own without the API's home, agents or credential files, its own processes
(``/proc`` shows no other), no network, and an unprivileged user (or locked mounts in a user
namespace). What could not be applied is said in :attr:`LocalSandbox.isolation`. On GKE the sandbox is
a Job (:class:`farmkit.ops.orchestrators.KubernetesSandbox`).

The worker prints its outcome as its last line (``farm-sandbox-result {"passed": ..., "files": ...}``):
the promoted agent's files travel in it, so the API never reads a path the notebook could have
pointed elsewhere.

    sandbox = LocalSandbox(Limits(seconds=600))
    run = sandbox.check("3f2a...", notebook_bytes, name="sma-cross", allow_overfit=False)
    run.result["passed"], run.isolation["network"]
"""

from __future__ import annotations

import argparse
import base64
import collections
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from farmkit.redact import Redactor, secret_name
from farmkit.ops.orchestrators import SANDBOX_RESULT, SandboxRun, sandbox_output

JAIL = Path(__file__).with_name("jail.py")
WORK = "/sandbox"               # the jail's home and work folder
NOBODY = 65534
FILES = ("agent.ipynb", "agent.yaml", "requirements.lock")     # what a passed check sends back
MAX_NOTEBOOK = 64 << 20
_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "localtime", "timezone", "ld.so.cache",
        "ld.so.conf", "ld.so.conf.d", "os-release", "mime.types", "alternatives", "fonts")
_CREDENTIALS = (".ssh", ".gnupg", ".config/gcloud", ".kube", ".aws", ".azure", ".docker", ".netrc",
                ".git-credentials", ".config/gh", ".pypirc", ".jupyter", ".ipython")
_MARK = "THEFARM_SANDBOX"       # marks the processes of a check that runs without a jail of its own


def sandbox_environment(environ: Mapping[str, str], home: str | Path, *, keep=()) -> dict[str, str]:
    """The environment of a sandboxed check: the allow-listed variables of ``environ`` (``PATH``,
    ``LANG``, ...) and ``keep``, none named like a credential, and a fresh ``HOME``/``FARM_HOME``/``TMPDIR``
    under ``home``; the leaderboard is off, so no Redis address or password is needed."""
    env = {k: environ[k] for k in (*_KEEP, *keep) if k in environ and not secret_name(k)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH") or os.defpath])
    home = str(home)
    # (Two malloc arenas: with one per thread, an address-space limit would count reservations, not use.)
    # A check's notebook is read, not shared: no Chromium for its figures' images (farmkit.figures).
    env.update(HOME=home, TMPDIR=os.path.join(home, "tmp"), FARM_HOME=os.path.join(home, "farm"),
               FARM_REDIS="off", FARM_PROGRESS="off", FARM_FIGURE_IMAGES="off", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               MPLBACKEND="Agg", MALLOC_ARENA_MAX="2")
    return env


@dataclass(frozen=True)
class Limits:
    """How much a check may take: ``seconds`` of wall clock (then it is killed, with everything it
    started), CPU seconds per process (default: as many), address space and file size per process,
    processes (under the sandbox's own user) and the jail's disk (a tmpfs)."""

    seconds: float = 900.0
    cpu_seconds: int | None = None
    memory_bytes: int = 6 << 30
    file_bytes: int = 1 << 30
    processes: int = 2048       # tasks: threads count (a kernel's thread pools are per core)
    disk: str = "1g"


class LocalSandbox:
    """Checks of uploaded notebooks as sandboxed child processes of this machine (see the module)."""

    kind = "local"

    def __init__(self, limits: Limits | None = None, *, python: str = sys.executable,
                 environ: Mapping[str, str] | None = None, keep=(), protect=(), scratch: str | Path | None = None,
                 jail: bool = True):
        self.limits, self.use_jail = limits or Limits(), jail
        self.python, self.keep = python, tuple(keep)
        self.environ = dict(os.environ if environ is None else environ)
        self.protect = [str(Path(p).expanduser().absolute()) for p in protect]
        self.scratch = Path(scratch or tempfile.gettempdir())
        self._probe_lock = threading.Lock()
        self._jail: dict | None = None
        self._why: dict[str, str] | None = None
        self._live: set[subprocess.Popen] = set()

    @classmethod
    def from_settings(cls, api, settings, agents=None, **kwargs) -> "LocalSandbox":
        """The limits of ``ApiSettings`` (``FARM_API_SANDBOX_*``); the API's ``FARM_HOME`` and agents folder
        are kept out of its sight."""
        root = getattr(agents, "root", None)
        protect = [settings.home, *([root] if root is not None else []), *kwargs.pop("protect", ())]
        limits = Limits(seconds=api.sandbox_timeout, memory_bytes=api.sandbox_memory << 20)
        return cls(limits, protect=protect, **kwargs)

    # --- isolation -----------------------------------------------------------------------------------

    @property
    def isolation(self) -> dict:
        """What this sandbox applies, probed once: ``network``, ``filesystem``, ``processes`` (booleans),
        ``user``, the ``limits``, and ``not_applied`` (what, and why not)."""
        self._probed()
        jailed = self._jail is not None
        if not jailed:
            user = "the API's own"
        elif self._jail.get("uid") is not None:
            user = f"nobody ({self._jail['uid']})"
        else:
            user = "the API's own, in a user namespace of its own"
        limits = self.limits
        return {"kind": self.kind, "environment": "allow-list", "network": jailed, "filesystem": jailed,
                "processes": jailed, "user": user,
                "limits": {"seconds": limits.seconds, "cpu_seconds": limits.cpu_seconds or int(limits.seconds),
                           "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes},
                "not_applied": dict(self._why)}

    def _probed(self) -> None:
        with self._probe_lock:
            if self._why is None:
                self._jail, self._why = self._probe()

    def _probe(self) -> tuple[dict | None, dict[str, str]]:
        if not self.use_jail:
            why = "switched off (LocalSandbox(jail=False))"
        elif not sys.platform.startswith("linux"):
            why = f"{sys.platform} has no namespaces to take them away"
        elif shutil.which("unshare") is None:
            why = "unshare (util-linux) is not installed"
        else:
            attempts = [{"uid": NOBODY, "userns": False}] if os.geteuid() == 0 else []
            attempts.append({"uid": None, "userns": True})
            why = ""
            try:
                binds = self._binds()
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                attempts, why = [], f"cannot tell what this Python needs ({type(exc).__name__}: {exc})"
            for jail in attempts:
                jail["binds"] = binds
                run = self._run("probe", [self.python, "-I", "-S", "-c", "print('jail ok')"], jail, seconds=60)
                if run.exit_code == 0 and "jail ok" in run.output:
                    return jail, {}
                why = (run.output.strip().splitlines() or [f"exit code {run.exit_code}"])[-1][:300]
            why = f"the jail could not start here: {why}"
        return None, {"network": why, "filesystem": why, "processes": why}

    def _binds(self) -> list[str]:
        """What the jail shows, read-only: the system, a few files of /etc, this Python and its packages."""
        code = ("import importlib.util, json, os, sys\n"
                "spec = importlib.util.find_spec('farmkit')\n"
                "package = list(getattr(spec, 'submodule_search_locations', None) or [])\n"
                "print(json.dumps([*sys.path, *package, sys.prefix, sys.base_prefix, sys.exec_prefix,"
                " sys.base_exec_prefix, os.path.dirname(sys.executable)]))")
        env = sandbox_environment(self.environ, self.scratch)
        out = subprocess.run([self.python, "-c", code], capture_output=True, text=True, env=env, cwd="/",
                             timeout=120, check=True)
        found = []
        for path in json.loads(out.stdout.strip().splitlines()[-1]):
            if path and os.path.isabs(path) and os.path.exists(path):
                found += [path, os.path.realpath(path)]
        kept: list[str] = []
        for path in [*_SYSTEM, *(f"/etc/{name}" for name in _ETC), *sorted(set(found), key=len)]:
            inside = any(path.startswith(k.rstrip("/") + "/") and not os.path.islink(k) for k in kept)
            if os.path.lexists(path) and path not in kept and not inside:
                kept.append(path)
        return kept

    def _hidden(self) -> list[str]:
        home = Path(self.environ.get("HOME") or os.path.expanduser("~"))
        named = [self.environ.get(k) for k in ("GOOGLE_APPLICATION_CREDENTIALS", "KUBECONFIG", "CLOUDSDK_CONFIG")]
        return [*self.protect, *(str(home / c) for c in _CREDENTIALS), "/var/run/secrets", "/run/secrets",
                *(str(Path(p).absolute()) for p in named if p)]

    # --- running -----------------------------------------------------------------------------------

    def check(self, check_id: str, notebook: bytes, *, name: str, allow_overfit: bool) -> SandboxRun:
        """Check ``notebook`` as ``farm promote NOTEBOOK --name NAME`` does, in the sandbox."""
        self._probed()      # first, outside the check's time limit
        worker = [self.python, "-m", "farmkit.api.sandbox", "check", "", "--name", name]
        if allow_overfit:
            worker.append("--allow-overfit")
        return self._run(check_id, worker, self._jail, notebook=notebook, name=name)

    def _run(self, label: str, worker: list[str], jail: dict | None, *, notebook: bytes | None = None,
             name: str = "notebook", seconds: float | None = None) -> SandboxRun:
        limits = self.limits
        seconds = seconds or limits.seconds
        scratch = Path(tempfile.mkdtemp(prefix="farm-check-", dir=self.scratch))
        try:
            home = WORK if jail is not None else str(scratch / "home")
            source = scratch / f"{name}.ipynb"
            if notebook is not None:
                source.write_bytes(notebook)
                worker[4] = f"{WORK}/{name}.ipynb" if jail is not None else str(source)
            env = sandbox_environment(self.environ, home, keep=self.keep)
            caps = {"cpu": limits.cpu_seconds or int(seconds), "as": limits.memory_bytes, "fsize": limits.file_bytes,
                    "core": 0, "nproc": limits.processes if jail is not None and jail.get("uid") is not None else None}
            (scratch / "limits.json").write_text(json.dumps(caps))
            command = [self.python, "-I", "-S", str(JAIL), "limits", str(scratch / "limits.json"), "--"]
            if jail is None:
                env[_MARK] = label
            else:
                spec = {"root": str(scratch / "root"), "size": limits.disk, "binds": jail["binds"],
                        "hide": self._hidden(), "work": WORK, "uid": jail.get("uid"), "gid": jail.get("uid"),
                        "copy": [[str(source), f"{WORK}/{name}.ipynb"]] if notebook is not None else []}
                (scratch / "root").mkdir()
                (scratch / "jail.json").write_text(json.dumps(spec))
                command += [shutil.which("unshare"), *(["--user", "--map-root-user"] if jail["userns"] else []),
                            "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
                            self.python, "-I", "-S", str(JAIL), "enter", str(scratch / "jail.json"), "--"]
            return self._wait(command + worker, env, scratch, seconds, jailed=jail is not None, label=label)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _wait(self, command, env, scratch: Path, seconds: float, *, jailed: bool, label: str) -> SandboxRun:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=env, cwd=scratch, start_new_session=True)
        self._live.add(child)
        output = _Output(child.stdout)
        reader = threading.Thread(target=output.read, name=f"sandbox-output-{label[:12]}", daemon=True)
        reader.start()
        timed_out = False
        try:
            child.wait(seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Whatever the notebook started ends with it: in the jail, killing its first process ends
            # the namespace's every process; without one, the whole tree and everything marked as its.
            _kill(child, jailed=jailed, mark=None if jailed else label)
            self._live.discard(child)
            reader.join(10)
        result, text = sandbox_output(output.text())
        return SandboxRun(result=result, exit_code=None if timed_out else child.returncode, timed_out=timed_out,
                          output=text, isolation=self.isolation if label != "probe" else {})

    def close(self) -> None:
        """Kill every check still running (the API is stopping)."""
        for child in list(self._live):
            _kill(child, jailed=self._jail is not None, mark=None)


class _Output:
    """A sandbox's output, read as it comes, kept bounded: its last result line and its last lines."""

    def __init__(self, stream, max_line: int = 64 << 20):
        self.stream, self.max_line = stream, max_line
        self.result: bytes | None = None
        self.tail: collections.deque[bytes] = collections.deque(maxlen=50)

    def read(self) -> None:
        pending, skipping = b"", False
        while True:
            chunk = os.read(self.stream.fileno(), 1 << 16)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not skipping:
                    self._keep(line)
                skipping = False
            if len(pending) > self.max_line:
                pending, skipping = b"", True
        self._keep(pending)
        self.stream.close()

    def _keep(self, line: bytes) -> None:
        if line.startswith(SANDBOX_RESULT.encode()):
            self.result = line
        elif line.strip():
            self.tail.append(line[:2000])

    def text(self) -> str:
        lines = [*self.tail, *([self.result] if self.result else [])]
        return b"\n".join(lines).decode("utf-8", errors="replace")


def _kill(child: subprocess.Popen, *, jailed: bool, mark: str | None) -> None:
    if os.name != "posix":
        child.kill()
        child.wait(30)
        return
    # (Only a child still running is walked: once reaped, its pid may be another process's.)
    pids = _stopped_tree(child.pid) if not jailed and child.poll() is None else []
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        pass
    if mark is not None:
        for pid in _marked(mark):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _parents() -> dict[int, int]:
    found = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            found[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _stopped_tree(root: int) -> list[int]:
    """``root`` and its descendants, each stopped (SIGSTOP) so that none forks while they are found."""
    _signal(root, signal.SIGSTOP)
    seen = {root}
    for _ in range(20):
        parents = _parents()
        new = {pid for pid, parent in parents.items() if parent in seen and pid not in seen}
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        seen |= new
    return sorted(seen)


def _marked(mark: str) -> list[int]:
    needle = f"{_MARK}={mark}".encode()
    found = []
    for pid in _parents():
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def open_sandbox(api, settings, agents=None):
    """The sandbox ``FARM_API_SANDBOX`` names: ``local`` or ``kubernetes[://NAMESPACE]`` (a Job per check)."""
    if api.sandbox == "local":
        return LocalSandbox.from_settings(api, settings, agents)
    from farmkit.ops.orchestrators import SANDBOX_NAMESPACE, KubernetesSandbox
    namespace = api.sandbox.removeprefix("kubernetes").removeprefix("://") or SANDBOX_NAMESPACE
    return KubernetesSandbox(namespace, image=api.runner_image, timeout=api.sandbox_timeout,
                             memory_mib=api.sandbox_memory)


# --- the worker: what runs inside the sandbox ------------------------------------------------------------

def _one_line(text: str, work: str) -> str:
    """A check's error as one line: no cell source (the user has it), no path of the sandbox's own."""
    text = text.split("--- cell source ---", 1)[0]
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not (line.startswith("run ") and "recorded as failed" in line)]
    return " ".join(lines).replace(work.rstrip("/") + "/", "")[:1000]


def _read_notebook(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    unpacked = zlib.decompressobj(wbits=31).decompress(data, MAX_NOTEBOOK + 1)
    if len(unpacked) > MAX_NOTEBOOK:
        raise ValueError(f"the notebook is larger than {MAX_NOTEBOOK >> 20} MiB")
    return unpacked


def run_check(notebook: Path, name: str, *, allow_overfit: bool = False) -> dict:
    """Promote ``notebook`` as ``name`` in this process's ``FARM_HOME``; the outcome to print."""
    from farmkit.ops.promote import PromoteError, promote
    from farmkit.settings import Settings

    redact = Redactor.from_env()
    settings = Settings.from_env()
    for folder in (os.environ.get("HOME"), os.environ.get("TMPDIR"), settings.home):
        if folder:
            os.makedirs(folder, exist_ok=True)
    work = settings.home / "upload"
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = work / f"{name}.ipynb"
        source.write_bytes(_read_notebook(notebook))
        agent = promote(source, name, agents_dir=settings.home / "agents", settings=settings,
                        allow_overfit=allow_overfit)
    except PromoteError as exc:
        return {"passed": False, "error": redact.text(_one_line(str(exc), str(work)))}
    except Exception as exc:  # noqa: BLE001 - whatever the notebook made go wrong is its check's outcome
        return {"passed": False, "error": redact.text(_one_line(f"{type(exc).__name__}: {exc}", str(work)))}
    files = {f: base64.b64encode(gzip.compress((agent.path / f).read_bytes(), mtime=0)).decode()
             for f in FILES if (agent.path / f).is_file()}
    return {"passed": True, "files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farmkit.api.sandbox",
                                     description="Check an uploaded notebook as `farm promote` does; meant to run "
                                     "in the API's sandbox. The last line printed is the outcome, as JSON.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="promote NOTEBOOK (.ipynb, or .ipynb.gz) as NAME")
    check.add_argument("notebook", type=Path)
    check.add_argument("--name", required=True)
    check.add_argument("--allow-overfit", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    outcome = run_check(args.notebook, args.name, allow_overfit=args.allow_overfit)
    outcome["seconds"] = round(time.time() - started, 3)
    print(SANDBOX_RESULT + json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
