"""Peak memory of one inference forward, and the process's resident memory (now, peak, during a block).

How it is measured (CPU): one ``torch.no_grad()`` eval-mode forward of the batch
runs under ``torch.profiler.profile(activities=[ProfilerActivity.CPU],
profile_memory=True)``. The profiler records every allocator call as an
``Allocation`` event (positive size for an allocation, negative for a free);
ordered by time, their running sum is the activation memory live at each instant
and its maximum is the activation peak. The result adds what is live for the
whole forward: parameter, buffer and input bytes.

The events are read from the profiler's event tree
(``prof.profiler.kineto_results.experimental_event_tree()``). Should that private
API be missing, the public ``prof.events()`` are used instead (each op's
``self_cpu_memory_usage`` and the ``[memory]`` free events, ordered by start
time). Should profiling itself be impossible (e.g. another profiler is already
running), a forward-hook estimate is used: the largest ``input + output`` bytes
of any leaf module. On CUDA, ``torch.cuda.max_memory_allocated`` is used.

The process: :func:`rss_mb` (resident now), :func:`peak_rss_mb` (the peak since the process
started) and :class:`PeakRss` (the peak while a ``with`` block runs, sampled by a thread), which
the language-model methods report.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from torchslim.measure.macs import ExampleInput, call_model, eval_mode, input_bytes, input_device, repeat_sample


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop log lines (written to fd 2 by Kineto)."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to silence
        yield
        return
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def model_state_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (shared tensors counted once).

    Example:
        >>> model_state_bytes(nn.BatchNorm1d(10))  # 2x10 params + 2x10 stats + 1 int64 counter
        168
    """
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _peak_from_event_tree(prof: Any) -> int | None:
    try:
        from torch._C._profiler import _EventType

        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (ImportError, AttributeError, RuntimeError):
        return None
    events: list[tuple[int, int, int]] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            extra = node.extra_fields
            if extra.device.type == "cpu":
                events.append((node.start_time_ns, len(events), int(extra.alloc_size)))
        stack.extend(node.children)
    return _running_peak(events)


def _peak_from_events(prof: Any) -> int:
    events: list[tuple[float, int, int]] = []
    for i, ev in enumerate(prof.events()):
        size = int(getattr(ev, "self_cpu_memory_usage", 0) or 0)
        if size:
            events.append((ev.time_range.start, i, size))
    return _running_peak(events)


def _running_peak(events: list[Any]) -> int:
    events.sort()
    live = peak = 0
    for _, _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def _hook_estimate(model: nn.Module, batch: Any) -> int:
    """Largest ``input + output`` bytes of any leaf module during one forward."""
    peak = 0

    def nbytes(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, (tuple, list)):
            return sum(nbytes(o) for o in obj)
        if isinstance(obj, dict):
            return sum(nbytes(o) for o in obj.values())
        return 0

    def hook(_module: nn.Module, args: Any, output: Any) -> None:
        nonlocal peak
        peak = max(peak, nbytes(args) + nbytes(output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        out = call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return max(peak, nbytes(out))


def peak_inference_memory(model: nn.Module, example_input: ExampleInput, batch_size: int) -> int:
    """Peak bytes live during one inference forward of ``batch_size`` samples.

    ``parameters + buffers + input batch`` bytes plus the peak of activation
    allocations recorded by the CPU memory profiler (see the module docstring for
    the method and its fallbacks). The batch repeats the first sample of
    ``example_input``; the model's training mode is restored.

    Args:
        model: The model.
        example_input: An example batch; only its first sample is used.
        batch_size: Samples in the measured forward.

    Returns:
        Peak bytes.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
        >>> peak_inference_memory(mlp, torch.randn(1, 784), 64) > peak_inference_memory(mlp, torch.randn(1, 784), 1)
        True
    """
    batch = repeat_sample(example_input, batch_size)
    static = model_state_bytes(model) + input_bytes(batch)
    device = input_device(batch)
    with eval_mode(model), torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            out = call_model(model, batch)
            torch.cuda.synchronize(device)
            del out
            return static + max(0, torch.cuda.max_memory_allocated(device) - base)
        try:
            with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                out = call_model(model, batch)
                del out
        except RuntimeError:
            return static + _hook_estimate(model, batch)
    peak = _peak_from_event_tree(prof)
    if peak is None:
        peak = _peak_from_events(prof)
    return static + peak


# ---------------------------------------------------------------------------- the process
def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (``resource.getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def rss_mb() -> float | None:
    """The process's resident memory now, in MiB (``/proc/self/statm``); ``None`` where there is no ``/proc``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class PeakRss:
    """The highest resident memory seen while the ``with`` block runs (MiB), sampled every ``interval`` seconds.

    Unlike :func:`peak_rss_mb` (the process's peak since it started: loading a model, an earlier
    copy), this is the peak *during* the block: what the method itself needed on top of what was
    already resident. Where ``/proc`` is missing, :attr:`peak_mb` is the process's peak instead
    and :attr:`sampled` is ``False``.

    Example:
        >>> with PeakRss() as tracked:
        ...     block = torch.ones(16 * 2**20)  # 64 MiB, written
        >>> tracked.sampled, tracked.peak_mb - tracked.start_mb >= 60
        (True, True)
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0  # set on entering
        self.sampled = rss_mb() is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_mb()
            if now is not None and now > self.peak_mb:
                self.peak_mb = now

    def __enter__(self) -> PeakRss:
        self.start_mb = self.peak_mb = rss_mb() or 0.0
        if self.sampled:
            self._thread = threading.Thread(target=self._sample, name="torchslim-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = rss_mb()
        self.peak_mb = max(self.peak_mb, now or 0.0) if self.sampled else peak_rss_mb()
