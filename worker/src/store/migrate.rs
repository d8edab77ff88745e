//! Creating, checking and migrating the schema: [`Store::ensure_schema`] and
//! [`Store::add_shard_id`]. Nothing here ever drops a table that holds data.

use std::time::Duration;

use sqlx::Row;
use tracing::{info, warn};

use crate::layout::Layout;
use crate::store::db::Store;
use crate::store::dialect::{Backend, Dialect};
use crate::store::error::StoreError;
use crate::store::schema::{Role, SHARD_ID, SHARD_ID_MAX_CHARS, SqlType, TableDef, check_id};

/// What the database says about an existing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableInfo {
    /// Column names in table order.
    pub(crate) columns: Vec<String>,
    /// Primary-key column names in key order.
    pub(crate) primary_key: Vec<String>,
}

impl TableInfo {
    fn has(&self, d: &Dialect, name: &str) -> bool {
        self.columns.iter().any(|c| d.same_column(c, name))
    }

    fn in_primary_key(&self, d: &Dialect, name: &str) -> bool {
        self.primary_key.iter().any(|c| d.same_column(c, name))
    }

    /// This table as it would be without `SHARD_ID`.
    fn without_shard_id(&self, d: &Dialect) -> TableInfo {
        let keep = |v: &Vec<String>| {
            v.iter()
                .filter(|c| !d.same_column(c, SHARD_ID))
                .cloned()
                .collect()
        };
        TableInfo {
            columns: keep(&self.columns),
            primary_key: keep(&self.primary_key),
        }
    }
}

/// Checks an existing table against the shape `def` (built with `partitioned`).
pub(crate) fn check_existing(
    d: &Dialect,
    def: &TableDef,
    partitioned: bool,
    info: &TableInfo,
) -> Result<(), StoreError> {
    let mismatch = |problem: String| {
        Err(StoreError::SchemaMismatch {
            table: def.name.clone(),
            problem,
        })
    };
    if partitioned && !(info.has(d, SHARD_ID) && info.in_primary_key(d, SHARD_ID)) {
        return Err(StoreError::MissingShardId {
            table: def.name.clone(),
        });
    }
    if !partitioned && info.has(d, SHARD_ID) {
        return mismatch(
            "it has a SHARD_ID column but the aggregation is not partitioned by id; enable \
             @PartitionById (or partitionById: true), or drop the aggregation's tables"
                .into(),
        );
    }
    let missing: Vec<&str> = def
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !info.has(d, n))
        .collect();
    let extra: Vec<&str> = info
        .columns
        .iter()
        .map(String::as_str)
        .filter(|n| !def.columns.iter().any(|c| d.same_column(&c.name, n)))
        .collect();
    let pk_differs = def.primary_key.len() != info.primary_key.len()
        || def.primary_key_names().any(|n| !info.in_primary_key(d, n));
    if missing.is_empty() && extra.is_empty() && !pk_differs {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing columns {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!("unexpected columns {}", extra.join(", ")));
    }
    if pk_differs {
        problems.push(format!(
            "primary key ({}) where ({}) is expected",
            info.primary_key.join(", "),
            def.primary_key_names().collect::<Vec<_>>().join(", ")
        ));
    }
    mismatch(format!(
        "{}. The app's aggregation changed since the table was created: restore its previous \
         definition, or drop the aggregation's tables to have them recreated (their data is lost)",
        problems.join("; ")
    ))
}

impl Store {
    /// Creates the meta tables and every `<Agg>_<GRANULARITY>` table that is missing
    /// (idempotent, safe to run from several workers at once), and checks the existing ones: a
    /// partitioned layout over a table without `SHARD_ID` in its key is
    /// [`StoreError::MissingShardId`]; other differences are [`StoreError::SchemaMismatch`].
    /// Never drops or alters anything.
    pub async fn ensure_schema(&self, layouts: &[Layout]) -> Result<(), StoreError> {
        let mut defs = Vec::new();
        for layout in layouts {
            for &g in &layout.granularities {
                defs.push((layout, TableDef::new(layout, g, layout.partitioned)?));
            }
        }
        for ddl in self.dialect.meta_ddl() {
            self.ddl(&ddl).await?;
        }
        for (layout, def) in defs {
            let info = match self.describe(&def.name).await? {
                Some(info) => info,
                None => {
                    self.ddl(&self.dialect.create_table(&def, &def.name, true))
                        .await?;
                    info!(table = %def.name, "created table");
                    // Re-read: a concurrent worker may have created it first, with another shape.
                    self.describe(&def.name)
                        .await?
                        .ok_or_else(|| StoreError::SchemaMismatch {
                            table: def.name.clone(),
                            problem: "it is still missing after CREATE TABLE".into(),
                        })?
                }
            };
            check_existing(&self.dialect, &def, layout.partitioned, &info)?;
        }
        Ok(())
    }

