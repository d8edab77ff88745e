//! The shard rules kept in the database (SPEC §4.2): the node → shard registry, and the lease
//! that keeps two live workers from serving one shard id.
//!
//! Lease times come from the database clock ([`crate::store::dialect::Dialect::now_ms`]), so
//! skew between worker machines does not matter. A lease is alive while `now < expires_at`.
//! Every step is one atomic statement: take over an expired (or our own) lease with a
//! conditional UPDATE, else create it with a plain INSERT (the primary key arbitrates a race),
//! else read who holds it.

use std::time::Duration;

use sqlx::Row;
use tracing::warn;

use crate::store::db::{Store, ttl_ms};
use crate::store::error::StoreError;
use crate::store::schema::{ID_MAX_CHARS, SHARD_ID_MAX_CHARS, check_id};

/// What [`Store::acquire_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The lease is ours until renewed or released.
    Acquired,
    /// An earlier instance of this same node (e.g. before a crash) still holds it; it expires in
    /// `expires_in` unless that instance is alive and renews it.
    HeldBySameNode {
        /// Time until the lease expires.
        expires_in: Duration,
    },
    /// Another node holds it: the shard id is in use.
    HeldByOtherNode {
        /// The holder's node id.
        node_id: String,
        /// Time until the lease expires, unless renewed.
        expires_in: Duration,
    },
}

/// Attempts at acquiring before reporting the holder last seen: each round only repeats when the
/// lease expired or vanished between two statements.
const ACQUIRE_ROUNDS: usize = 5;

impl Store {
    /// Records `node_id → shard_id` on first use. A node later asking for a different shard id is
    /// refused ([`StoreError::ShardChanged`]) unless `allow_change`, which updates the record.
    pub async fn register_node(
        &self,
        node_id: &str,
        shard_id: &str,
        allow_change: bool,
    ) -> Result<(), StoreError> {
        check_id("node id", node_id, ID_MAX_CHARS)?;
        check_id("shard id", shard_id, SHARD_ID_MAX_CHARS)?;
        let ctx = || StoreError::db("registering the node's shard id");
        let d = &self.dialect;
        sqlx::query(&d.insert_node())
            .bind(node_id)
            .bind(shard_id)
            .execute(&self.pool)
            .await
            .map_err(ctx())?;
        let recorded: String = sqlx::query(&d.select_node())
            .bind(node_id)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(ctx())?;
        if recorded == shard_id {
            return Ok(());
        }
        if !allow_change {
            return Err(StoreError::ShardChanged {
                node_id: node_id.to_owned(),
                recorded,
                requested: shard_id.to_owned(),
            });
        }
        warn!(node_id, from = %recorded, to = shard_id, "changing the node's recorded shard id");
        sqlx::query(&d.update_node())
            .bind(shard_id)
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(ctx())?;
        Ok(())
    }

    /// Takes the lease on `shard_id` for `instance_id` (one process of `node_id`) for `ttl`, if
    /// it is free, expired, or already this instance's; otherwise reports the holder.
    pub async fn acquire_lease(
        &self,
        shard_id: &str,
        node_id: &str,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        check_id("shard id", shard_id, SHARD_ID_MAX_CHARS)?;
        check_id("node id", node_id, ID_MAX_CHARS)?;
        check_id("instance id", instance_id, ID_MAX_CHARS)?;
        let ctx = || StoreError::db(format!("acquiring the lease on shard {shard_id}"));
        let d = &self.dialect;
        let ttl = ttl_ms(ttl);
        let mut last_seen = None;
        for _ in 0..ACQUIRE_ROUNDS {
            let taken = sqlx::query(&d.take_lease())
                .bind(node_id)
                .bind(instance_id)
                .bind(ttl)
                .bind(shard_id)
                .bind(instance_id)
                .execute(&self.pool)
                .await
                .map_err(ctx())?;
            if taken.rows_affected() == 1 {
                return Ok(LeaseOutcome::Acquired);
            }
            let inserted = sqlx::query(&d.insert_lease())
                .bind(shard_id)
                .bind(node_id)
                .bind(instance_id)
                .bind(ttl)
                .execute(&self.pool)
                .await
                .map_err(ctx());
            match inserted {
                Ok(_) => return Ok(LeaseOutcome::Acquired),
                Err(e) if e.is_unique_violation() => {}
                Err(e) => return Err(e),
            }
            let holder = sqlx::query(&d.select_lease())
                .bind(shard_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(ctx())?;
            if let Some(row) = holder {
                let holder_node: String = row.try_get(0).map_err(ctx())?;
                let remaining: i64 = row.try_get(2).map_err(ctx())?;
                let outcome = if holder_node == node_id {
                    LeaseOutcome::HeldBySameNode {
                        expires_in: millis(remaining),
                    }
                } else {
                    LeaseOutcome::HeldByOtherNode {
                        node_id: holder_node,
                        expires_in: millis(remaining),
                    }
                };
                if remaining > 0 {
                    return Ok(outcome);
                }
                last_seen = Some(outcome);
            }
            // Expired or released between our statements: go round again.
        }
        Ok(last_seen.unwrap_or(LeaseOutcome::HeldByOtherNode {
            node_id: String::new(),
            expires_in: Duration::ZERO,
        }))
    }

    /// Extends this instance's lease by `ttl` from now. `false` when the lease is no longer this
    /// instance's (another took it over after it expired, or it was released): the worker must
    /// stop serving the shard. A lease that expired but was not taken over is renewed.
    pub async fn renew_lease(
        &self,
        shard_id: &str,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(&self.dialect.renew_lease())
            .bind(ttl_ms(ttl))
            .bind(shard_id)
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db(format!(
                "renewing the lease on shard {shard_id}"
            )))?;
        Ok(result.rows_affected() == 1)
    }

    /// Gives up this instance's lease (a graceful stop), so the shard can be taken at once.
    pub async fn release_lease(&self, shard_id: &str, instance_id: &str) -> Result<(), StoreError> {
        sqlx::query(&self.dialect.release_lease())
            .bind(shard_id)
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db(format!(
                "releasing the lease on shard {shard_id}"
            )))?;
        Ok(())
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
