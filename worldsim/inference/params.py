"""`inference_params.json` for `worldsim-infer`: Cosmos-Predict2.5's action-conditioned schema, read unchanged.

Reference: Cosmos-Predict2.5 `cosmos_predict2/action_conditioned_config.py`
(`ActionConditionedInferenceArguments`) and `cosmos_predict2/action_conditioned.py` (`inference`).
How each key maps onto worldsim:

    name                    output subfolder OUT_DIR/<name>/ (default: the params file's stem)
    input_root              Bridge dataset root; video paths inside the JSONs are relative to it
    input_json_sub_folder   folder of annotation JSONs under input_root, e.g. "annotation/test"
    start, end              the slice [start:end) of those JSONs, sorted naturally ("2" < "10");
                            Cosmos slices an unsorted glob, so its selection depends on the filesystem
    save_root               output root when -o is not given
    guidance                Cosmos's CFG is v_c + g (v_c - v_u); our rollout's action guidance is
                            v_u + s (v_c - v_u), so s = 1 + g and Cosmos's 0 (the Bridge setting) is off
    resolution              "H,W" or "none"; the model runs at its own resolution and the outputs are
                            written at it (a warning says so when "H,W" differs): upsampling a prediction
                            would only blur it, and PSNR is measured where the model works
    camera_id               which entry of the annotation's `videos` list is the ground truth
    fps_downsample_ratio    keep every r-th frame and state before computing actions
    gripper_scale           multiplies the gripper column of the actions
    gripper_key, state_key  JSON keys of the gripper closure (1 = closed) and the (T, 7) state
    reverse                 declared by Cosmos but never applied by its inference: accepted, ignored
    single_chunk            roll out only the first `chunk_size` (12) actions
    start_frame_idx         frame (in the downsampled timeline) the rollout starts from
    save_fps                frame rate of the written mp4s
    num_latent_conditional_frames  must be 1: our tokenizer has no temporal compression, so one
                            latent frame is one image, and the rollout starts from one frame
    action_scaler           pose columns * action_scaler (a warning when it differs from the model's)
    use_quat                true -> error: the model's action is 6-D Euler pose + gripper
    action_load_fn          Cosmos's default loaders only (worldsim computes the same actions);
                            anything else -> error, because importing code named in a JSON is unsafe
    seed                    rollout noise seed; every episode starts from it, so an episode's video
                            does not depend on which others start/end select
    chunk_size              Cosmos's chunk length (12). Our rollout does not restart per chunk: chunk
                            k+1 continues from chunk k's KV cache, so only `single_chunk` uses it
    prompt, negative_prompt, use_text, num_steps   accepted, ignored (text conditioning; Cosmos's
                            sampler steps do not transfer to ours — use denoise_steps)

worldsim's own keys: `denoise_steps`, `num_context_frames` (rollout overrides), and instead of an
episode folder `image` (a start image) + `actions` (N x 7 env actions: Bridge JSON convention,
unscaled, gripper 1 = open). Relative paths are looked up against the current directory (as Cosmos
does for input_root), then against the params file's folder. Unknown keys give a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COSMOS_DEFAULT_ACTION_LOAD_FNS = (
    "cosmos_predict2.action_conditioned.load_default_action_fn",
    "cosmos_predict2._src.predict2.action.datasets.dataset_local.load_action",
)
IGNORED_COSMOS_KEYS = ("prompt", "negative_prompt", "use_text", "num_steps")


class ParamsError(ValueError):
    """An inference params file is unreadable or invalid; the message names the file and the key."""


class ParamsWarning(UserWarning):
    """A params key that is accepted but ignored, or a value worldsim interprets differently."""


@dataclass(frozen=True)
class InferenceParams:
    """One `inference_params.json`, validated; see the module docstring for each key's meaning."""

    name: str = "inference"
    input_root: Path | None = None  # Bridge dataset root (or None with image + actions)
    input_json_sub_folder: str = ""  # annotation folder under input_root
    save_root: Path = Path("results/action2world")  # output root when -o is not given
    guidance: float = 0.0  # Cosmos CFG scale; our action guidance is 1 + guidance
    resolution: str = "none"  # "H,W" or "none" (the model's)
    camera_id: int = 0  # index into the annotation's `videos`
    start: int = 0  # first annotation (index into the sorted list)
    end: int = 100  # one past the last annotation
    fps_downsample_ratio: int = 1  # keep every r-th frame/state
    gripper_scale: float = 1.0  # gripper column multiplier
    gripper_key: str = "continuous_gripper_state"  # JSON key of the gripper closure (1 = closed)
    state_key: str = "state"  # JSON key of the (T, 7) end-effector state
    reverse: bool = False  # accepted, ignored (as in Cosmos)
    single_chunk: bool = False  # only the first chunk_size actions
    start_frame_idx: int = 0  # first frame of the rollout, after downsampling
    save_fps: float = 20.0  # frames per second of the written videos
    num_latent_conditional_frames: int = 1  # must be 1
    action_scaler: float = 20.0  # pose scale (Cosmos: 20)
    use_quat: bool = False  # must be false
    action_load_fn: str = COSMOS_DEFAULT_ACTION_LOAD_FNS[0]  # must be a Cosmos default
    seed: int = 0  # rollout noise seed, per episode
    chunk_size: int = 12  # actions per Cosmos chunk (single_chunk's cut)
    prompt: str | None = None  # ignored
    negative_prompt: str | None = None  # ignored
    use_text: bool = False  # ignored
    num_steps: int | None = None  # ignored (Cosmos sampler steps)
    # --- worldsim's own keys ---
    denoise_steps: int | None = None  # Euler steps per frame (default: the model's)
    num_context_frames: int | None = None  # KV-cache window K (default: the model's)
    image: Path | None = None  # start image instead of an episode folder
    actions: tuple[tuple[float, ...], ...] | None = None  # (N, 7) env actions for `image`
    source: Path | None = None  # the params file this came from (not a JSON key)

    @property
    def resolution_hw(self) -> tuple[int, int] | None:
        """(H, W) from `resolution`, or None for "none"."""
        if self.resolution.lower() == "none":
            return None
        h, w = (int(v) for v in self.resolution.split(","))
        return h, w

    @property
    def action_guidance(self) -> float:
        """The rollout's guidance scale: Cosmos's v_c + g (v_c - v_u) is ours at 1 + g."""
        return 1.0 + self.guidance

    @property
    def json_folder(self) -> Path | None:
        return None if self.input_root is None else self.input_root / self.input_json_sub_folder


