//! The store's errors and their classification into retriable and fatal.
//!
//! A retriable error is one where the same call may succeed later without anyone changing
//! anything: the connection dropped, the pool timed out, the database chose this transaction as a
//! deadlock or serialization victim, SQLite was busy, the server is restarting or out of some
//! resource. The worker keeps its batches unacked and tries again. Everything else — schema
//! mismatches, constraint violations, values a column cannot hold, bad SQL — is fatal: retrying
//! cannot help, and the cause must be reported.
//!
//! The classification of database errors is a pure function of the backend's error code
//! ([`DbErrorCode`]), unit-tested against the codes each backend documents.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use shardtally_publisher::protocol::AttrType;
use sqlx::error::DatabaseError;

/// Why a value cannot be stored in its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A group-by value is null; key columns are `NOT NULL` (they are part of the primary key,
    /// which PostgreSQL and MySQL cannot build over nullable columns).
    #[error("a group-by value is null; group-by values must not be null")]
    NullKey,
    /// A string is longer than its column holds (counted in Unicode scalar values, as
    /// PostgreSQL and MySQL count `VARCHAR` lengths). Never truncated silently.
    #[error("string of {chars} characters is longer than the column's {max_chars}")]
    TooLong {
        /// The column's capacity in characters.
        max_chars: usize,
        /// The string's length in characters.
        chars: usize,
    },
    /// A string contains U+0000, which PostgreSQL cannot store; refused on every backend so
    /// that all three behave alike.
    #[error("string contains a NUL character (U+0000), which cannot be stored")]
    ContainsNul,
    /// A float or double is NaN or infinite, which MySQL cannot store and SQLite turns into
    /// null; refused on every backend.
    #[error("{value} is not a finite number")]
    NotFinite {
        /// The offending value, as text.
        value: String,
    },
    /// The value's type is not the column's (and not a lossless widening of it, such as an
    /// `int` into a `long` column).
    #[error("a {got} value cannot be stored in a {expected} column")]
    TypeMismatch {
        /// The column's type.
        expected: AttrType,
        /// The value's type.
        got: AttrType,
    },
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL's scheme is none of `sqlite:`, `postgres://`, `postgresql://`,
    /// `mysql://`, `mariadb://`.
    #[error(
        "unsupported database URL scheme `{scheme}` (expected sqlite:, postgres://, postgresql://, mysql:// or mariadb://)"
    )]
    UnsupportedUrl {
        /// The scheme found (the text before the first `:`).
        scheme: String,
    },
    /// Connecting to the database (or setting up the connection) failed.
    #[error("cannot connect to the {backend} database")]
    Connect {
        /// The backend named by the URL.
        backend: crate::store::Backend,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed; `context` says what the store was doing.
    #[error("database error while {context}")]
    Database {
        /// What the store was doing (`inserting batch ids`, `upserting into GeoLocationAgg_HOURS`).
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// An aggregation table exists without `SHARD_ID` in its primary key while the aggregation is
    /// partitioned by id.
    #[error(
        "table `{table}` has no SHARD_ID column in its primary key, but its aggregation is partitioned by id \
         (@PartitionById or partitionById: true). Either drop the aggregation's tables (all of \
         <Agg>_SECONDS … <Agg>_YEARS; their data is lost), or run \
         `shardtally-worker migrate --add-shard-id`, which adds SHARD_ID to the primary key keeping \
         every row under this worker's shard id. Nothing is dropped automatically."
    )]
    MissingShardId {
        /// The table lacking `SHARD_ID`.
        table: String,
    },
    /// An existing table does not have the shape the aggregation needs.
    #[error("table `{table}` does not match its aggregation: {problem}")]
    SchemaMismatch {
        /// The table.
        table: String,
        /// What differs, and the remedy.
        problem: String,
    },
    /// An aggregation or column name cannot be used as an SQL identifier on every backend.
    #[error("`{name}` cannot be used as a table or column name: {reason}")]
    InvalidIdentifier {
        /// The name.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// An identifier value (shard id, node id, publisher id, instance id) is empty, too long or
    /// contains NUL.
    #[error("{what} `{value}` is invalid: {reason}")]
    InvalidId {
        /// Which id (`shard id`, `node id`, …).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The engine could not hand out a flush's rows: a long sum overflowed 64 bits (a value no
    /// backend could store either). Nothing was written.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// A value of a delta cannot be stored in its column. Nothing was written.
    #[error("cannot store a value in `{table}`.`{column}`")]
    InvalidValue {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: ValueError,
    },
    /// A delta row does not have as many keys, latest values or measures as its layout.
    #[error(
        "a row for `{table}` has {got} {what} but the layout has {expected}; the engine and the layout disagree"
    )]
    RowShape {
        /// The table.
        table: String,
        /// `keys`, `latest values` or `measures`.
        what: &'static str,
        /// Values in the layout.
        expected: usize,
        /// Values in the row.
        got: usize,
    },
    /// A fetch would read more rows than its caller allows.
    #[error("more than {max} rows in `{table}` in the range")]
    TooManyRows {
        /// The table read.
        table: String,
        /// The most rows allowed.
        max: usize,
    },
    /// The database stopped a fetch that ran longer than its caller allowed.
    #[error("reading `{table}` took longer than {after:?}: the database stopped it")]
    StatementTimedOut {
        /// The table read.
        table: String,
        /// The bound it ran under.
        after: Duration,
    },
    /// A delta or a fetch names a granularity the layout does not keep.
    #[error("aggregation `{aggregation}` does not keep {granularity} buckets")]
    GranularityNotKept {
        /// The aggregation.
        aggregation: String,
        /// The granularity asked for.
        granularity: crate::bucket::Granularity,
    },
    /// The same batch id appears twice in one commit; the caller must not add one batch's events
    /// twice.
    #[error("batch ({publisher_id}, {seq}) appears twice in one commit")]
    DuplicateBatchInCommit {
        /// The publisher id.
        publisher_id: String,
        /// The batch sequence number.
        seq: u64,
    },
    /// A node id comes back under a different shard id than the one recorded on its first use.
    #[error(
        "node `{node_id}` was first used with shard id `{recorded}` and now asks for `{requested}`; \
         a shard id must not change (its rows would be split across two shards). Start it with \
         shard id `{recorded}`, or override explicitly if the change is intended."
    )]
    ShardChanged {
        /// The node id.
        node_id: String,
        /// The shard id recorded in the database.
        recorded: String,
        /// The shard id asked for now.
        requested: String,
    },
    /// A value read back from a table has an unexpected type.
    #[error("cannot decode `{table}`.`{column}`: {problem}")]
    Decode {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What was found.
        problem: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed later unchanged (connection, pool timeout, deadlock,
    /// serialization failure, SQLite busy/locked, server restarting or out of resources).
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Connect { source, .. } | StoreError::Database { source, .. } => {
                is_retriable_sqlx(source)
            }
            _ => false,
        }
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Database { context, source }
    }

    /// Whether this is a unique-constraint violation reported by the database.
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => source
                .as_database_error()
                .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation),
            _ => false,
        }
    }
}

