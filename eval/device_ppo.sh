#!/usr/bin/env bash
# PPO on the device machine (one GPU, 16 cores): BC+PPO at two rollout temperatures and the
# SB3 CNN baseline side by side, then 200-episode evaluations of the BC start and BC+PPO.
# Carried: .gl (../shared/tools/device-wheels.sh), .minilm16 (fp16 MiniLM), outputs/ppo_carry
# (the Python 3.12 wheels incl. stable-baselines3, and the BC checkpoint as fp16 weights, to
# stay under the 64 MiB carry limit).   Usage: BUDGET=60000 LIMIT=420 bash eval/device_ppo.sh
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
[ -d /tmp/site/mujoco ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site outputs/ppo_carry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl VLA_MINILM_PATH=$PWD/.minilm16 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
out=${OUT:-outputs/device}; mkdir -p "$out" outputs/ppo
bc=outputs/ppo_carry/bc_round0_fp16.pt; budget=${BUDGET:-60000}; limit=${LIMIT:-420}
common="task=reach env.num_envs=5 ppo.total_timesteps=$budget ppo.n_steps=256 ppo.batch_size=256 eval.every_steps=10000 eval.episodes=50 checkpoint_every=10000 device=cuda"
nvidia-smi -L; nproc
timeout $limit python3 train/ppo.py $common run_dir=outputs/ppo/dev_bc_ppo_t1 init=$bc ppo.lr=3e-5 ppo.critic_warmup_steps=2560 > outputs/ppo/dev_bc_ppo_t1.log 2>&1 &
timeout $limit python3 train/ppo.py $common run_dir=outputs/ppo/dev_bc_ppo_t05 init=$bc ppo.lr=3e-5 ppo.critic_warmup_steps=2560 ppo.temperature=0.5 > outputs/ppo/dev_bc_ppo_t05.log 2>&1 &
timeout $limit python3 train/ppo.py $common run_dir=outputs/ppo/dev_cnn algo=cnn ppo.lr=3e-4 ppo.critic_warmup_steps=0 ppo.target_kl=null > outputs/ppo/dev_cnn.log 2>&1 &
wait
e="tasks=[reach] splits=[train] episodes=200 open_loop=false language_swap=false video_episodes=0 progress=false num_envs=10 device=cuda"
python3 eval/evaluate.py $e checkpoint=$bc out_dir=outputs/ppo/eval200_bc > /dev/null 2>&1 &
for r in dev_bc_ppo_t1 dev_bc_ppo_t05; do
  [ -f outputs/ppo/$r/checkpoints/best.pt ] && python3 eval/evaluate.py $e checkpoint=outputs/ppo/$r/checkpoints/best.pt out_dir=outputs/ppo/eval200_${r}_best > /dev/null 2>&1 &
done
wait
for r in dev_bc_ppo_t1 dev_bc_ppo_t05 dev_cnn; do tail -3 outputs/ppo/$r.log; cat outputs/ppo/$r/evals.jsonl 2>/dev/null; cat outputs/ppo/$r/summary.json 2>/dev/null; echo; done
for d in outputs/ppo/eval200_*; do echo "== $d"; cat $d/evaluation.md 2>/dev/null | head -4; done
tar czf $out/ppo_runs.tgz --exclude='*.pt' --exclude='*.zip' outputs/ppo
