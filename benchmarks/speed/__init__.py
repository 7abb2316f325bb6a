"""Speed benchmarks: data-loader, retrieval-metric and training throughput (docs/performance.md)."""
