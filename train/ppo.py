"""PPO fine-tuning of the VLA in its own action-token space (stable-baselines3).

    python train/ppo.py +recipe=reach_cpu_smoke init=<BC run>   # a few minutes on a laptop CPU
    python train/ppo.py +recipe=reach_gpu init=<BC run>         # the +15.8-point result (one GPU, 16 cores)
    python train/ppo.py init=null                               # the same VLA from scratch
    python train/ppo.py algo=cnn                                # SB3's stock CNN policy, continuous actions
    python train/ppo.py resume=<run dir>

1. The policy's 7 action tokens are PPO's action; rollouts sample them at ``ppo.temperature``.
2. A value head reads the decoder's state at the first action position (or a separate critic).
3. The clipped-ratio update, with a KL anchor to the BC policy and a critic warm-up.
4. Greedy closed-loop success on fixed validation seeds picks best.pt.

Config: configs/ppo.yaml; the workspace is vla/rl/finetune.py, the algorithm vla/rl/ppo.py.
"""

from vla.app.cli import hydra_entry
from vla.rl.finetune import check_config, train

if __name__ == "__main__":
    hydra_entry("ppo", train, check_config)