    /// Adds `SHARD_ID` to the existing tables of every partitioned layout that lack it (existing
    /// rows get `shard_id`) and rebuilds their primary key to include it, without losing rows.
    /// Returns the tables migrated. Tables that already have it, or do not exist, are left alone.
    ///
    /// SQLite rebuilds the table (create, copy, drop, rename) in one transaction; PostgreSQL
    /// alters it in one transaction (`SHARD_ID` becomes its last column); MySQL, whose DDL is not
    /// transactional, runs idempotent steps — re-running after an interruption finishes the job.
    pub async fn add_shard_id(
        &self,
        layouts: &[Layout],
        shard_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        check_id("shard id", shard_id, SHARD_ID_MAX_CHARS)?;
        let mut migrated = Vec::new();
        for layout in layouts.iter().filter(|l| l.partitioned) {
            for &g in &layout.granularities {
                let def = TableDef::new(layout, g, true)?;
                let Some(info) = self.describe(&def.name).await? else {
                    continue;
                };
                let d = &self.dialect;
                let has_column = info.has(d, SHARD_ID);
                if has_column && info.in_primary_key(d, SHARD_ID) {
                    continue;
                }
                // Everything but SHARD_ID must already match, or the copy would lose data.
                let plain = TableDef::new(layout, g, false)?;
                check_existing(d, &plain, false, &info.without_shard_id(d))?;
                match d.backend {
                    Backend::Sqlite => self.migrate_sqlite(&def, &info, shard_id).await?,
                    Backend::Postgres => self.migrate_postgres(&def, has_column, shard_id).await?,
                    Backend::MySql => {
                        self.migrate_mysql(&def, &info, has_column, shard_id)
                            .await?
                    }
                }
                warn!(table = %def.name, shard_id, "added SHARD_ID to the primary key");
                migrated.push(def.name);
            }
        }
        Ok(migrated)
    }

