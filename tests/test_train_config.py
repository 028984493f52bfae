"""worldsim-train's configs: experiments, overrides, and clear errors for bad input before any training."""

from __future__ import annotations

import pytest
import torch
from train_helpers import generate_bridge

from worldsim.models.config import get_preset
from worldsim.models.world_model import WorldModel
from worldsim.train.__main__ import main
from worldsim.train.config import EXPERIMENTS, POST_TRAINING_LR, ConfigError, load_config
from worldsim.train.initial_weights import inspect_load_path
from worldsim.train.trainer import lr_lambda


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridgesim")
    generate_bridge(root, "train", episodes=2, seed=0)
    return root


def error_of(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must fail with status 2 and return its message."""
    assert main(argv) == 2
    return capsys.readouterr().err


def test_every_experiment_builds_and_the_cosmos_keys_override():
    for name in EXPERIMENTS:
        # the decoder and distill stages start from a trained model: they need it
        extra = ["load_path=/ckpt"] if EXPERIMENTS[name].stage in ("decoder", "distill") else []
        cfg = load_config([f"experiment={name}", "dataset.root=/data", *extra])
        assert cfg.experiment == name and cfg.job.name == name
        cfg.model.build()
    cfg = load_config(["experiment=bridge_small_action", "dataset.root=/data", "trainer.max_iter=7",
                       "checkpoint.save_iter=3", "job.name=mine", "load_path=/ckpt", "model.overrides.depth=3"])  # fmt: skip
    assert (cfg.trainer.max_iter, cfg.checkpoint.save_iter, cfg.job.name, cfg.load_path) == (
        7,
        3,
        "mine",
        "/ckpt",
    )
    assert cfg.trainer.lr == POST_TRAINING_LR and cfg.trainer.weight_decay == 0.1
    assert cfg.model.build().depth == 3
    assert load_config(["experiment=bridge_2b_action", "dataset.root=/d"]).trainer.activation_checkpointing


def test_lr_schedule_warms_up_then_decays_linearly():
    f = lr_lambda(warmup=4, max_iter=14, final_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["dataset.root=/d", "trainer.max_itr=5"], "trainer.max_itr"),
        (["dataset.root=/d", "stage=finetune"], "stage='finetune'"),
        (["dataset.root=/d", "trainer.max_iter=-5"], "trainer.max_iter=-5"),
        (["dataset.root=/d", "trainer.max_iter=many"], "trainer.max_iter"),
        (["experiment=bridge_huge"], "experiment='bridge_huge'"),
        (["dataset.root=/d", "trainer.precision=fp8"], "trainer.precision"),
        (["dataset.root=/d", "model.overrides.depht=4"], "model.overrides.depht"),
        (["trainer.max_iter=5"], "dataset.root"),
        (["dataset.root=/d", "trainer.max_minutes=5", "trainer.warmup_iter=1"], "trainer.warmup_iter=1"),
        (["dataset.root=/d", "trainer.stop_after_minutes=-1"], "trainer.stop_after_minutes=-1"),
        (["dataset.root=/d", "trainer.motion_weight=-2"], "trainer.motion_weight=-2"),
        (["dataset.root=/d", "trainer.flex_forward_tile=48"], "trainer.flex_forward_tile=48"),
        (
            ["dataset.root=/d", "trainer.compile_mode=reduce-overhead"],
            "trainer.compile_mode='reduce-overhead'",
        ),
        (["experiment=bridge_small_decoder", "dataset.root=/d"], "load_path=''"),
        (["experiment=bridge_small_distill", "dataset.root=/d"], "load_path='': required for stage=distill"),
        (
            ["dataset.root=/d", "load_path=/c", "stage=distill", "trainer.distill_teacher_steps=0"],
            "trainer.distill_teacher_steps=0",
        ),  # fmt: skip
    ],
)
def test_bad_config_is_a_clear_error_naming_the_key(argv, expected, capsys):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_config(argv)
    assert expected in error_of(argv, capsys)


def test_missing_dataset_root_and_empty_split_fail_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLDSIM_OUTPUT_ROOT", str(tmp_path / "out"))
    err = error_of(["dataset.root=" + str(tmp_path / "nowhere")], capsys)
    assert "dataset.root=" in err and "nowhere" in err
    (tmp_path / "empty" / "annotation" / "train").mkdir(parents=True)
    err = error_of([f"dataset.root={tmp_path / 'empty'}"], capsys)
    assert "empty" in err and "'train'" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_incompatible_load_path_fails_before_training(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLDSIM_OUTPUT_ROOT", str(tmp_path / "out"))
    wide = WorldModel(get_preset("tiny", dim=128, heads=2))
    wide.save_pretrained(tmp_path / "wide")
    err = error_of([f"dataset.root={data}", f"load_path={tmp_path / 'wide'}"], capsys)
    assert "does not fit model preset 'tiny'" in err and "[128" in err
    err = error_of([f"dataset.root={data}", f"load_path={tmp_path / 'missing.pt'}"], capsys)
    assert "no such file" in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    err = error_of([f"dataset.root={data}", f"load_path={tmp_path / 'junk.pt'}"], capsys)
    assert "junk.pt" in err and "cannot read" in err
    # tokenizer_path: the same checks, named by its own key; its tokenizer must fit, load_path's need not
    err = error_of([f"dataset.root={data}", f"tokenizer_path={tmp_path / 'missing.pt'}"], capsys)
    assert "tokenizer_path=" in err and "no such file" in err
    WorldModel(get_preset("tiny", tokenizer_channels=(12, 16, 16))).save_pretrained(tmp_path / "widetok")
    err = error_of([f"dataset.root={data}", f"tokenizer_path={tmp_path / 'widetok'}"], capsys)
    assert "tokenizer_path=" in err and "tokenizer.encoder" in err
    err = error_of(["stage=decoder", f"dataset.root={data}", f"load_path={tmp_path / 'widetok'}",
                    f"tokenizer_path={tmp_path / 'widetok'}"], capsys)  # fmt: skip
    assert "tokenizer_path=" in err and "not for stage=decoder" in err
    assert not (tmp_path / "out").exists()


def test_load_path_accepts_exports_and_maps_every_tensor(tmp_path):
    cfg = get_preset("tiny")
    WorldModel(cfg).save_pretrained(tmp_path / "export")
    plan = inspect_load_path(str(tmp_path / "export"), cfg, "action", use_ema=True)
    assert plan.kind == "safetensors" and not plan.dropped
    model = WorldModel(cfg)
    plan.load_into(model)
    source = WorldModel.from_pretrained(tmp_path / "export")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    assert inspect_load_path(str(tmp_path / "model.pt"), cfg, "action", use_ema=True).kind == "pt"


def _budget_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from worldsim.train.parallelize import DistInfo
    from worldsim.train.trainer import fit_to_budget

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        # Each rank timed its own warm-up: the same speed, but one rank started 0.37 s later.
        results[rank] = fit_to_budget(100, 10.0 + 0.37 * rank, 1.0, 100, 10_000, info)
    finally:
        dist.destroy_process_group()


def test_wall_clock_budget_gives_every_rank_the_same_last_step():
    # A rank that stops one step early leaves the others waiting in the last step's collectives forever
    # (this hung a 4-GPU run): the budgeted last step must be agreed on, not computed per rank.
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_budget_rank, args=(port, results), nprocs=2, join=True)
    assert results[0] == results[1]
    assert 100 < results[0] <= 100 + int(10 * 45.0)  # 10 steps/s for 90% of the 50 s left
