"""Behaviour cloning of the RT-2-style VLA on scripted demos, then closed-loop evaluation.

    python train/bc.py                        # five tasks on a laptop CPU: collect, ground, train, evaluate
    python train/bc.py data=reach             # the reach task alone: a few-minute taste
    python train/bc.py +recipe=five_gpu       # the best GPU recipe (configs/recipe/)
    python train/bc.py resume=<run dir>       # continue exactly where a run stopped
    torchrun --nproc_per_node=2 train/bc.py   # data-parallel (gloo on CPU, NCCL on GPU)

1. Demos: scripted experts' episodes (collected first if ``data.path`` has none).
2. Grounding: the keypoint reader learns to point at what an instruction names, on rendered scenes.
3. Behaviour cloning: next-token cross-entropy on the expert's action tokens.
4. Evaluation: closed-loop success per task with 95% intervals, open-loop token accuracy,
   the language-swap test, a video.

Config: configs/bc.yaml and its groups; the workspace is vla/training/bc.py.
"""

from vla.app.cli import hydra_entry
from vla.training.bc import check_config, train

if __name__ == "__main__":
    hydra_entry("bc", train, check_config)
