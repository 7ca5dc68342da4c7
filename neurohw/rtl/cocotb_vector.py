"""cocotb test bench of a vector unit (``vector_top`` of :mod:`neurohw.rtl.vector`); run inside the simulator by
:func:`neurohw.rtl.vector_sim.run_vector`, never imported by the package.

The job (JSON at ``$NEUROMFM_RTL_JOB``): ``n``, ``lanes``, ``in_bits``, ``out_bits``, ``signed_out``, ``ports``
(constant inputs), ``groups`` (per group of rows, one list of ``n`` integers per lane), and for LayerNorm ``gamma``
and ``beta`` (per column). At every falling edge the bench reads ``rd_index`` and drives ``x_in`` (and
``gamma_in`` / ``beta_in``) with that element, collects ``out`` when ``out_valid``, and counts the falling edges
at which ``busy`` is high (= the rising edges the unit spends busy). It writes ``{"out": [[...]], "cycles": [...]}``
(rows in group order, busy cycles per group) to ``$NEUROMFM_RTL_OUT``.
"""

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge


def _pack(values, bits):
    word, mask = 0, (1 << bits) - 1
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * bits)
    return word


def _signed(v, bits):
    return v - (1 << bits) if v >> (bits - 1) else v


@cocotb.test()
async def run_job(dut):
    job = json.loads(Path(os.environ["NEUROMFM_RTL_JOB"]).read_text())
    n, lanes, iw, ow = job["n"], job["lanes"], job["in_bits"], job["out_bits"]
    gamma, beta = job.get("gamma"), job.get("beta")
    cocotb.start_soon(Clock(dut.clk, 2, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.n_len.value = n
    dut.x_in.value = 0
    for name, v in job["ports"].items():
        getattr(dut, name).value = int(v) & ((1 << len(getattr(dut, name))) - 1)
    if gamma is not None:
        dut.gamma_in.value = 0
        dut.beta_in.value = 0
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    outs, cycles = [], []
    for rows in job["groups"]:
        # columns of the group: the word x_in holds for element j
        words = [_pack([row[j] for row in rows], iw) for j in range(n)]

        def feed():
            j = int(dut.rd_index.value)
            dut.x_in.value = words[j] if j < n else 0
            if gamma is not None and j < n:
                dut.gamma_in.value = gamma[j] & 0xFFFF
                dut.beta_in.value = beta[j] & ((1 << 48) - 1)

        got = [[None] * n for _ in range(lanes)]
        await FallingEdge(dut.clk)
        dut.start.value = 1
        feed()
        await FallingEdge(dut.clk)
        dut.start.value = 0
        busy = 0
        while True:
            if int(dut.busy.value):
                busy += 1
            if int(dut.out_valid.value):
                j, word = int(dut.out_index.value), int(dut.out.value)
                for lane in range(lanes):
                    v = (word >> (lane * ow)) & ((1 << ow) - 1)
                    got[lane][j] = _signed(v, ow) if job["signed_out"] else v
            if int(dut.done.value):
                break
            if busy > 4 * n + 16:
                raise RuntimeError(f"the unit stayed busy for {busy} cycles on rows of {n}: no done")
            feed()
            await FallingEdge(dut.clk)
        if any(v is None for lane in got for v in lane):
            raise RuntimeError("the unit did not emit every element of the row")
        outs.extend(got[: len(rows)])
        cycles.append(busy)
    Path(os.environ["NEUROMFM_RTL_OUT"]).write_text(json.dumps({"out": outs, "cycles": cycles}))
