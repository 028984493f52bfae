"""worldsim-train: tokenizer, video2world pre-training and action post-training of the world model.

Launch (one code path for 1..N processes; FSDP2 over however many there are):

    # CPU, one process (gloo, a world of one; also what the console script does outside torchrun)
    worldsim-train experiment=bridge_tiny dataset.root=datasets/bridge
    python -m worldsim.train experiment=bridge_tiny dataset.root=datasets/bridge trainer.max_iter=50

    # CPU, 2 processes over gloo (what the tests run)
    torchrun --standalone --nproc_per_node=2 -m worldsim.train experiment=bridge_tiny dataset.root=DIR

    # 1 GPU (NCCL, bf16 mixed precision by default on CUDA)
    torchrun --standalone --nproc_per_node=1 -m worldsim.train experiment=bridge_base_action \\
        dataset.root=DIR load_path=/tmp/worldsim-output/worldsim/bridge/bridge_small_video2world/checkpoints

    # N GPUs of one host (here 4), the 2B preset with activation checkpointing
    torchrun --standalone --nproc_per_node=4 -m worldsim.train experiment=bridge_2b_action \\
        dataset.root=DIR trainer.max_iter=20 job.name=bridge_2b_try

The Cosmos pipeline, stage by stage (each stage's checkpoint initialises the next via load_path):

    worldsim-train experiment=bridge_small_tokenizer   dataset.root=DIR
    worldsim-train experiment=bridge_small_video2world dataset.root=DIR load_path=OUT/bridge_small_tokenizer/checkpoints
    worldsim-train experiment=bridge_small_action      dataset.root=DIR load_path=OUT/bridge_small_video2world/checkpoints

Overrides are OmegaConf dotted keys over the dataclasses in `worldsim.train.config` (e.g.
`trainer.max_iter=N`, `trainer.batch_size=N`, `trainer.lr=X`, `checkpoint.save_iter=N`, `job.name=NAME`,
`model.overrides.depth=4`, `trainer.precision=fp32`, `trainer.activation_checkpointing=true`).
Outputs go to ${WORLDSIM_OUTPUT_ROOT:-/tmp/worldsim-output}/PROJECT/GROUP/NAME/: config.yaml,
metrics.jsonl (loss, lr, grad norm, it/s, frames/s, MFU; validation loss and rollout PSNR),
val/iter_*.mp4 (ground truth left, prediction right) and checkpoints/iter_*/ (DCP). Running the same
command again resumes from checkpoints/latest_checkpoint.txt.

Latent statistics: a dynamics stage whose tokenizer still has the identity normalisation (shift 0,
scale 1) sets the per-channel mean / std of the latents from training frames before its first step;
they are saved with the weights, so later stages and exports inherit them.
"""