_KEYS = {f.name: f for f in dataclasses.fields(InferenceParams) if f.name != "source"}


def load_params(path: str | os.PathLike) -> InferenceParams:
    """Read and validate an inference params JSON; raises ParamsError naming the file and the key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ParamsError(f"{path}: inference params file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: cannot read inference params ({e})") from e
    except json.JSONDecodeError as e:
        raise ParamsError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return params_from_dict(data, path)


def params_from_dict(data: dict[str, Any], source: Path) -> InferenceParams:
    """Validate a params dict read from `source` (used in messages and to resolve relative paths)."""
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        warnings.warn(f"{source}: unknown keys {unknown} ignored", ParamsWarning, stacklevel=3)
    values: dict[str, Any] = {"name": source.stem, "source": source}
    for key, value in data.items():
        if key in _KEYS:
            values[key] = _check_type(key, value, source)
    for key in ("input_root", "image"):  # inputs must exist; save_root is created on demand
        if values.get(key) is not None:
            values[key] = _find_path(values[key], key, source)
    if "save_root" in values:
        values["save_root"] = Path(values["save_root"])
    params = InferenceParams(**values)
    _check_values(params, data, source)
    return params


def _check_type(key: str, value: Any, source: Path) -> Any:
    """`value` converted to the field's type, or ParamsError naming the key and the expected type."""
    kind = str(_KEYS[key].type).replace(" | None", "")
    if value is None and "None" in str(_KEYS[key].type):
        return None
    if key == "camera_id" and isinstance(value, str) and value.isdigit():
        return int(value)  # Cosmos accepts "0"
    if key == "actions":
        return _check_actions(value, source)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "Path": isinstance(value, str) and value != "",
    }[kind]
    if not ok:
        expected = {"Path": "a non-empty path string", "float": "a number"}.get(kind, f"a JSON {kind}")
        raise ParamsError(f"{source}: key '{key}': expected {expected}, got {json.dumps(value)}")
    return float(value) if kind == "float" else value


