#!/usr/bin/env bash
# The one test command (README): lint, format check, then the whole test suite (fast, slow and 2-process
# tests; GPU tests only where a GPU exists). Fails loudly if pytest collects no tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff check"
ruff check .
echo "== ruff format --check"
ruff format --check .

markers="not gpu"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  markers=""
fi
echo "== pytest -m '${markers:-all}'"
set +e
python -m pytest -m "$markers" -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
