#!/usr/bin/env bash
# int8 accuracy: PATNet-T0 and FasterNet-T0 trained on Fashion-MNIST with one recipe, then each quantized by
# `patnet quantize` (calibration: 256 training images) and evaluated fp32 vs int8 on the 10,000 test images with
# `patnet validate --onnx`. Results: $OUT/<model>/{best.pth,fp32.onnx,int8.onnx,int8.json,val_fp32,val_int8}.
# Then: python experiments/summarize_int8.py $OUT docs/results/int8_accuracy
set -euo pipefail
EPOCHS=${EPOCHS:-3}
OUT=${OUT:-outputs/int8}
COMMON=(--data fashion-mnist --epochs "$EPOCHS" --img-size 64 --batch-size 128 --lr 2e-3 --warmup-epochs 0.3
        --mixup 0 --cutmix 0 --auto-augment none --scale 0.7 1.0 --crop-pct 1.0 --workers 0 --no-progress --seed 0)
mkdir -p "$OUT"
train() {  # core model
  [ -f "$OUT/$2/metrics.json" ] && return 0
  local resume=(); [ -f "$OUT/$2/last.pth" ] && resume=(--resume "$OUT/$2/last.pth")
  OMP_NUM_THREADS=1 taskset -c "$1" patnet train --model "$2" --output "$OUT/$2" "${COMMON[@]}" "${resume[@]}" \
    >> "$OUT/$2.log" 2>&1
}
train 0 patnet_t0 & train 1 fasternet_t0 & wait
for m in patnet_t0 fasternet_t0; do
  ck="$OUT/$m/best.pth"
  patnet export "$m" "$OUT/$m/fp32.onnx" --checkpoint "$ck" --img-size 64 64 --dynamic-batch
  patnet quantize "$m" "$OUT/$m/int8.onnx" --checkpoint "$ck" --calib fashion-mnist --img-size 64 64 --crop-pct 1.0 \
    --eval-images 10000 --max-drop 100
  patnet validate --onnx "$OUT/$m/fp32.onnx" --data fashion-mnist --crop-pct 1.0 --output "$OUT/$m/val_fp32" > /dev/null
  patnet validate --onnx "$OUT/$m/int8.onnx" --data fashion-mnist --crop-pct 1.0 --output "$OUT/$m/val_int8" > /dev/null
done
