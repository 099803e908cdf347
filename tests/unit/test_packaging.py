"""The library's metadata states compatible ranges; exact versions live in constraints.txt only."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENTS = [*PROJECT["dependencies"], *(r for extra in PROJECT["optional-dependencies"].values() for r in extra)]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_no_dependency_is_pinned_to_one_version():
    pinned = [r for r in REQUIREMENTS if "==" in r]
    assert not pinned, f"pin these in constraints.txt and give pyproject.toml a range: {pinned}"


def test_every_dependency_has_its_exact_version_in_the_constraints():
    constraints = {_name(line): line for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if "==" in line and not line.startswith("#")}
    missing = sorted({_name(r) for r in REQUIREMENTS} - set(constraints) - {"thefarm"})
    assert not missing, f"constraints.txt has no pin for {missing}"


def test_farmkit_imports_without_fcntl_and_says_what_the_embedded_redis_needs():
    # Windows has no fcntl: the library still imports; only the embedded Redis says it cannot run.
    import subprocess
    import sys

    code = ("import sys; sys.modules['fcntl'] = None\nimport farmkit as fk\nfrom farmkit import embedded_redis\n"
            "from farmkit.errors import ConfigError\ntry:\n    embedded_redis._fcntl()\nexcept ConfigError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "runs on Linux and macOS only" in out.stdout and "FARM_REDIS=off" in out.stdout
