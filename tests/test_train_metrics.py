"""The profile window's device-idle report, on a hand-made trace whose gaps are known."""

from __future__ import annotations

from worldsim.train.metrics import device_idle_report


def _event(name: str, cat: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}


def test_device_idle_report_finds_the_gaps_and_what_the_host_was_doing():
    trace = {
        "traceEvents": [
            _event("gemm", "kernel", 0, 10),
            _event("norm", "kernel", 20, 10),
            _event("copy", "gpu_memcpy", 28, 7),  # overlaps the kernel before it: no gap at 30
            _event("adam", "kernel", 100, 10),
            _event("train: optimizer", "user_annotation", 12, 83),
            _event("aten::_foreach_lerp_", "cpu_op", 40, 50),
            _event("a step marker", "user_annotation", 0, 2),  # not a trainer phase
            {"ph": "i", "name": "instant", "ts": 50},  # not a complete event: ignored
        ]
    }
    report = device_idle_report(trace, min_gap_us=5)
    # gaps 10-20 and 35-100 of the window 0-110: 75 us idle
    assert "device idle: 0.1 of 0.1 ms (68.2%) in 2 gaps" in report
    phases = report.split("idle by trainer phase")[1].split("idle by the innermost")[0]
    assert "train: optimizer" in phases and "0.07 ms" in phases  # both gaps, 75 us
    innermost = report.split("innermost host range open at each gap's middle:")[1].split("longest gaps")[0]
    lines = [line.split() for line in innermost.strip().splitlines()]
    assert lines[0][0] == "aten::_foreach_lerp_" and lines[0][-2] == "1"  # the 65 us gap, middle at 67.5
    assert lines[1][:2] == ["train:", "optimizer"]  # the 10 us gap, middle at 15: only the phase is open
    longest = report.split("longest gaps:")[1].strip().splitlines()
    assert longest[0].split()[0] == "0.07" and "aten::_foreach_lerp_" in longest[0]


def test_device_idle_report_is_empty_without_device_events():
    trace = {"traceEvents": [_event("aten::mm", "cpu_op", 0, 5)]}
    assert device_idle_report(trace) == ""
    assert device_idle_report({}) == ""
