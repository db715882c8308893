"""What a model costs: parameters, size on disk, MACs, latency, memory and energy.

`benchmark_model` measures all of it into one JSON-able record (schema in
`prunebench.metrics.benchmark`); the pieces are usable on their own.
"""

from prunebench.metrics.benchmark import MODES, benchmark_model
from prunebench.metrics.effective import effective_counts, effective_weight_masks
from prunebench.metrics.encoding import (
    decode_sparse,
    encode_sparse,
    size_dense_bytes,
    size_sparse_bytes,
)
from prunebench.metrics.macs import mac_counts, macs_effective, macs_thop
from prunebench.metrics.size import count_macs, size_counts, sparsity_counts
from prunebench.metrics.sparse_exec import to_semi_structured, to_sparse_csr

__all__ = [
    "MODES",
    "benchmark_model",
    "count_macs",
    "decode_sparse",
    "effective_counts",
    "effective_weight_masks",
    "encode_sparse",
    "mac_counts",
    "macs_effective",
    "macs_thop",
    "size_counts",
    "size_dense_bytes",
    "size_sparse_bytes",
    "sparsity_counts",
    "to_semi_structured",
    "to_sparse_csr",
]