/// A database error's identifying code, per backend: what classification looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DbErrorCode<'a> {
    /// SQLite extended result code (the primary code is its low byte).
    Sqlite(i32),
    /// PostgreSQL SQLSTATE (also CockroachDB, YugabyteDB).
    Postgres(&'a str),
    /// MySQL/MariaDB/TiDB error number and SQLSTATE.
    MySql {
        /// The server's error number (`1213` for a deadlock).
        number: u16,
        /// The SQLSTATE, when sent.
        sqlstate: Option<&'a str>,
    },
    /// An error from a driver this module does not know; classified as fatal.
    Other,
}

impl fmt::Display for DbErrorCode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbErrorCode::Sqlite(c) => write!(f, "SQLite code {c}"),
            DbErrorCode::Postgres(s) => write!(f, "SQLSTATE {s}"),
            DbErrorCode::MySql { number, sqlstate } => {
                write!(
                    f,
                    "MySQL error {number} (SQLSTATE {})",
                    sqlstate.unwrap_or("?")
                )
            }
            DbErrorCode::Other => f.write_str("unknown driver error"),
        }
    }
}

/// Extracts the backend code of a database error (the Any driver hands the native error through).
fn db_error_code(e: &dyn DatabaseError) -> (DbErrorCode<'_>, Option<Cow<'_, str>>) {
    if let Some(e) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return (DbErrorCode::Postgres(e.code()), None);
    }
    if let Some(e) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return (
            DbErrorCode::MySql {
                number: e.number(),
                sqlstate: e.code(),
            },
            None,
        );
    }
    if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        let code = e.code();
        let parsed = code.as_deref().and_then(|c| c.parse::<i32>().ok());
        return (parsed.map_or(DbErrorCode::Other, DbErrorCode::Sqlite), code);
    }
    (DbErrorCode::Other, None)
}

