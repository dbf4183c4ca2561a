#!/usr/bin/env bash
# Create bench/.venv: the benchmark's own environment, with PyTorch for the reference runs.
# It sees the system site-packages (numpy, scikit-learn, the editable fbprop), so fbprop's
# dependencies are untouched; torch is never a dependency of fbprop itself.
#   bash bench/setup.sh            # torch==2.13.0 (the version the benchmark is pinned to)
#   TORCH_VERSION=2.14.1 bash bench/setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
version="${TORCH_VERSION:-2.13.0}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv --system-site-packages "$venv"
fi
"$venv/bin/pip" install --quiet "torch==$version"
"$venv/bin/python" - <<'PY'
import torch, numpy, sklearn, fbprop
print(f"bench/.venv ready: torch {torch.__version__}, numpy {numpy.__version__}, "
      f"scikit-learn {sklearn.__version__}, fbprop {fbprop.__version__}")
PY
