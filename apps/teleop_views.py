"""What the teleop page shows of a session besides its frames: the 3-D path plot and the status line."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from worldsim.apps.teleop_session import TeleopSession

OPEN_COLOUR, CLOSED_COLOUR = "#2ca02c", "#d62728"


def path_figure(path: np.ndarray) -> go.Figure:
    """Plotly 3-D line of the commanded end-effector path (N + 1, 7); marker colour = gripper state.

    Trace 0 is the path (one point per frame), trace 1 marks the current pose.
    """
    # Plain lists, not numpy: plotly 6 would ship arrays as base64 typed-array blobs, which the
    # page's figure data then holds undecoded (scripts and tests reading `gd.data` see no points).
    xyz = path[:, :3].tolist()
    x, y, z = ([p[i] for p in xyz] for i in range(3))
    closed = path[:, 6] >= 0.5
    colours = np.where(closed, CLOSED_COLOUR, OPEN_COLOUR).tolist()
    hover = [
        f"frame {i}<br>x {p[0]:.3f} y {p[1]:.3f} z {p[2]:.3f} m<br>gripper {'closed' if c else 'open'}"
        for i, (p, c) in enumerate(zip(path, closed))
    ]
    fig = go.Figure(
        [
            go.Scatter3d(
                x=x, y=y, z=z, mode="lines+markers", name="commanded path",
                line=dict(color="#7f7f7f", width=4), marker=dict(size=4, color=colours),
                text=hover, hoverinfo="text",
            ),
            go.Scatter3d(
                x=x[-1:], y=y[-1:], z=z[-1:], mode="markers", name="now",
                marker=dict(size=8, color=colours[-1:], symbol="diamond", line=dict(color="black", width=1)),
                hoverinfo="skip",
            ),
        ]
    )  # fmt: skip
    # A fixed minimum extent, so the first few centimetre steps don't fill the whole cube.
    centre = (path[:, :3].max(0) + path[:, :3].min(0)) / 2
    half = max(0.05, float((path[:, :3].max(0) - path[:, :3].min(0)).max()) / 2 + 0.01)
    axes = {
        f"{name}axis": dict(title=f"{name} (m)", range=[c - half, c + half]) for name, c in zip("xyz", centre)
    }
    fig.update_layout(
        scene=dict(**axes, aspectmode="cube"),
        title=dict(text="commanded end-effector path · green = open, red = closed", font=dict(size=13)),
        margin=dict(l=0, r=0, t=30, b=10),
        height=420,
        showlegend=False,
        uirevision="path",  # keep the visitor's camera angle across updates
    )
    return fig


def status_text(session: TeleopSession) -> str:
    """The line under the frame: frame counter, step latency, path length, gripper, start, PSNR."""
    parts = [f"**frame {session.num_steps}**"]
    if session.latencies_ms:
        last, mean = session.latencies_ms[-1], float(np.mean(session.latencies_ms))
        parts.append(f"step {last:.0f} ms (mean {mean:.0f} ms)")
    else:
        parts.append("step – ms")
    parts.append(f"path {session.num_steps + 1} points")
    parts.append(f"gripper {'open' if session.gripper_open else 'closed'}")
    parts.append(f"start: {session.start.label}")
    line = " · ".join(parts)
    if session.start.truth is not None:
        values = session.truth_psnr()
        if values:
            line += f"  \nPSNR vs ground truth: {values[-1]:.1f} dB now, {np.mean(values):.1f} dB mean over {len(values)} frames"
        elif session.num_steps and session.truth_frame() is None:
            line += "  \nground truth: off the recorded actions (replay the episode to compare)"
        else:
            line += "  \nground truth shown beside the prediction; PSNR after the first step"
    return line