    async fn migrate_sqlite(
        &self,
        def: &TableDef,
        info: &TableInfo,
        shard_id: &str,
    ) -> Result<(), StoreError> {
        const TMP: &str = "shardtally_migrating";
        let d = &self.dialect;
        let ctx = || StoreError::db(format!("adding SHARD_ID to {}", def.name));
        let has_column = info.has(d, SHARD_ID);
        let mut tx = self.pool.begin_with(d.begin()).await.map_err(ctx())?;
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {}", d.quote(TMP)))
            .execute(&mut *tx)
            .await
            .map_err(ctx())?;
        sqlx::raw_sql(&d.create_table(def, TMP, false))
            .execute(&mut *tx)
            .await
            .map_err(ctx())?;
        let mut s = d.sql();
        s.push("INSERT INTO ").ident(TMP).push(" (");
        for (i, c) in def.columns.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            s.ident(&c.name);
        }
        s.push(") SELECT ");
        for (i, c) in def.columns.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            if c.role == Role::Shard {
                if has_column {
                    s.push("CASE WHEN ")
                        .ident(SHARD_ID)
                        .push(" IS NULL OR ")
                        .ident(SHARD_ID)
                        .push(" = '' THEN ")
                        .param()
                        .push(" ELSE ")
                        .ident(SHARD_ID)
                        .push(" END");
                } else {
                    s.param();
                }
            } else {
                s.ident(&c.name);
            }
        }
        s.push(" FROM ").ident(&def.name);
        sqlx::query(&s.finish())
            .bind(shard_id)
            .execute(&mut *tx)
            .await
            .map_err(ctx())?;
        sqlx::raw_sql(&format!("DROP TABLE {}", d.quote(&def.name)))
            .execute(&mut *tx)
            .await
            .map_err(ctx())?;
        sqlx::raw_sql(&format!(
            "ALTER TABLE {} RENAME TO {}",
            d.quote(TMP),
            d.quote(&def.name)
        ))
        .execute(&mut *tx)
        .await
        .map_err(ctx())?;
        tx.commit().await.map_err(ctx())
    }

    async fn migrate_postgres(
        &self,
        def: &TableDef,
        has_column: bool,
        shard_id: &str,
    ) -> Result<(), StoreError> {
        let d = &self.dialect;
        let ctx = || StoreError::db(format!("adding SHARD_ID to {}", def.name));
        let table = d.quote(&def.name);
        let column = d.quote(SHARD_ID);
        let pk_name: Option<String> = sqlx::query(&d.primary_key_name_query())
            .bind(def.name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx())?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(ctx())?;
        let mut tx = self.pool.begin_with(d.begin()).await.map_err(ctx())?;
        if !has_column {
            sqlx::raw_sql(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {}",
                d.type_name(SqlType::Varchar(SHARD_ID_MAX_CHARS))
            ))
            .execute(&mut *tx)
            .await
            .map_err(ctx())?;
        }
        sqlx::query(&format!(
            "UPDATE {table} SET {column} = $1 WHERE {column} IS NULL OR {column} = ''"
        ))
        .bind(shard_id)
        .execute(&mut *tx)
        .await
        .map_err(ctx())?;
        let mut ddl = format!("ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL");
        if let Some(pk) = pk_name {
            ddl.push_str(&format!(", DROP CONSTRAINT {}", d.quote(&pk)));
        }
        ddl.push_str(&format!(", ADD PRIMARY KEY ({})", quoted_key(d, def)));
        sqlx::raw_sql(&ddl).execute(&mut *tx).await.map_err(ctx())?;
        tx.commit().await.map_err(ctx())
    }

    async fn migrate_mysql(
        &self,
        def: &TableDef,
        info: &TableInfo,
        has_column: bool,
        shard_id: &str,
    ) -> Result<(), StoreError> {
        let d = &self.dialect;
        let ctx = || StoreError::db(format!("adding SHARD_ID to {}", def.name));
        let table = d.quote(&def.name);
        let column = d.quote(SHARD_ID);
        let ty = d.type_name(SqlType::Varchar(SHARD_ID_MAX_CHARS));
        if !has_column {
            sqlx::raw_sql(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {ty} NOT NULL DEFAULT '' AFTER {}",
                d.quote(&def.columns[0].name)
            ))
            .execute(&self.pool)
            .await
            .map_err(ctx())?;
        }
        sqlx::query(&format!(
            "UPDATE {table} SET {column} = ? WHERE {column} IS NULL OR {column} = ''"
        ))
        .bind(shard_id)
        .execute(&self.pool)
        .await
        .map_err(ctx())?;
        let drop_pk = if info.primary_key.is_empty() {
            ""
        } else {
            "DROP PRIMARY KEY, "
        };
        sqlx::raw_sql(&format!(
            "ALTER TABLE {table} MODIFY {column} {ty} NOT NULL, {drop_pk}ADD PRIMARY KEY ({})",
            quoted_key(d, def)
        ))
        .execute(&self.pool)
        .await
        .map_err(ctx())?;
        Ok(())
    }

    /// The columns and primary key of `table`, or `None` when it does not exist.
    pub(crate) async fn describe(&self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        let ctx = || StoreError::db(format!("inspecting table {table}"));
        let rows = sqlx::query(&self.dialect.columns_query())
            .bind(table)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx())?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(rows.len());
        let mut primary_key = Vec::new();
        if self.dialect.backend == Backend::Sqlite {
            let mut keyed = Vec::new();
            for r in &rows {
                let name: String = r.try_get(0).map_err(ctx())?;
                let pk: i64 = r.try_get(1).map_err(ctx())?;
                if pk > 0 {
                    keyed.push((pk, name.clone()));
                }
                columns.push(name);
            }
            keyed.sort();
            primary_key = keyed.into_iter().map(|(_, n)| n).collect();
        } else {
            for r in &rows {
                columns.push(r.try_get(0).map_err(ctx())?);
            }
            let rows = sqlx::query(&self.dialect.primary_key_query())
                .bind(table)
                .fetch_all(&self.pool)
                .await
                .map_err(ctx())?;
            for r in &rows {
                primary_key.push(r.try_get(0).map_err(ctx())?);
            }
        }
        Ok(Some(TableInfo {
            columns,
            primary_key,
        }))
    }

    /// Runs an idempotent DDL statement, retrying a few times: concurrent `CREATE … IF NOT
    /// EXISTS` from several workers can collide on PostgreSQL's catalogs (a unique violation on
    /// `pg_type`), and the retry then finds the object in place.
    async fn ddl(&self, sql: &str) -> Result<(), StoreError> {
        let mut attempt = 0u32;
        loop {
            match sqlx::raw_sql(sql).execute(&self.pool).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 4 => {
                    attempt += 1;
                    warn!(error = %e, attempt, "schema statement failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(source) => {
                    return Err(StoreError::Database {
                        context: "creating the schema".into(),
                        source,
                    });
                }
            }
        }
    }
}

