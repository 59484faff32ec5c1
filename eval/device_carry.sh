#!/usr/bin/env bash
# Pack what a device call needs beyond the wheels into ./.carry (git-ignored), under the
# 64 MiB carry limit: MiniLM's fp16 copy as an xz tarball (45 -> 41 MB) and a BC checkpoint's
# weights in fp16 (no optimiser state: 18 -> 3 MB). eval/device_bc.sh unpacks the tarball.
#   Usage: bash eval/device_carry.sh <checkpoint.pt> <name>   e.g.
#          bash eval/device_carry.sh outputs/bc/<run>/checkpoints/best.pt reach300_g_best
set -euo pipefail
checkpoint=$1; name=$2
root=$(git rev-parse --show-toplevel); cd "$root"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
mkdir -p .carry
[ -f .carry/minilm16.tar.xz ] || (cd .minilm16 && tar cf - . | xz -T2 -6 > ../.carry/minilm16.tar.xz)
python3 -c "import sys; from vla.checkpoint import save_weights_fp16 as s; s(*sys.argv[1:])" \
  "$checkpoint" ".carry/${name}_fp16.pt"
du -sb .whl .gl .carry 2>/dev/null | awk '{s += $1; print} END {printf "carry total %.1f MiB (limit 64)\n", s / 1048576}'
