"""DAgger on top of behaviour cloning (Ross, Gordon and Bagnell, 2011).

    python train/dagger.py data=reach dagger.rounds=3

1. Round 0: behaviour cloning (or ``dagger.init=<checkpoint>``).
2. Each round the current policy drives; the scripted expert takes over a step with
   probability beta (decaying per round) and labels every state reached.
3. The episodes join the dataset and the policy is fine-tuned on the aggregate.

Config: configs/dagger.yaml (every bc.yaml key applies); the workspace is vla/training/dagger.py.
"""

from vla.app.cli import hydra_entry
from vla.training.dagger import check_config, run_dagger

if __name__ == "__main__":
    hydra_entry("dagger", run_dagger, check_config)
