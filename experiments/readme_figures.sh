#!/usr/bin/env bash
# Every figure the README quotes, regenerated at one commit on this machine into docs/results/readme/, and the
# README's figure blocks rendered from it (experiments/readme_figures.py): the variants' params and FLOPs and the
# parity error, the headline CPU latency table (benchmarks/bench.py, three runs for the spread), the main job's wall
# time and top-1 (the README's set-up command), the int8 accuracy of the main job's model through ONNX Runtime and
# OpenVINO, and the test suite's count and wall time (the README's test command, run last).
# Run it alone on the machine (no test suite, training or other benchmark on the cores), from a clean checkout:
#   bash experiments/readme_figures.sh            (15 minutes on the project's 2-core AMX Xeon, 2026-12-08)
# Another CPU's set: OUT=outputs/readme_epyc RES=docs/results/readme_epyc bash experiments/readme_figures.sh
# (the README is rendered only from docs/results/readme).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/readme}
RES=${RES:-docs/results/readme}
mkdir -p "$OUT" "$RES"
git rev-parse HEAD > "$RES/commit.txt"
python -c "from benchmarks.machine import environment, machine_line; print(machine_line(environment()))" > "$RES/machine.txt"

# 1. The variants' params and FLOPs, and the largest error against the authors' reference vectors.
python experiments/readme_figures.py facts "$RES"

# 2. Latency: the four models interleaved, 1 thread, every runtime the README's table shows; run 1 is the table,
#    runs 2 and 3 (right after) give the spread.
BENCH=(python -m benchmarks.bench --models patnet_t2,fasternet_t2,patnet_t0,fasternet_t0
       --runtime onnxruntime-int8,openvino-int8 --threads 1 --iters 60 --warmup 5 --no-train-form --no-gpu)
"${BENCH[@]}" --output "$RES"
rm -f "$RES"/bench_run*.json
for run in 2 3; do
  "${BENCH[@]}" --output "$OUT/bench_run$run"
  cp "$OUT/bench_run$run/bench.json" "$RES/bench_run$run.json"
done

# 3. The main job, as the README's set-up command runs it (the data is the Debian package's), timed.
start=$(date +%s.%N)
patnet train --recipe short --epochs 2 --output "$OUT/quickstart" --overwrite --no-progress > /dev/null
end=$(date +%s.%N)
python - "$OUT/quickstart/metrics.json" "$start" "$end" "$RES/main_job.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
rec = {"command": "patnet train --recipe short --epochs 2 --output outputs/quickstart",
       "wall_seconds": round(float(sys.argv[3]) - float(sys.argv[2]), 1),
       **{k: m[k] for k in ("top1", "top5", "loss") if k in m}}
json.dump(rec, open(sys.argv[4], "w"), indent=2)
PY

# 4. int8 accuracy of the main job's own model, quantized for both runtimes and verified on all 10,000 test images
#    (calibrated on 256 training images; --max-drop 0.5 refuses a model that loses more).
for rt in onnxruntime openvino; do
  ext=$([ "$rt" = openvino ] && echo xml || echo onnx)
  patnet quantize patnet_t0 "$OUT/q/t0.int8.$ext" --runtime "$rt" --checkpoint "$OUT/quickstart/best.pth" \
    --calib fashion-mnist --img-size 64 64 --eval-images 10000 --max-drop 0.5
  cp "$OUT/q/t0.int8.json" "$RES/int8_$rt.json"
done

# 5. The README's figures from this set, then the suite by the README's own test command (which checks them), timed;
#    its count and time are the last figures, rendered after it.
readme=$([ "$(realpath "$RES")" = "$(realpath docs/results/readme)" ] && echo yes || echo no)
[ "$readme" = yes ] && python experiments/readme_figures.py render "$RES"
start=$(date +%s.%N)
bash -c "$(python experiments/readme_figures.py test-command)" 2>&1 | tee "$OUT/tests.log"
end=$(date +%s.%N)
python experiments/readme_figures.py tests "$RES" "$OUT/tests.log" "$(python -c "print($end - $start)")"
[ "$readme" = yes ] && python experiments/readme_figures.py render "$RES"
echo "wrote $RES"
