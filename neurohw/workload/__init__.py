"""Workload IR (:mod:`neurohw.workload.ir`) and the tracer that builds it from any torch model
(:mod:`neurohw.workload.trace`); reference transformer workloads in :mod:`neurohw.workload.reference`."""

from neurohw.workload.ir import IR_VERSION, VECTOR_KINDS, Numeric, Op, OpKind, Workload
from neurohw.workload.trace import KVCacheSpec, Tracer, default_is_neuron, trace

__all__ = ["IR_VERSION", "VECTOR_KINDS", "OpKind", "Numeric", "Op", "Workload", "trace", "Tracer", "KVCacheSpec",
           "default_is_neuron"]
