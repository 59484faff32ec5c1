#!/usr/bin/env bash
# The GPU runs behind docs/results.md's GPU rows, on the device machine (one H100/H200):
#   bash eval/device_bc.sh setup   # install carried wheels, collect the datasets
#   bash eval/device_bc.sh sweep   # a GPU-config run and CPU-config variants side by side
#   NPROCS=1 bash eval/device_bc.sh ddp   # torchrun through NCCL (NPROCS="1 2" on a 2-GPU host)
# Carried: .whl .gl (../shared/tools/device-wheels.sh) and .minilm16 (fp16 copy of MiniLM).
set -uo pipefail
phase=$1
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
[ -d /tmp/site/mujoco ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl VLA_MINILM_PATH=$PWD/.minilm16 PYTHONUNBUFFERED=1
out=${OUT:-outputs/device}; mkdir -p "$out" outputs/sweep
common="trainer.progress=false eval.num_envs=10 data.collect_if_missing=false"

if [ "$phase" = setup ]; then
  nvidia-smi -L; nproc
  python3 train/collect.py output=data/demos episodes_per_task=100 workers=14 video=false progress=false
  python3 train/collect.py output=data/demos300 episodes_per_task=300 workers=14 video=false progress=false
fi

if [ "$phase" = sweep ]; then
  export OMP_NUM_THREADS=2  # several runs share 16 cores: no oversubscription
  limit=${LIMIT:-420}
  gpu="model=gpu trainer=gpu data.path=data/demos300 data.num_workers=3 trainer.steps=${GPU_STEPS:-6000} trainer.checkpoint_every=1000 eval.every_steps=2000 eval.episodes=10 eval.final_episodes=30 eval.splits=[train] eval.video_episodes=0"
  timeout $limit python3 train/bc.py $gpu $common run_dir=outputs/sweep/gpu_sincos > outputs/sweep/gpu_sincos.log 2>&1 &
  cpu="model=cpu trainer=cpu device=cuda trainer.amp=off data.num_workers=1 trainer.lr=1e-3 eval.every_steps=500 eval.episodes=10 eval.final_episodes=30 eval.splits=[train] eval.video_episodes=0"
  run() { name=$1; shift; timeout $limit python3 train/bc.py $cpu $common run_dir=outputs/sweep/$name "$@" > outputs/sweep/$name.log 2>&1; }
  run s1_d300 data.path=data/demos300 trainer.steps=1500 &
  run s2_d300_conv data.path=data/demos300 trainer.steps=1500 model.patch_embed=conv &
  run s3_d300_noaug data.path=data/demos300 trainer.steps=1500 trainer.augment=false &
  run s4_d300_3000 data.path=data/demos300 trainer.steps=3000 &
  run s5_d100 data.path=data/demos trainer.steps=1500 &
  run s6_d100_reach data.path=data/demos trainer.steps=1500 data.tasks=[reach] &
  wait
fi

if [ "$phase" = ddp ]; then  # NCCL data parallel on a 2-GPU host: 1 vs 2 processes, same global batch
  nvidia-smi -L
  python3 train/collect.py output=data/demos20 episodes_per_task=20 workers=16 video=false progress=false
  ddp="model=gpu trainer=gpu data.path=data/demos20 data.num_workers=2 trainer.steps=300 trainer.log_every=50 eval.every_steps=0 eval.final_episodes=1 eval.splits=[train] eval.video_episodes=0"
  for n in ${NPROCS:-1 2}; do
    torchrun --standalone --nproc_per_node=$n train/bc.py $ddp $common run_dir=outputs/sweep/ddp$n > outputs/sweep/ddp$n.log 2>&1
    echo "nproc $n rc=$?"; grep "device\|samples_per_s" outputs/sweep/ddp$n.log | head -2
    tail -3 outputs/sweep/ddp$n/metrics.jsonl
  done
fi

for f in outputs/sweep/*/evaluation.md; do echo "== $f"; cat "$f"; done > "$out/summary_$phase.md" 2>/dev/null
for f in outputs/sweep/*.log; do echo "== $f"; grep -v "Loading weights" "$f" | tail -25; done > "$out/logs_$phase.txt"
tar czf "$out/runs_$phase.tgz" outputs/sweep/*/metrics.jsonl outputs/sweep/*/evaluation.* outputs/sweep/*/config.yaml outputs/sweep/*/rollouts.mp4 2>/dev/null
cat "$out/summary_$phase.md"; tail -3 outputs/sweep/*.log
