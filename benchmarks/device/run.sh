#!/usr/bin/env bash
# The one command of a device call (prepared by prepare.sh beside it; `carry: [".gpu"]`, timeout_s 600):
#   1. benchmarks/bench_device.py: codec and adaptation speed on the CPU and the GPU, cross-device parse
#      checks; its section lands in $OUT/RESULTS.md (a copy of benchmarks/RESULTS.md), to copy back;
#   2. workers.postfilter.train_gpu: continue the shipped post-filter for TRAIN_SECONDS (default 330) from
#      .gpu/pack; $OUT/filter/ gets log.jsonl and four step-*.safetensors (plain state_dicts).
# Seven files come back (the limit is eight). Each step's output also goes to the call's output tail.
set -uo pipefail
site=/tmp/site
mkdir -p "$site" && tar xJf .gpu/av.tar.xz -C "$site" || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/wheels/*.whl || exit 1
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch, av, pydantic, constriction; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'av', av.__version__)" || exit 1
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
timeout "${BENCH_SECONDS:-200}" python3 benchmarks/bench_device.py --out "$OUT/RESULTS.md" 2>&1 | tee "$OUT/bench_device.log"
filter=$(ls workers/models/postfilter/*.safetensors | head -1)
python3 -m workers.postfilter.train_gpu --pack .gpu/pack --init "$filter" --out "$OUT/filter" \
  --seconds "${TRAIN_SECONDS:-330}" 2>&1 | tail -n 40
