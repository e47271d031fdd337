"""Runs killed at random moments resume bit-identical to an uninterrupted run (issue 19, acceptance 1).

A tiny digits recipe (train, prune, finetune, share, encode) runs as ``torchslim run`` in a
child process that is sent SIGKILL at a seeded random moment; ``torchslim run --resume`` (or a
plain run when the kill came before the run directory existed) then finishes it, and the result
must equal the reference run: every stage's checkpoint (so the final state dict), the ``.tslim``
bytes and every figure of ``report.json`` except timings.

Each child is forked from a "zygote" process that has imported torch and torchslim once (a
fresh interpreter would spend seconds importing before the run starts); the child runs the CLI
entry point with its own argv, as ``python -m torchslim.cli`` would. The zygote never runs a
torch operator, so it forks single-threaded. Two zygotes work side by side;
``10 * TORCHSLIM_FUZZ_SCALE`` trials in all.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forks a warmed-up interpreter (Linux only)")

RECIPE = """
name: kill-resume
seed: 4
model: {name: zoo:mlp, args: {in_features: 64, hidden: [32]}}
data: digits
measure: {latency_batch: 8, latency_runs: 1, threads: 1, eval_batch: 512}
stages:
  - {type: train, epochs: 2, lr: 0.1, batch_size: 64}
  - {type: prune, sparsity: 0.6, keep_first_last: false}
  - {type: finetune, epochs: 1, lr: 0.01, batch_size: 64}
  - {type: share, bits: 3}
  - {type: encode, file: tiny.tslim}
"""
SEED = 19
TIMING_KEYS = {"latency_ms", "seconds", "wall_s", "date"}

ZYGOTE = r"""
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
import torch._inductor  # what the profiler of the first measurement imports
import torchslim.cli
from torchslim.data import load_data
from torchslim.measure import Measurement
from torchslim.report import LayerReport, Report, StageRecord

load_data("digits")
m = Measurement(0.9, 10, 5, 8, 40, 22, 0.1, 1, 1, 1, 100)
Report("warm-up", layers=[LayerReport("fc", "Linear", (2, 5), 10, 5, "pruned", {"sparsity_before": 0.0})],
       before=m, after=m, stages=[StageRecord("a", "a", 1.0, m), StageRecord("b", "b", 1.0, m)]).to_html()
if len(os.listdir("/proc/self/task")) != 1:
    sys.exit("the zygote started a thread: forking it would not be safe")
print(json.dumps({"ready": True}), flush=True)


def child(argv, log):
    code = 70
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0), os.dup2(fd, 1), os.dup2(fd, 2)
        sys.argv = ["torchslim", *argv]
        try:
            torchslim.cli.entry()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os._exit(code)


for line in sys.stdin:
    req = json.loads(line)
    t_fork, start = time.time(), time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(req["argv"], req["log"])
    deadline = start + (req["kill_after"] if req["kill_after"] is not None else req["timeout"])
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)  # our own child, not yet reaped: its pid cannot have been reused
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"code": code, "t_fork": t_fork, "seconds": time.monotonic() - start}), flush=True)
"""


class Zygote:
    """A warmed-up interpreter that forks one ``torchslim`` CLI run per request and can SIGKILL it."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.log = workdir / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                cwd=workdir, env=env, text=True,
            )

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died: {self.log.read_text()[-3000:]}")
        return json.loads(line)

    def ready(self) -> None:
        assert self._read() == {"ready": True}

    def run(self, argv: list[str], log: Path, kill_after: float | None = None, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill_after": kill_after, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def figures(value: Any) -> Any:
    """``value`` without its timings (wall times, latencies, dates)."""
    if isinstance(value, dict):
        return {k: figures(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [figures(v) for v in value]
    return value


def trial(zygote: Zygote, recipe: Path, out: Path, delay: float) -> dict[str, Any]:
    """Kill a run after ``delay`` seconds, then finish it; what happened."""
    log = out.with_suffix(".log")
    killed = zygote.run(["run", str(recipe), "--output", str(out)], log, kill_after=delay)
    state = json.loads((out / "state.json").read_text()) if (out / "state.json").is_file() else None
    stopped = "no directory" if not out.exists() else "no state" if state is None else f"{len(state['completed'])} stage(s), {state['status']}"
    argv = ["run", str(recipe), "--output", str(out)] + (["--resume"] if out.exists() else [])
    finished = zygote.run(argv, log)
    return {
        "delay": delay, "kill": killed["code"], "stopped": stopped, "finish": finished["code"], "log": log,
        "seconds": killed["seconds"] + finished["seconds"],
    }


def test_runs_killed_at_random_moments_resume_bit_identical(tmp_path: Path, fuzz_scale: int) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    n = 10 * fuzz_scale
    lanes = [Zygote(tmp_path, f"zygote-{i}") for i in range(2)]
    results: list[dict[str, Any] | BaseException | None] = [None] * n
    try:
        for z in lanes:
            z.ready()
        ref = tmp_path / "ref"
        done = lanes[0].run(["run", str(recipe), "--output", str(ref)], tmp_path / "ref.log")
        assert done["code"] == 0, (tmp_path / "ref.log").read_text()[-3000:]
        # kill anywhere from start-up to just after the last checkpoint (then the report is being written)
        window = 1.15 * ((ref / "stage-05-encode.json").stat().st_mtime - done["t_fork"])
        rng = random.Random(SEED)
        delays = [rng.uniform(0.0, window) for _ in range(n)]

        def lane(k: int) -> None:
            for i in range(k, n, len(lanes)):
                try:
                    results[i] = trial(lanes[k], recipe, tmp_path / f"trial-{i:03d}", delays[i])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    results[i] = exc

        threads = [threading.Thread(target=lane, args=(k,)) for k in range(len(lanes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60 + 30 * n)
    finally:
        for z in lanes:
            z.close()

    ref_state = json.loads((ref / "state.json").read_text())
    ref_report = figures(json.loads((ref / "report.json").read_text()))
    ref_model = load_file(str(ref / "stage-05-encode.safetensors"))
    for i, res in enumerate(results):
        assert isinstance(res, dict), f"trial {i}: {res!r}"
        info = f"trial {i}: killed after {res['delay']:.3f}s ({res['stopped']}); log: {res['log'].read_text()[-3000:]}"
        assert res["finish"] == 0, info
        out = tmp_path / f"trial-{i:03d}"
        state = json.loads((out / "state.json").read_text())
        assert state["status"] == "complete", info
        assert [e["sha256"] for e in state["completed"]] == [e["sha256"] for e in ref_state["completed"]], info
        model = load_file(str(out / "stage-05-encode.safetensors"))
        assert model.keys() == ref_model.keys() and all(torch.equal(model[k], ref_model[k]) for k in model), info
        assert (out / "tiny.tslim").read_bytes() == (ref / "tiny.tslim").read_bytes(), info
        assert figures(json.loads((out / "report.json").read_text())) == ref_report, info
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], info
    interrupted = [r for r in results if isinstance(r, dict) and r["kill"] == -9 and "complete" not in r["stopped"]]
    assert len(interrupted) >= n // 2, [(r["delay"], r["stopped"]) for r in results if isinstance(r, dict)]
