#!/usr/bin/env bash
# System tools from Debian's packages that the project runs as programs (not Python packages):
#   iverilog  Icarus Verilog, simulates the accelerator's generated RTL (neurohw.rtl, issue [V]);
#   yosys     counts the generated RTL's resources (neurohw.rtl.synth).
# Idempotent: a tool already on PATH is left as it is. Needs root (or sudo) and apt-get; without them it says
# what to install and goes on (the RTL tests then skip, naming the missing tool).
set -euo pipefail

log() { printf '[setup-tools] %s\n' "$*" >&2; }

missing=()
command -v iverilog >/dev/null 2>&1 && command -v vvp >/dev/null 2>&1 || missing+=(iverilog)
command -v yosys >/dev/null 2>&1 || missing+=(yosys)
if [ ${#missing[@]} -eq 0 ]; then
  log "iverilog and yosys are installed ($(iverilog -V 2>&1 | head -n 1); $(yosys -V 2>&1 | head -n 1))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "WARNING: no apt-get: install ${missing[*]} with your package manager (the RTL tests skip without them)"
  exit 0
fi
sudo=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    log "WARNING: not root and no sudo: run 'apt-get install -y ${missing[*]}' as root (the RTL tests skip without them)"
    exit 0
  fi
fi
log "installing ${missing[*]} from Debian's packages"
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  log "WARNING: apt-get could not install ${missing[*]}; the RTL tests skip without them (run scripts/setup-tools.sh again)"
  exit 0
fi
log "installed: $(iverilog -V 2>&1 | head -n 1); $(yosys -V 2>&1 | head -n 1)"
