#!/usr/bin/env bash
# CPU training throughput of PATNet-T0 and FasterNet-T0 on Fashion-MNIST at 64 px: fp32, bf16 autocast,
# channels_last and both (60 batches of 128, one core, one thread, nothing else running). Then the accuracy check:
# the set-up's 2-epoch short-recipe run in fp32 and in bf16 + channels_last (same seed and data order).
#   bash experiments/train_speed.sh > docs/results/train_speed.md
set -euo pipefail
SKIP_SPEED=${SKIP_SPEED:-0}  # 1: only the accuracy check
OUT=${OUT:-outputs/train_speed}
if [ "$SKIP_SPEED" != 1 ]; then
echo "| model | fp32 img/s | bf16 img/s | channels_last img/s | bf16 + channels_last img/s |"
echo "|---|---|---|---|---|"
for m in patnet_t0 fasternet_t0; do
  row="| $m |"
  for opt in none bf16 cl bf16cl; do
    case $opt in none) f=();; bf16) f=(--amp bf16);; cl) f=(--channels-last);; bf16cl) f=(--amp bf16 --channels-last);; esac
    OMP_NUM_THREADS=1 taskset -c 0 patnet train --model "$m" --recipe short --epochs 1 --max-train-batches 60 \
      --max-val-batches 1 --workers 0 --no-progress --output "$OUT/${m}_$opt" --overwrite "${f[@]}" > /dev/null 2>&1
    row="$row $(python -c "import json;print(round(json.load(open('$OUT/${m}_$opt/metrics.json'))['train_images_per_second']))") |"
  done
  echo "$row"
done
echo
# torch.compile (inductor) with bf16 + channels_last: two short epochs, the second one's speed (the first compiles)
echo "| model | bf16 + channels_last + torch.compile img/s (epoch 2) | compile epoch img/s |"
echo "|---|---|---|"
for m in ${COMPILE_MODELS:-patnet_t0 fasternet_t0}; do
  OMP_NUM_THREADS=1 taskset -c 0 patnet train --model "$m" --recipe short --epochs 2 --max-train-batches 60 \
    --max-val-batches 1 --workers 0 --no-progress --output "$OUT/${m}_compile" --overwrite --amp bf16 --channels-last \
    --compile > "$OUT/${m}_compile.log" 2>&1
  python -c "import json;h=[json.loads(l) for l in open('$OUT/${m}_compile/log.jsonl')];print(f'| $m | {h[1][\"train_images_per_second\"]:.0f} | {h[0][\"train_images_per_second\"]:.0f} |')"
done
fi
echo
# the check runs both precisions at once, one core each with one thread (as the study runs), same seed and data order
core=0
for opt in fp32 bf16cl; do
  f=(); [ "$opt" = bf16cl ] && f=(--amp bf16 --channels-last)
  OMP_NUM_THREADS=1 taskset -c $core patnet train --recipe short --epochs 2 --workers 0 --no-progress \
    --output "$OUT/check_$opt" --overwrite "${f[@]}" > "$OUT/check_$opt.log" 2>&1 &
  core=$((core + 1))
done
wait
for opt in fp32 bf16cl; do
  python -c "import json;d=json.load(open('$OUT/check_$opt/metrics.json'));print(f'accuracy check, $opt: top-1 {d[\"top1\"]:.2f}, loss {d[\"loss\"]:.4f}')"
done
python -c "from benchmarks.machine import environment as e; d=e(); print(f\"\n{d['cpu']}, torch {d['torch']}, timm {d['timm']}; {d['date']}\")"
