//! shardtally loadgen: scenarios, embedded clusters, faults, assertions, reports, benchmarks.
