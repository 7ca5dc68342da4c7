r"""A compiled CPU kernel for the fused neuron engine: the whole recurrence over T in one pass over memory.

The Python path of :class:`snn.neurons.FusedNeuron` runs about eight elementwise tensor operations per timestep,
each a full pass over (B, ...) that allocates its result. This kernel does one read of X and one write of S per
element and timestep (backward: reads of X and dL/dS, one write of dL/dX), with the membrane in a small on-stack
block that stays in L1; the inner loops over a block of elements are branch-free, so the compiler vectorizes them.

Forward, per element, with H[t] = (X[t] b + c) + V[t-1] a (a, b, c as in :class:`snn.neurons._FusedBPTT`; the
operations and their order are those of the Python path, and ``-ffp-contract=off`` keeps the compiler from
fusing them, so spikes are bit-identical):

    S[t] = H[t] >= V_th;   V[t] = S[t] ? V_r : H[t]  (hard)   or   H[t] - V_th S[t]  (soft)

Backward: H is recomputed from X block by block (the forward recurrence again, in registers and L1), then the
reverse recurrence of :class:`snn.neurons._FusedBPTT` runs over it; so the forward pass writes only S and the
autograd graph keeps only X (no (T, ...) tensor of charges). Inputs are read in place when their last dimension
is contiguous (e.g. the q / k / v chunks of one projection), with no copy.

The C source is compiled once per machine with the system C compiler (``cc -O3 -march=native -fopenmp``; about a
second; without OpenMP if that fails) into
``~/.cache/neuromfm/kernels/`` (``NEUROMFM_KERNEL_DIR`` overrides), keyed by a hash of the source, and called
through ctypes. Blocks run in parallel with OpenMP: the library links ``libgomp.so.1``, which resolves to the copy
torch has already loaded, so the kernel shares torch's thread pool (two pools would spin against each other).
Without a compiler, :func:`kernel` returns None and the engine keeps its Python path (one warning).

The same library holds ``multilevel_forward``, the forward-only recurrence of :mod:`snn.multilevel`'s multi-level
IF neurons (conversion), in the same one-pass, block-in-L1 form and bit-identical to its torch loop.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["kernel", "fused_forward", "fused_backward", "multilevel_forward"]

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#define BLK 512

/* x[t] is an (R, C) matrix with row stride sR and unit column stride, x[t + 1] starts sT floats later; the
   outputs are contiguous (T, R, C). Work is split in blocks of up to BLK columns of one row. */

static inline float charge(float x, float v, float a, float b, float c) {
    float drive = x * b;
    drive = drive + c;
    float vh = v * a;
    return drive + vh;
}

static inline float reset(float h, float f, float th, float vr, int hard) {
    float thf = th * f;
    return hard ? (f != 0.0f ? vr : h) : h - thf;
}

void lif_forward(const float* x, int64_t sT, int64_t sR, float* s, int64_t T, int64_t R, int64_t C,
                 float a, float b, float c, float th, float vr, int hard) {
    int64_t nbc = (C + BLK - 1) / BLK, nblk = R * nbc, M = R * C;
    #pragma omp parallel for schedule(static) if (nblk * BLK >= 32768)
    for (int64_t blk = 0; blk < nblk; blk++) {
        float v[BLK];
        int64_t r = blk / nbc, c0 = (blk % nbc) * BLK;
        int64_t n = C - c0 < BLK ? C - c0 : BLK;
        for (int64_t i = 0; i < n; i++) v[i] = vr;
        for (int64_t t = 0; t < T; t++) {
            const float* xt = x + t * sT + r * sR + c0;
            float* st = s + t * M + r * C + c0;
            for (int64_t i = 0; i < n; i++) {
                float h = charge(xt[i], v[i], a, b, c);
                float f = h >= th ? 1.0f : 0.0f;
                st[i] = f;
                v[i] = reset(h, f, th, vr, hard);
            }
        }
    }
}

/* Multi-level IF (snn.multilevel), no gradient: x, k contiguous (T, M); theta, inv = 1 / theta and v0 are (M,), one
   step's shape. h = v + x; k = clamp(floor(h * inv), kmin, kmax); v = soft ? h - k * theta : (k != 0 ? 0 : h). */
void multilevel_forward(const float* x, float* k, int64_t T, int64_t M, const float* theta, const float* inv,
                        const float* v0, float kmin, float kmax, int soft) {
    int64_t nblk = (M + BLK - 1) / BLK;
    #pragma omp parallel for schedule(static) if (M >= 32768)
    for (int64_t blk = 0; blk < nblk; blk++) {
        float v[BLK];
        int64_t m0 = blk * BLK, n = M - m0 < BLK ? M - m0 : BLK;
        const float* th = theta + m0;
        const float* iv = inv + m0;
        for (int64_t i = 0; i < n; i++) v[i] = v0[m0 + i];
        for (int64_t t = 0; t < T; t++) {
            const float* xt = x + t * M + m0;
            float* kt = k + t * M + m0;
            for (int64_t i = 0; i < n; i++) {
                float h = v[i] + xt[i];
                float q = floorf(h * iv[i]);
                q = q < kmin ? kmin : (q > kmax ? kmax : q);
                kt[i] = q;
                float kth = q * th[i];
                v[i] = soft ? h - kth : (q != 0.0f ? 0.0f : h);
            }
        }
    }
}

/* Backward: H is recomputed block by block (the forward recurrence, bit-identical), then the reverse recurrence
   of snn.neurons._FusedBPTT runs over it. gs and gx are contiguous (T, R, C). */
double lif_backward(const float* gs, const float* x, int64_t sT, int64_t sR, float* gx, int64_t T, int64_t R,
                    int64_t C, float a, float b, float c, float th, float vr, float alpha, int hard, int detach,
                    int need_k, int decay) {
    int64_t nbc = (C + BLK - 1) / BLK, nblk = R * nbc, M = R * C;
    const float pa = 1.5707963267948966f * alpha, half = alpha / 2.0f;
    double gk = 0.0;
    int failed = 0;
    #pragma omp parallel if (nblk * BLK >= 32768) reduction(+:gk) reduction(|:failed)
    {
        float* hb = (float*) malloc(sizeof(float) * (size_t) (T * BLK));
        if (hb == NULL) failed = 1;
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            if (hb == NULL) continue;
            float v[BLK], dv[BLK];
            int64_t r = blk / nbc, c0 = (blk % nbc) * BLK;
            int64_t n = C - c0 < BLK ? C - c0 : BLK;
            for (int64_t i = 0; i < n; i++) { v[i] = vr; dv[i] = 0.0f; }
            for (int64_t t = 0; t < T; t++) {
                const float* xt = x + t * sT + r * sR + c0;
                float* ht = hb + t * BLK;
                for (int64_t i = 0; i < n; i++) {
                    float h = charge(xt[i], v[i], a, b, c);
                    float f = h >= th ? 1.0f : 0.0f;
                    ht[i] = h;
                    v[i] = reset(h, f, th, vr, hard);
                }
            }
            float kacc[BLK];
            for (int64_t i = 0; i < n; i++) kacc[i] = 0.0f;
            for (int64_t t = T - 1; t >= 0; t--) {
                const float* gt = gs + t * M + r * C + c0;
                const float* ht = hb + t * BLK;
                float* ot = gx + t * M + r * C + c0;
                /* branch-free and with no cross-lane reduction: vectorized */
                for (int64_t i = 0; i < n; i++) {
                    float h = ht[i];
                    float f = h >= th ? 1.0f : 0.0f;
                    float z = pa * (h - th);
                    float g = half / (1.0f + z * z);
                    float dvdh = hard ? (detach ? 1.0f - f : (1.0f - f) + (vr - h) * g)
                                      : (detach ? 1.0f : 1.0f - th * g);
                    float dh = gt[i] * g + dv[i] * dvdh;
                    dv[i] = dh * a;
                    ot[i] = dh;  /* dL/dH for now; times b below */
                }
                if (need_k) {  /* dL/dk: per-lane sums of dH (X - (V[t-1] - V_r)) or -dH (V[t-1] - V_r) */
                    const float* xt = x + t * sT + r * sR + c0;
                    const float* hp = hb + (t - 1) * BLK;
                    for (int64_t i = 0; i < n; i++) {
                        float vp = vr;
                        if (t > 0) {
                            float fp = hp[i] >= th ? 1.0f : 0.0f;
                            vp = reset(hp[i], fp, th, vr, hard);
                        }
                        float dr = decay ? xt[i] - (vp - vr) : -(vp - vr);
                        kacc[i] += ot[i] * dr;
                    }
                }
                for (int64_t i = 0; i < n; i++) ot[i] = ot[i] * b;
            }
            if (need_k) {
                double acc = 0.0;
                for (int64_t i = 0; i < n; i++) acc += kacc[i];
                gk += acc;
            }
        }
        free(hb);
    }
    return failed ? NAN : gk;
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
                base = [cc, "-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared"]
                try:
                    subprocess.run([*base, "-fopenmp", str(src), "-o", str(out)], check=True, capture_output=True,
                                   text=True, timeout=120)
                except subprocess.CalledProcessError:  # no OpenMP: the same kernel, one thread
                    subprocess.run([*base, str(src), "-o", str(out)], check=True, capture_output=True, text=True,
                                   timeout=120)
                os.replace(out, lib)  # atomic: concurrent processes never load a half-written library
        dll = ctypes.CDLL(str(lib))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        warnings.warn(f"snn: the fused neuron kernel is unavailable ({detail}); the fused engine runs its slower "
                      "pure-torch path", RuntimeWarning, stacklevel=2)
        return None
    dll.lif_forward.argtypes = [_P, _I64, _I64, _P, _I64, _I64, _I64, _F, _F, _F, _F, _F, _INT]
    dll.lif_forward.restype = None
    dll.lif_backward.argtypes = [_P, _P, _I64, _I64, _P, _I64, _I64, _I64, _F, _F, _F, _F, _F, _F, _INT, _INT, _INT, _INT]
    dll.lif_backward.restype = ctypes.c_double
    dll.multilevel_forward.argtypes = [_P, _P, _I64, _I64, _P, _P, _P, _F, _F, _INT]
    dll.multilevel_forward.restype = None
    return dll


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """``x`` (T, ...) as the kernel's (T, R, C) with strides (sT, sR, 1): no copy when the last dimension has unit
    stride and the others collapse to one row stride (a chunk of the last dimension, an expanded input), else a
    contiguous copy."""
    T = x.shape[0]
    C = x.shape[-1] if x.dim() > 1 else 1
    R = x[0].numel() // C
    try:
        rows = x.view(T, R, C)
    except RuntimeError:  # the leading dimensions do not collapse into one stride
        rows = x.contiguous().view(T, R, C)
    if C > 1 and rows.stride(2) != 1:
        rows = rows.contiguous()
    return rows, rows.stride(0), rows.stride(1), R, C


def fused_forward(x: torch.Tensor, a: float, b: float, c: float, th: float, vr: float, hard: bool) -> torch.Tensor:
    """Spikes S, contiguous, with the shape of ``x`` (T, ...) (float32, CPU)."""
    rows, sT, sR, R, C = _layout(x)
    s = torch.empty(x.shape, dtype=x.dtype)
    kernel().lif_forward(rows.data_ptr(), sT, sR, s.data_ptr(), x.shape[0], R, C, a, b, c, th, vr, int(hard))
    return s


def fused_backward(grad_s: torch.Tensor, x: torch.Tensor, a: float, b: float, c: float, th: float, vr: float,
                   alpha: float, hard: bool, detach: bool, need_k: bool, decay: bool) -> tuple[torch.Tensor, float]:
    """(dL/dX, dL/dk) for the recurrence of :class:`snn.neurons._FusedBPTT` (dL/dk is 0.0 unless ``need_k``)."""
    rows, sT, sR, R, C = _layout(x)
    grad_s = grad_s.contiguous()
    gx = torch.empty(x.shape, dtype=x.dtype)
    gk = kernel().lif_backward(grad_s.data_ptr(), rows.data_ptr(), sT, sR, gx.data_ptr(), x.shape[0], R, C, a, b, c, th,
                               vr, alpha, int(hard), int(detach), int(need_k), int(decay))
    if gk != gk:  # NaN: a thread could not allocate its block buffer
        raise MemoryError("snn._kernel: out of memory for the backward pass's block buffer")
    return gx, gk


def multilevel_forward(x: torch.Tensor, theta: torch.Tensor, inv: torch.Tensor, v0: torch.Tensor, k_min: float, k_max: float,
                       soft: bool) -> torch.Tensor:
    """Spike counts ``k`` (T, ...) of :func:`snn.multilevel.multilevel_if`; ``theta``, ``inv``, ``v0``: one step's shape."""
    x = x.contiguous()
    theta, inv, v0 = (t.expand_as(x[0]).contiguous() for t in (theta, inv, v0))
    k = torch.empty_like(x)
    kernel().multilevel_forward(x.data_ptr(), k.data_ptr(), x.shape[0], x[0].numel(), theta.data_ptr(), inv.data_ptr(),
                                v0.data_ptr(), float(k_min), float(k_max), int(soft))
    return k
