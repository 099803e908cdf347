"""`farm paper` as a process: SIGTERM (what `kill`, systemd and Kubernetes send) stops it as Ctrl-C does,
with FMEL flushed, the checkpoint saved, the run no longer running, and nothing of it left behind."""

import signal

import psutil

from tests.integration.test_killed_runs import ROOT, _gone, eventually, farm_command, processes, stored  # noqa: F401

AGENT = ROOT / "agents" / "sma-crossover"


def test_farm_paper_stops_cleanly_on_sigterm(farm_home, processes, tmp_path):
    proc = processes.start(farm_command("paper", str(AGENT), "--replay", "synthetic", "--speed", "3000"))
    eventually(lambda: " ET  bar " in processes.log() and stored(farm_home.home, "running"),
               "the paper run streams decisions", timeout=120, process=proc, log=processes.log)
    children = processes.children(proc)
    assert any("ipykernel" in " ".join(c.cmdline()) for c in children), children
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, processes.log()
    output = processes.log()
    assert "stopping: flushing FMEL and saving the checkpoint" in output
    assert "did not end cleanly" not in output
    _, alive = psutil.wait_procs(children, timeout=20)
    assert all(_gone(c) for c in alive), f"left running after `farm paper` ended: {alive}"
    (row,) = [r for r in stored(farm_home.home) if r["mode"] == "paper"]
    assert row["status"] != "running", row
