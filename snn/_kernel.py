r"""A compiled CPU kernel for the fused neuron engine: the whole recurrence over T in one pass over memory.

The Python path of :class:`snn.neurons.FusedNeuron` runs about eight elementwise tensor operations per timestep,
each a full pass over (B, ...) that allocates its result. This kernel does one read of X and one write of S and H
per element and timestep, forward and backward, with the membrane in a small on-stack block that stays in L1;
the inner loop over a block of elements is branch-free, so the compiler vectorizes it.

Forward, per element, with H[t] = (X[t] b + c) + V[t-1] a (a, b, c as in :class:`snn.neurons._FusedBPTT`; the
operations and their order are those of the Python path, and ``-ffp-contract=off`` keeps the compiler from
fusing them, so spikes are bit-identical):

    S[t] = H[t] >= V_th;   V[t] = S[t] ? V_r : H[t]  (hard)   or   H[t] - V_th S[t]  (soft)

Backward: the recurrence of :class:`snn.neurons._FusedBPTT`, with V[t-1] recomputed from H[t-1].

The C source is compiled once per machine with the system C compiler (``cc -O3``; about a second) into
``~/.cache/neuromfm/kernels/`` (``NEUROMFM_KERNEL_DIR`` overrides), keyed by a hash of the source, and called
through ctypes, which releases the GIL, so the element range is split over ``torch.get_num_threads()`` threads.
Without a compiler, :func:`kernel` returns None and the engine keeps its Python path (one warning).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["kernel", "fused_forward", "fused_backward"]

_SOURCE = r"""
#include <stdint.h>
#include <math.h>
#define BLK 512

void lif_forward(const float* x, float* s, float* hs, int64_t T, int64_t M, int64_t begin, int64_t end,
                 float a, float b, float c, float th, float vr, int hard) {
    float v[BLK];
    for (int64_t m0 = begin; m0 < end; m0 += BLK) {
        int64_t n = end - m0 < BLK ? end - m0 : BLK;
        for (int64_t i = 0; i < n; i++) v[i] = vr;
        for (int64_t t = 0; t < T; t++) {
            const float* xt = x + t * M + m0;
            float* st = s + t * M + m0;
            float* ht = hs + t * M + m0;
            for (int64_t i = 0; i < n; i++) {
                float drive = xt[i] * b;
                drive = drive + c;
                float vh = v[i] * a;
                float h = drive + vh;
                float f = h >= th ? 1.0f : 0.0f;
                ht[i] = h;
                st[i] = f;
                float thf = th * f;
                v[i] = hard ? (f != 0.0f ? vr : h) : h - thf;
            }
        }
    }
}

