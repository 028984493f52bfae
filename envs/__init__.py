"""Gymnasium environments of worldsim, registered with string entry points so importing stays cheap.

`BridgeSim-v0` is the MuJoCo ground truth; `BridgeWorld-v0` is the learned simulator. Both are
registered when `worldsim` is imported; without that import, gymnasium's module prefix does it:
`gym.make("worldsim:BridgeWorld-v0")` (gymnasium 1.x has no plugin entry points any more).
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

MAX_EPISODE_STEPS = 60  # 12 s at Bridge's 5 Hz


def register_envs() -> None:
    """Register every worldsim env id (idempotent)."""
    if "BridgeSim-v0" not in registry:
        register(
            id="BridgeSim-v0",
            entry_point="worldsim.envs.bridge_sim:BridgeSimEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
    if "BridgeWorld-v0" not in registry:
        register(
            id="BridgeWorld-v0",
            entry_point="worldsim.envs.bridge_world:BridgeWorldEnv",
            vector_entry_point="worldsim.envs.bridge_world:BridgeWorldVectorEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )


register_envs()
