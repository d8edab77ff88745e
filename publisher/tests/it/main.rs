//! Integration tests of the publisher over real TCP against a small acking test server.

mod buffer;
mod common;
mod delivery;
mod failure;
