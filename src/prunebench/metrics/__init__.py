"""What a model costs: parameter counts and multiply-accumulates."""

from prunebench.metrics.size import count_macs, size_counts

__all__ = ["count_macs", "size_counts"]
