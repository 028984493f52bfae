"""worldsim.eval: how faithful a world model is to BridgeSim, its ground truth (`worldsim-eval`, cli.py).

metrics (PSNR, SSIM) · open_loop (data actions, per horizon) · counterfactual (random teleop actions) ·
success (state-estimating success model shipped beside a bundle) · policy_ranking (success rates in both
worlds, Pearson/Spearman) · report (metrics.json, plotly HTML) · sim_pool (BridgeSim worker processes).
"""