def _check_actions(value: Any, source: Path) -> tuple[tuple[float, ...], ...]:
    rows = value if isinstance(value, list) else None
    if not rows or not all(
        isinstance(r, list)
        and len(r) == 7
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
        for r in rows
    ):
        raise ParamsError(
            f"{source}: key 'actions': expected a non-empty list of [7 numbers] rows (env actions)"
        )
    return tuple(tuple(float(v) for v in r) for r in rows)


def _find_path(value: str, key: str, source: Path) -> Path:
    """A relative path against the current directory first (as Cosmos), then the params file's folder."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, source.parent / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise ParamsError(f"{source}: key '{key}': {value!r} not found (looked for {tried})")


def _check_values(p: InferenceParams, data: dict[str, Any], source: Path) -> None:
    """Cross-key checks: which input, supported options, ranges."""

    def fail(key: str, why: str) -> None:
        raise ParamsError(f"{source}: key '{key}': {why}")

    if p.image is None and p.actions is None:
        if p.input_root is None:
            fail("input_root", "missing (give a Bridge dataset root, or 'image' + 'actions')")
        if "input_json_sub_folder" not in data:
            fail(
                "input_json_sub_folder",
                "missing (the annotation folder under input_root, e.g. 'annotation/test')",
            )
        if not p.json_folder.is_dir():
            fail("input_json_sub_folder", f"folder {p.json_folder} does not exist")
    else:
        if p.image is None or p.actions is None:
            fail("image" if p.image is None else "actions", "'image' and 'actions' go together")
        if p.input_root is not None:
            fail("input_root", "give either input_root (episodes) or image + actions, not both")
    if p.use_quat:
        fail(
            "use_quat", "quaternion actions are not supported: the model's action is 6-D Euler pose + gripper"
        )
    if p.action_load_fn not in COSMOS_DEFAULT_ACTION_LOAD_FNS:
        fail(
            "action_load_fn",
            f"{p.action_load_fn!r} is not supported: worldsim imports no code named in a params file; "
            f"only Cosmos's defaults {list(COSMOS_DEFAULT_ACTION_LOAD_FNS)} (computed by worldsim) are accepted",
        )
    if p.num_latent_conditional_frames != 1:
        fail(
            "num_latent_conditional_frames",
            f"must be 1, got {p.num_latent_conditional_frames}: the model starts from one frame "
            "(its tokenizer has no temporal compression, so one latent frame is one image)",
        )
    if p.resolution.lower() != "none":
        parts = p.resolution.split(",")
        if len(parts) != 2 or not all(s.strip().isdigit() and int(s) > 0 for s in parts):
            fail("resolution", f'expected "H,W" (e.g. "256,320") or "none", got {p.resolution!r}')
    if p.start < 0 or p.end < 0:
        fail("start" if p.start < 0 else "end", "must be >= 0")
    if p.start > p.end:
        fail("start", f"start ({p.start}) > end ({p.end})")
    positive = ("fps_downsample_ratio", "chunk_size", "save_fps", "denoise_steps", "num_context_frames")
    for key in positive:
        value = getattr(p, key)
        if value is not None and value <= 0:
            fail(key, f"must be > 0, got {value}")
    for key in ("start_frame_idx", "camera_id"):
        if getattr(p, key) < 0:
            fail(key, f"must be >= 0, got {getattr(p, key)}")
    if p.guidance < 0:
        fail("guidance", f"must be >= 0 (Cosmos's CFG scale; 0 = off), got {p.guidance}")
    if p.reverse:
        warnings.warn(
            f"{source}: 'reverse' is ignored (Cosmos declares it but its inference never applies it)",
            ParamsWarning,
            stacklevel=4,
        )
    if p.num_steps is not None:
        warnings.warn(
            f"{source}: 'num_steps' (Cosmos's sampler steps) is ignored; use 'denoise_steps' for ours",
            ParamsWarning,
            stacklevel=4,
        )


__all__ = ["InferenceParams", "ParamsError", "ParamsWarning", "load_params", "params_from_dict"]