/// Classifies a driver error: transport and pool problems are retriable; database errors follow
/// [`is_retriable_code`]; everything else (configuration, decoding, bad arguments) is fatal.
pub(crate) fn is_retriable_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        // The handshake with the server: its certificate or the network, never the rows.
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => is_retriable_code(&db_error_code(db.as_ref()).0),
        _ => false,
    }
}

/// Whether a database error code means "try again later" (see the module docs).
pub(crate) fn is_retriable_code(code: &DbErrorCode<'_>) -> bool {
    match *code {
        DbErrorCode::Sqlite(extended) => {
            // SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_IOERR (10), SQLITE_FULL (13) and their
            // extended codes (BUSY_SNAPSHOT 517, LOCKED_SHAREDCACHE 262, IOERR_* …).
            matches!(extended & 0xff, 5 | 6 | 10 | 13)
        }
        DbErrorCode::Postgres(sqlstate) => postgres_retriable(sqlstate),
        DbErrorCode::MySql { number, sqlstate } => {
            mysql_retriable_number(number)
                || sqlstate.is_some_and(|s| s == "40001" || s.starts_with("08"))
        }
        DbErrorCode::Other => false,
    }
}

fn postgres_retriable(sqlstate: &str) -> bool {
    matches!(
        sqlstate,
        "40001" // serialization_failure (also CockroachDB's retry error)
            | "40P01" // deadlock_detected
            | "40003" // statement_completion_unknown (CockroachDB ambiguous result; dedup makes a retry safe)
            | "55P03" // lock_not_available
            | "57014" // query_canceled (statement_timeout, pg_cancel_backend): the rows are fine
            | "57P01" // admin_shutdown
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now
            | "58000" // system_error
            | "58030" // io_error
    ) || sqlstate.starts_with("08") // connection_exception
        || sqlstate.starts_with("53") // insufficient_resources (disk full, out of memory, too many connections)
}

fn mysql_retriable_number(number: u16) -> bool {
    matches!(
        number,
        1021 // ER_DISK_FULL
            | 1040 // ER_CON_COUNT_ERROR (too many connections)
            | 1053 // ER_SERVER_SHUTDOWN
            | 1114 // ER_RECORD_FILE_FULL (table is full)
            | 1205 // ER_LOCK_WAIT_TIMEOUT
            | 1213 // ER_LOCK_DEADLOCK
            | 1317 // ER_QUERY_INTERRUPTED (KILL QUERY, max_statement_time): the rows are fine
            | 1158..=1161 // network read/write errors
            | 1614 // ER_XA_RBDEADLOCK
            | 1637 // ER_TOO_MANY_CONCURRENT_TRXS
            | 1927 // MariaDB ER_CONNECTION_KILLED
            | 2002 | 2003 | 2006 | 2013 // client: can't connect, server has gone away, lost connection
            | 8002 | 8022 | 8028 // TiDB: write conflict (for update), retryable txn error, schema changed
            | 9001..=9005 // TiDB: PD/TiKV timeouts, server busy, resolve lock timeout, region unavailable
            | 9007 // TiDB: write conflict
    )
}

/// Whether the database stopped a statement for running past its time bound (PostgreSQL
/// `statement_timeout`: 57014 query_canceled; MySQL `MAX_EXECUTION_TIME`: 3024; MariaDB
/// `max_statement_time`: 1969).
pub(crate) fn is_statement_timeout(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    match db_error_code(db.as_ref()).0 {
        DbErrorCode::Postgres(sqlstate) => sqlstate == "57014",
        DbErrorCode::MySql { number, .. } => matches!(number, 1969 | 3024),
        DbErrorCode::Sqlite(_) | DbErrorCode::Other => false,
    }
}

