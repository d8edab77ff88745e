//! Latency histograms, throughput timeline, per-node counters (in progress).
