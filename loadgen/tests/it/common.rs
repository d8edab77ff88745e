//! Helpers for tests that run the real `shardtally-loadgen` binary.

#![allow(dead_code)]
