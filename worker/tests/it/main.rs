//! Integration tests of shardtally-worker, one module per topic. Backend-dependent tests run on
//! SQLite always, and on PostgreSQL and MySQL/MariaDB when `SHARDTALLY_TEST_POSTGRES_URL` /
//! `SHARDTALLY_TEST_MYSQL_URL` are set (with `CI=true`, a missing URL is a failure).

mod cli;
mod cluster;
mod common;
mod e2e;
mod hostile;
mod ingest;
mod shard_rules;
mod store;
mod tls;
