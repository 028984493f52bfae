"""worldsim: a learned robot simulator — an action-conditioned video world model stepped like a gym env."""

from __future__ import annotations

__version__ = "0.1.0"

try:  # registering the envs needs only gymnasium; the model library itself never imports it
    import worldsim.envs  # noqa: F401
except ImportError:  # pragma: no cover - gymnasium is a hard dependency, but keep `import worldsim` cheap
    pass
