#!/usr/bin/env bash
# PATNet-T0 vs timm FasterNet-T0 on Fashion-MNIST: same recipe, same budget, 3 seeds each.
# Two runs at a time, one CPU core and one thread each (a 2-core machine). Results: outputs/fmnist/<model>_s<seed>/.
# Then: python experiments/summarize_fmnist.py outputs/fmnist docs/results/fashion_mnist
set -euo pipefail
EPOCHS=${EPOCHS:-4}
IMG=${IMG:-64}
OUT=${OUT:-outputs/fmnist}
COMMON=(--data fashion-mnist --epochs "$EPOCHS" --img-size "$IMG" --batch-size 128 --lr 2e-3 --warmup-epochs 0.3
        --mixup 0 --cutmix 0 --auto-augment none --scale 0.7 1.0 --crop-pct 1.0 --workers 0 --no-progress)
run() {  # core model seed
  OMP_NUM_THREADS=1 taskset -c "$1" patnet train --model "$2" --seed "$3" --output "$OUT/$2_s$3" "${COMMON[@]}" \
    > "$OUT/$2_s$3.log" 2>&1
}
mkdir -p "$OUT"
for seed in 0 1 2; do
  run 0 patnet_t0 "$seed" &
  run 1 fasternet_t0 "$seed" &
  wait
done
