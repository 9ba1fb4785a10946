#!/usr/bin/env bash
# The TensorRT checks on a GPU machine (run through the device tool; see docs/tensorrt.md).
#
# Expects the TensorRT-RTX wheels carried as NOTES.md describes: part one of the split libs wheel
# already at /tmp/libs.part.aa (an earlier call), part two, the bindings and onnxconverter-common
# under .whl/p2/. Installs them into /tmp/site (nothing of the machine's Python is replaced), then
# installs parity itself (entry points for its plugins) without dependencies, and writes to $OUT:
#   env.txt            GPU, Python packages, what imports
#   gpu_bindings.log   pytest -v of tests/plugins/tensorrt/test_gpu_bindings.py (real bindings)
#   trt_lib.log        pytest of tests/plugins/tensorrt and tests/lib (the IR-version clamp on this ORT)
#   cli.log            parity doctor, and parity compare with a trt-rtx target (what a user sees)
set -u
OUT=${OUT:-/tmp/parity-gpu-out}
mkdir -p "$OUT"
. "$(dirname "$0")/_carry_wheels.sh"
carry_wheels /tmp/tensorrt_rtx_cu13_libs-1.7.1.116-py3-none-manylinux_2_28_x86_64.whl \
    e3fd45fed001240d63304e77a2d4006319b839994237cb294b6e7ad72acaabcd \
    /tmp/libs.part.aa .whl/p2/libs.part.ab || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || {
    cat "$OUT/install.log"; exit 1; }

{
  nvidia-smi -L
  python3 - <<'EOF'
import importlib
for m in ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "onnxconverter_common", "tensorrt",
          "tensorrt_rtx_bindings", "pytest"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:
        print(m, "does not import:", type(e).__name__, str(e).splitlines()[0][:120])
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
from parity.lib.onnx.convert import max_ir_version
print("onnxruntime max IR version (probed):", max_ir_version())
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

set -o pipefail
timeout 300 python3 -m pytest -p no:cacheprovider -v -rs tests/plugins/tensorrt/test_gpu_bindings.py \
    >"$OUT/gpu_bindings.log" 2>&1
echo "gpu_bindings rc=$?"; tail -3 "$OUT/gpu_bindings.log"
timeout 120 python3 -m pytest -p no:cacheprovider -q -rs tests/plugins/tensorrt tests/lib \
    --deselect tests/plugins/tensorrt/test_gpu_bindings.py >"$OUT/trt_lib.log" 2>&1
echo "trt_lib rc=$?"; tail -3 "$OUT/trt_lib.log"
{
  echo '$ parity doctor'; timeout 45 parity doctor; echo "rc=$?"
  for t in trt-rtx-fp32 trt-rtx-fp16; do
    echo "\$ parity compare tests/models/zoo.py:resnet --ref torch --target $t --workdir /tmp/pw"
    timeout 45 parity compare tests/models/zoo.py:resnet --ref torch --target "$t" --workdir /tmp/pw 2>&1 \
        | grep -v '^\[TensorRT-RTX\] \[W\]'
    echo "rc=${PIPESTATUS[0]}"
  done
} >"$OUT/cli.log" 2>&1
tail -25 "$OUT/cli.log"
