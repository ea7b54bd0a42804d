#!/usr/bin/env bash
# The GPU check of issue 22: bench/bench_gpu.py (swag pretrain end to end vs the in-memory training
# step, ViT-B/16 and RegNetY-16GF at 224 px) on the device machine, in one prepared run of ~5 minutes.
#
#   here, once (network: PyPI):  bash bench/gpu_check.sh prepare
#       -> build/gpu/ (ignored by git, ~10 MB): the wheels swag needs beyond the GPU image's python3
#          (pydantic & co., nltk, braceexpand; cp312, manylinux) and WordNet (nltk layout, .tar.xz)
#   there: the device tool's run, carry ["build/gpu"], timeout_s 560, command:
#       bash bench/gpu_check.sh
#       -> $OUT/bench_gpu.log, $OUT/bench_gpu.json (eager, both models), $OUT/bench_fsdp_memory.json
#          (ViT-L/16 peak memory per GPU, DDP vs FSDP), $OUT/bench_gpu_compile.json
#          (ViT-B/16 with torch.compile, in the time left), $OUT/nvidia-smi.txt
#
# The GPU image's python3 (3.12) holds torch, timm, numpy, pillow, pyyaml, rich, scipy, matplotlib;
# swag itself is read from the working tree (bench_gpu.py puts the repo root on sys.path).
# BUDGET (seconds, default 470) bounds the whole script: the eager pass gets up to 330 s, the
# compiled pass what is left (each under `timeout`; the JSON is rewritten after every model, so a
# pass cut short keeps the models it finished). GPU_DIR, PYTHON and PYVER (prepare) override the
# folder, the interpreter and the wheels' Python version (a CPU rehearsal: see bench/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
G=${GPU_DIR:-build/gpu}

if [ "${1:-}" = prepare ]; then
  PY=${PYTHON:-.venv/bin/python}
  rm -rf "$G" && mkdir -p "$G/whl" || exit 1
  # versions: what the project's venv runs (pydantic-core must match pydantic exactly)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$G/whl" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 nltk==3.10.4 defusedxml==0.7.1 braceexpand==0.1.7 || exit 1
  WN=$("$PY" -c "import sys; sys.path.insert(0, '.'); from swagcli.wordnet import find_wordnet_root; print(find_wordnet_root()[0])") || exit 1
  tar -cJf "$G/wordnet.tar.xz" -C "$WN" . || exit 1
  ls -la "$G" "$G/whl"; du -sh "$G"
  exit 0
fi

OUT=${OUT:-/tmp/bench-gpu-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-470}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}

check() {
  [ -d "$G/whl" ] && [ -f "$G/wordnet.tar.xz" ] || {
    echo "gpu_check: $G missing: run 'bash bench/gpu_check.sh prepare' here and carry build/gpu"; return 2; }
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; head -15 "$OUT/nvidia-smi.txt"
  echo "cores $(nproc)"; free -g | head -2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$G"/whl/*.whl \
    || return 1
  export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 SWAG_CACHE=/tmp/swag-cache SWAG_WORDNET=/tmp/swag-wordnet
  mkdir -p "$SWAG_WORDNET" && tar -xJf "$G/wordnet.tar.xz" -C "$SWAG_WORDNET" || return 1
  "$PY" -c "import sys, torch, timm, pydantic, nltk; print('python', sys.version.split()[0], 'torch', torch.__version__,
'timm', timm.__version__, 'pydantic', pydantic.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || return 1
  echo "setup done at ${SECONDS}s"

  local world=/tmp/swag-bench-world eager left
  eager=$(( BUDGET - SECONDS < 330 ? BUDGET - SECONDS : 330 ))
  timeout -k 10 "$eager" "$PY" bench/bench_gpu.py --all --world "$world" --json "$OUT/bench_gpu.json"
  echo "eager pass: rc $? at ${SECONDS}s"

  # issue 23: peak memory per GPU, ViT-L/16 under DDP and FSDP on the same micro-batch (every GPU
  # of the machine; with one GPU there is nothing to shard over and the two figures agree)
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
  if [ "$(( BUDGET - SECONDS ))" -ge 150 ] && [ "$gpus" -ge 1 ]; then
    timeout -k 10 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$gpus" \
      bench/bench_fsdp_memory.py --model vit_large_patch16_224 --micro 32 --json "$OUT/bench_fsdp_memory.json"
    echo "fsdp memory: rc $? at ${SECONDS}s"
  fi

  left=$(( BUDGET - SECONDS ))
  if [ "$left" -ge 90 ]; then
    timeout -k 10 "$left" "$PY" bench/bench_gpu.py --model vit_b16 --compile --world "$world" \
      --json "$OUT/bench_gpu_compile.json"
    echo "compiled pass: rc $? at ${SECONDS}s"
  else
    echo "compiled pass skipped: ${left}s left"
  fi
}

check 2>&1 | tee "$OUT/bench_gpu.log"
