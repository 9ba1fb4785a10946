#!/usr/bin/env bash
# Issue 12 on a GPU machine (the device tool's nvidia-h200-x2): the GPU floor benchmark and worker
# scaling over two GPUs. See docs/scale.md and docs/runs/scale-h200x2.txt.
#
# Expects Ray (not on the machine's image) carried as NOTES.md describes for big wheels: part one of
# the split cp312 wheel already at /tmp/ray.part.aa (an earlier call), part two and Ray's missing
# pure-Python needs under .whl/p2/. Installs them into /tmp/site, installs parity without
# dependencies (entry points for its plugins), then writes to $OUT:
#   env.txt      GPUs, versions
#   floor.log    benchmarks/compare_transformer.py on CUDA, torch fp32 vs torch-fp16, BERT-base size
#   scale.log    benchmarks/dataset_scaling.py on CUDA, 1 worker in process, Ray with 1, Ray with 2 (one per GPU)
set -u
OUT=${OUT:-/tmp/parity-gpu-out}
mkdir -p "$OUT"
. "$(dirname "$0")/_carry_wheels.sh"
carry_wheels /tmp/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl \
    b951b40965947a63615830916be04f26440d234de1e9a29dbf2155d03fa9ad2a \
    /tmp/ray.part.aa .whl/p2/ray.part.ab || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || {
    cat "$OUT/install.log"; exit 1; }
{
  nvidia-smi -L
  python3 -c "import torch, ray, onnxruntime, numpy; print('torch', torch.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0)); print('ray', ray.__version__, 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
  nproc; free -g | head -2
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
FLOOR_ARGS=${FLOOR_ARGS:-"--device cuda --ref torch --target torch-fp16 --bert-base --batches 1,8,32 --repeat 2 --folder-feeds 4"}
SCALE_ARGS=${SCALE_ARGS:-"--device cuda --ref torch --target torch-fp16 --depth 12 --width 768 --heads 12 --seq 128 --batch 8 --feeds 32 --workers 1,2 --ray1"}
if [ -z "${SKIP_FLOOR:-}" ]; then
  timeout 270 python3 benchmarks/compare_transformer.py $FLOOR_ARGS >"$OUT/floor.log" 2>&1
  echo "floor rc=$?" >>"$OUT/floor.log"
  tail -40 "$OUT/floor.log"
fi
timeout 330 python3 benchmarks/dataset_scaling.py $SCALE_ARGS >"$OUT/scale.log" 2>&1
echo "scale rc=$?" >>"$OUT/scale.log"
tail -30 "$OUT/scale.log"
if [ -n "${PROFILE:-}" ]; then
  timeout 120 python3 scripts/gpu_profile_feed.py >"$OUT/profile.log" 2>&1
  echo "profile rc=$?" >>"$OUT/profile.log"
fi
