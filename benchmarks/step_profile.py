"""Where a training step's time goes: device kernel time summed by kind, for the benchmarks.

:class:`StepProfile` is a ``TrainerCallback`` that profiles a few training steps (``torch.profiler``)
and writes a table of kernel time by kind (matrix multiplies, attention, compiled fused kernels,
optimizer, copies, other) per step, with the share of the steps' wall time the device was busy.
On a CPU run there are no device kernels; operators' own CPU time is summed instead, by the same kinds.
"""

from __future__ import annotations

import gzip
import re
import shutil
import time
from pathlib import Path

import torch

# first match wins; kernel names (cuBLAS, cuDNN, flash, Triton) and aten operator names
KINDS = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|flex|cudnn", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|splitk|aten::(mm|addmm|bmm|matmul|linear)\b", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
    ("compiled (Triton)", re.compile(r"triton", re.I)),
    ("copies", re.compile(r"memcpy|memset|copy|aten::(cat|index|gather|scatter|fill_|zero_)", re.I)),
)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def summarize(times: dict[str, float], steps: int) -> list[tuple[str, float, float]]:
    """``(kind, ms per step, share of busy time)`` rows, largest first, from per-name times in microseconds."""
    by_kind: dict[str, float] = {}
    for name, us in times.items():
        kind = kind_of(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + us
    busy = sum(by_kind.values()) or 1.0
    rows = [(k, us / steps / 1e3, us / busy) for k, us in by_kind.items()]
    return sorted(rows, key=lambda r: -r[1])


def kernel_times(prof, cuda: bool) -> dict[str, float]:
    """Microseconds per kernel name (device kernels on CUDA, operators' own CPU time otherwise).

    Annotated ranges on the device's timeline (``Optimizer.step#AdamW.step``, ``ProfilerStep#3``) span
    kernels that are counted themselves, so they are left out.
    """
    times: dict[str, float] = {}
    if cuda:
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
                times[e.name] = times.get(e.name, 0.0) + e.time_range.elapsed_us()
        return times
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0 and e.key.startswith("aten::"):
            times[e.key] = times.get(e.key, 0.0) + e.self_cpu_time_total
    return times


def write_table(path: Path, title: str, times: dict[str, float], steps: int, wall_us: float, cuda: bool) -> str:
    rows = summarize(times, steps)
    busy = sum(times.values())
    lines = [f"# {title}", "",
             f"{steps} steps, {wall_us / steps / 1e3:.1f} ms per step wall; "
             + (f"kernels {busy / steps / 1e3:.1f} ms per step ({busy / wall_us:.0%} of wall)" if cuda
                else f"operators' own CPU time {busy / steps / 1e3:.1f} ms per step"), "",
             "| kind | ms per step | share |", "|---|---|---|"]
    lines += [f"| {k} | {ms:.2f} | {share:.1%} |" for k, ms, share in rows]
    lines += ["", "| kernel | kind | ms per step |", "|---|---|---|"]
    for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:25]:
        lines.append(f"| {name[:110]} | {kind_of(name)} | {us / steps / 1e3:.3f} |")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def write_timeline(path: Path, prof) -> None:
    """The device kernels in the order they ran, one a line: start (us from the first), duration (us), the idle gap
    before it (us), kind and name; the gaps are where the device waited on the host."""
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    if not kernels:
        return
    origin, last_end, lines = kernels[0][0], kernels[0][0], ["start_us\tdur_us\tgap_us\tkind\tname"]
    for start, end, name in kernels:
        lines.append(f"{start - origin:.1f}\t{end - start:.1f}\t{max(0.0, start - last_end):.1f}\t{kind_of(name)}\t{name[:160]}")
        last_end = max(last_end, end)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def step_profile_callback(first: int, steps: int, path: Path, title: str, cuda: bool):
    """A TrainerCallback profiling steps ``first+1 .. first+steps`` and writing their table to ``path``."""
    from transformers import TrainerCallback

    class StepProfile(TrainerCallback):
        def __init__(self):
            self.prof = None
            self.started = 0.0
            self.text = ""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == first:
                if cuda:
                    torch.cuda.synchronize()
                activities = [torch.profiler.ProfilerActivity.CPU]
                if cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.started = time.perf_counter()
            elif self.prof is not None and state.global_step == first + steps:
                if cuda:
                    torch.cuda.synchronize()
                wall_us = (time.perf_counter() - self.started) * 1e6
                self.prof.__exit__(None, None, None)
                self.text = write_table(path, title, kernel_times(self.prof, cuda), steps, wall_us, cuda)
                if cuda:
                    write_timeline(path.with_name(path.stem + "_timeline.tsv"), self.prof)
                    trace = path.with_name(path.stem + "_trace.json")
                    self.prof.export_chrome_trace(str(trace))
                    with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
                        shutil.copyfileobj(raw, packed)
                    trace.unlink()
                self.prof = None
                control.should_training_stop = True
            return control

    return StepProfile()