double lif_backward(const float* gs, const float* hs, const float* x, float* gx, int64_t T, int64_t M,
                    int64_t begin, int64_t end, float a, float b, float th, float vr, float alpha, int hard,
                    int detach, int need_k, int decay) {
    float dv[BLK];
    double gk = 0.0;
    const float pa = 1.5707963267948966f * alpha, half = alpha / 2.0f;
    for (int64_t m0 = begin; m0 < end; m0 += BLK) {
        int64_t n = end - m0 < BLK ? end - m0 : BLK;
        for (int64_t i = 0; i < n; i++) dv[i] = 0.0f;
        for (int64_t t = T - 1; t >= 0; t--) {
            const float* gt = gs + t * M + m0;
            const float* ht = hs + t * M + m0;
            const float* hp = hs + (t - 1) * M + m0;
            const float* xt = x + t * M + m0;
            float* ot = gx + t * M + m0;
            float acc = 0.0f;
            for (int64_t i = 0; i < n; i++) {
                float h = ht[i];
                float f = h >= th ? 1.0f : 0.0f;
                float z = pa * (h - th);
                float g = half / (1.0f + z * z);
                float dvdh = hard ? (detach ? 1.0f - f : (1.0f - f) + (vr - h) * g)
                                  : (detach ? 1.0f : 1.0f - th * g);
                float dh = gt[i] * g + dv[i] * dvdh;
                ot[i] = dh * b;
                dv[i] = dh * a;
                if (need_k) {
                    float vp = vr;
                    if (t > 0) {
                        float hp_ = hp[i];
                        float fp = hp_ >= th ? 1.0f : 0.0f;
                        vp = hard ? (fp != 0.0f ? vr : hp_) : hp_ - th * fp;
                    }
                    float dr = decay ? xt[i] - (vp - vr) : -(vp - vr);
                    acc += dh * dr;
                }
            }
            gk += acc;
        }
    }
    return gk;
}
"""

_F, _I64, _INT = ctypes.c_float, ctypes.c_int64, ctypes.c_int
_P = ctypes.c_void_p


def _cache_dir() -> Path:
    return Path(os.environ.get("NEUROMFM_KERNEL_DIR", Path.home() / ".cache" / "neuromfm" / "kernels"))


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled library (compiled on first use), or None without a working C compiler."""
    # -march=native code must never run on another CPU: the key includes the CPU's feature flags
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "") \
        if Path("/proc/cpuinfo").is_file() else ""
    digest = hashlib.sha256((_SOURCE + flags).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"fused_neuron_{digest}.so"
    try:
        if not lib.is_file():
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if cc is None:
                raise RuntimeError("no C compiler (cc or gcc) on PATH; set CC or install gcc")
            lib.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
                src, out = Path(tmp) / "k.c", Path(tmp) / "k.so"
                src.write_text(_SOURCE)
                subprocess.run([cc, "-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
                                str(src), "-o", str(out)], check=True, capture_output=True, text=True, timeout=120)
                os.replace(out, lib)  # atomic: concurrent processes never load a half-written library
        dll = ctypes.CDLL(str(lib))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        warnings.warn(f"snn: the fused neuron kernel is unavailable ({detail}); the fused engine runs its slower "
                      "pure-torch path", RuntimeWarning, stacklevel=2)
        return None
    dll.lif_forward.argtypes = [_P, _P, _P, _I64, _I64, _I64, _I64, _F, _F, _F, _F, _F, _INT]
    dll.lif_forward.restype = None
    dll.lif_backward.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _F, _F, _F, _F, _F, _INT, _INT, _INT, _INT]
    dll.lif_backward.restype = ctypes.c_double
    return dll


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="fused-neuron")


def _parallel(fn, M: int) -> list:
    """Run ``fn(begin, end)`` over [0, M) split into one contiguous range per torch thread (ctypes drops the GIL)."""
    n = max(1, min(torch.get_num_threads(), M // 16384))  # small layers: threads cost more than they save
    if n == 1:
        return [fn(0, M)]
    step = -(-M // n)
    return list(_pool(n).map(lambda i: fn(i * step, min(M, (i + 1) * step)), range(n)))


def fused_forward(x: torch.Tensor, a: float, b: float, c: float, th: float, vr: float, hard: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and charges (S, H), both (T, ...) like ``x`` (float32, contiguous, CPU)."""
    lib = kernel()
    T, M = x.shape[0], x[0].numel()
    s, hs = torch.empty_like(x), torch.empty_like(x)
    _parallel(lambda i, j: lib.lif_forward(x.data_ptr(), s.data_ptr(), hs.data_ptr(), T, M, i, j, a, b, c, th, vr,
                                           int(hard)), M)
    return s, hs


def fused_backward(grad_s: torch.Tensor, hs: torch.Tensor, x: torch.Tensor, a: float, b: float, th: float, vr: float,
                   alpha: float, hard: bool, detach: bool, need_k: bool, decay: bool) -> tuple[torch.Tensor, float]:
    """(dL/dX, dL/dk) for the recurrence of :class:`snn.neurons._FusedBPTT` (dL/dk is 0.0 unless ``need_k``)."""
    lib = kernel()
    grad_s = grad_s.contiguous()
    T, M = x.shape[0], x[0].numel()
    gx = torch.empty_like(x)
    parts = _parallel(lambda i, j: lib.lif_backward(grad_s.data_ptr(), hs.data_ptr(), x.data_ptr(), gx.data_ptr(), T, M,
                                                    i, j, a, b, th, vr, alpha, int(hard), int(detach), int(need_k),
                                                    int(decay)), M)
    return gx, math.fsum(parts)