/// The backend code of a driver error, for messages and tests.
#[cfg(test)]
fn code_of(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => Some(db_error_code(db.as_ref()).0.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes() {
        for code in [5, 6, 10, 13, 261, 517, 773, 262, 266, 3850] {
            assert!(is_retriable_code(&DbErrorCode::Sqlite(code)), "{code}");
        }
        // SQLITE_ERROR, CONSTRAINT, CONSTRAINT_PRIMARYKEY, CONSTRAINT_UNIQUE, TOOBIG, MISMATCH,
        // READONLY, CORRUPT, CANTOPEN.
        for code in [1, 19, 1555, 2067, 18, 20, 8, 11, 14] {
            assert!(!is_retriable_code(&DbErrorCode::Sqlite(code)), "{code}");
        }
    }

    #[test]
    fn postgres_codes() {
        for s in [
            "40001", "40P01", "40003", "55P03", "57P01", "57P02", "57P03", "08006", "08001",
            "53300", "53100", "58030", "57014",
        ] {
            assert!(is_retriable_code(&DbErrorCode::Postgres(s)), "{s}");
        }
        // unique_violation, not_null_violation, string_data_right_truncation, undefined_table,
        // undefined_column, syntax_error, numeric_value_out_of_range, invalid_byte_sequence.
        for s in [
            "23505", "23502", "22001", "42P01", "42703", "42601", "22003", "22021", "XX000",
        ] {
            assert!(!is_retriable_code(&DbErrorCode::Postgres(s)), "{s}");
        }
    }

    #[test]
    fn mysql_codes() {
        let retriable = [
            (1213, Some("40001")),
            (1205, Some("HY000")),
            (1040, Some("08004")),
            (1053, Some("08S01")),
            (2006, None),
            (2013, None),
            (1927, Some("70100")),
            (9007, Some("HY000")),
            (8028, Some("HY000")),
            (1317, Some("70100")),
            // An unknown number with a connection-class SQLSTATE.
            (4242, Some("08S01")),
        ];
        for (number, sqlstate) in retriable {
            assert!(
                is_retriable_code(&DbErrorCode::MySql { number, sqlstate }),
                "{number}"
            );
        }
        // Duplicate entry, data too long, unknown table, unknown column, syntax, out of range,
        // incorrect string value, key too long.
        let fatal = [
            (1062, Some("23000")),
            (1406, Some("22001")),
            (1146, Some("42S02")),
            (1054, Some("42S22")),
            (1064, Some("42000")),
            (1690, Some("22003")),
            (1366, Some("HY000")),
            (1071, Some("42000")),
        ];
        for (number, sqlstate) in fatal {
            assert!(
                !is_retriable_code(&DbErrorCode::MySql { number, sqlstate }),
                "{number}"
            );
        }
        assert!(!is_retriable_code(&DbErrorCode::Other));
    }

    #[test]
    fn driver_errors() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_retriable_sqlx(&sqlx::Error::Io(io)));
        assert!(is_retriable_sqlx(&sqlx::Error::PoolTimedOut));
        assert!(is_retriable_sqlx(&sqlx::Error::WorkerCrashed));
        assert!(!is_retriable_sqlx(&sqlx::Error::PoolClosed));
        assert!(!is_retriable_sqlx(&sqlx::Error::RowNotFound));
        assert!(!is_retriable_sqlx(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!is_retriable_sqlx(&sqlx::Error::Configuration(
            "bad".into()
        )));

        let e = StoreError::Database {
            context: "testing".into(),
            source: sqlx::Error::PoolTimedOut,
        };
        assert!(e.is_retriable());
        assert!(!StoreError::MissingShardId { table: "T".into() }.is_retriable());
    }

    /// Real SQLite errors, produced by a real database, classify as documented.
    #[tokio::test]
    async fn real_sqlite_errors() {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let dir = std::env::temp_dir().join(format!("shardtally-err-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
        let mut a = sqlx::AnyConnection::connect(&url).await.unwrap();
        let mut b = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .execute(&mut a)
            .await
            .unwrap();

        // Unique violation: fatal.
        sqlx::raw_sql("INSERT INTO t VALUES (1)")
            .execute(&mut a)
            .await
            .unwrap();
        let dup = sqlx::raw_sql("INSERT INTO t VALUES (1)")
            .execute(&mut a)
            .await
            .unwrap_err();
        assert_eq!(code_of(&dup).as_deref(), Some("SQLite code 1555"));
        assert!(!is_retriable_sqlx(&dup));

        // Unknown table: fatal.
        let missing = sqlx::raw_sql("SELECT * FROM nope")
            .execute(&mut a)
            .await
            .unwrap_err();
        assert!(!is_retriable_sqlx(&missing));

        // Busy: `a` holds the write lock, `b` does not wait.
        sqlx::raw_sql("PRAGMA busy_timeout = 0")
            .execute(&mut b)
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .unwrap();
        let busy = sqlx::raw_sql("INSERT INTO t VALUES (2)")
            .execute(&mut b)
            .await
            .unwrap_err();
        assert_eq!(code_of(&busy).as_deref(), Some("SQLite code 5"));
        assert!(is_retriable_sqlx(&busy));
        sqlx::raw_sql("ROLLBACK").execute(&mut a).await.unwrap();
        drop((a, b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