fn quoted_key(d: &Dialect, def: &TableDef) -> String {
    def.primary_key_names()
        .map(|n| d.quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Granularity;
    use crate::store::schema::tests::geo_layout;

    fn info(columns: &[&str], pk: &[&str]) -> TableInfo {
        TableInfo {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
        }
    }

    const COLS: [&str; 8] = [
        "AGG_TIMESTAMP",
        "AGG_EVENT_TIMESTAMP",
        "country",
        "city",
        "apiName",
        "AGG_LAST_EVENT_TIMESTAMP",
        "AGG_COUNT",
        "AGG_SUM_latency",
    ];
    const PK: [&str; 4] = ["AGG_TIMESTAMP", "AGG_EVENT_TIMESTAMP", "country", "city"];

    #[test]
    fn existing_tables_are_checked() {
        let d = Dialect::new(Backend::Postgres);
        let layout = geo_layout();
        let part = TableDef::new(&layout, Granularity::Hours, true).unwrap();
        let plain = TableDef::new(&layout, Granularity::Hours, false).unwrap();
        let unpartitioned = info(&COLS, &PK);

        assert_eq!(
            check_existing(&d, &plain, false, &unpartitioned).ok(),
            Some(())
        );
        let err = check_existing(&d, &part, true, &unpartitioned).unwrap_err();
        assert!(
            matches!(&err, StoreError::MissingShardId { table } if table == "GeoLocationAgg_HOURS")
        );
        let msg = err.to_string();
        assert!(msg.contains("drop the aggregation's tables"), "{msg}");
        assert!(
            msg.contains("shardtally-worker migrate --add-shard-id"),
            "{msg}"
        );

        // SHARD_ID present but not in the key: same refusal.
        let mut cols = COLS.to_vec();
        cols.insert(1, "SHARD_ID");
        let half = info(&cols, &PK);
        assert!(matches!(
            check_existing(&d, &part, true, &half),
            Err(StoreError::MissingShardId { .. })
        ));
        let mut pk = PK.to_vec();
        pk.insert(1, "SHARD_ID");
        assert_eq!(
            check_existing(&d, &part, true, &info(&cols, &pk)).ok(),
            Some(())
        );
        assert!(matches!(
            check_existing(&d, &plain, false, &info(&cols, &pk)),
            Err(StoreError::SchemaMismatch { .. })
        ));

        // A missing and an unexpected column.
        let mut cols = COLS.to_vec();
        cols[4] = "apiVersion";
        let err = check_existing(&d, &plain, false, &info(&cols, &PK)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("missing columns apiName"), "{msg}");
        assert!(msg.contains("unexpected columns apiVersion"), "{msg}");

        // PostgreSQL names are case-sensitive; SQLite's are not.
        let mut cols = COLS.to_vec();
        cols[2] = "COUNTRY";
        let mut pk = PK.to_vec();
        pk[2] = "COUNTRY";
        assert!(check_existing(&d, &plain, false, &info(&cols, &pk)).is_err());
        let sqlite = Dialect::new(Backend::Sqlite);
        assert_eq!(
            check_existing(&sqlite, &plain, false, &info(&cols, &pk)).ok(),
            Some(())
        );
    }
}
