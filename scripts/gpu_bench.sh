#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md: full-size SD 1.5 (512x512, 20 steps) and SDXL
# (1024x1024, 30 steps) architectures with random weights, easel's engine vs sequential plain
# diffusers fp16. Run from the repository root on a CUDA machine:
#
#   scripts/gpu_bench.sh [sd15|sdxl|all]      (default: all; each part fits in 10 minutes)
#
# Results go to $OUT (default ./bench-out): gpu.txt, <arch>.json and <arch>.md (the console
# output, ending with the markdown table). Python packages the machine lacks travel as wheels in
# .whl/ (docs/benchmarks.md lists the `pip download` commands); they are installed to /tmp/site.
# Models are built into /tmp/bench-<arch> (SDXL: about 7 GB of disk).
set -euo pipefail
cd "$(dirname "$0")/.."

part=${1:-all}
case $part in
  sd15 | sdxl | all) ;;
  *) echo "usage: $0 [sd15|sdxl|all]" >&2 && exit 2 ;;
esac
out=${OUT:-$PWD/bench-out}
python=${PYTHON:-python3}
mkdir -p "$out"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$python" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$out/gpu.txt"

# bench ARCH SIDE STEPS CONCURRENCY DURATION WARMUP BASELINE_IMAGES
bench() {
  local arch=$1 side=$2 steps=$3 levels=$4 duration=$5 warmup=$6 baseline=$7
  "$python" scripts/bench_models.py --arch "$arch" --out "/tmp/bench-$arch" --device cuda
  "$python" scripts/bench_engine.py --models-dir "/tmp/bench-$arch" --model "bench-$arch" \
    --width "$side" --height "$side" --steps "$steps" --concurrency "$levels" \
    --duration "$duration" --warmup "$warmup" --baseline-images "$baseline" --device cuda \
    --out "$out/$arch.json" --markdown 2>&1 | tee "$out/$arch.md"
  rm -rf "/tmp/bench-$arch"
}

sd15() { bench sd15 512 20 1,4,16,64 30 10 16; }
sdxl() { bench sdxl 1024 30 1,4,16 40 20 8; }

if [ "$part" = all ]; then
  sd15
  sdxl
else
  "$part"
fi
