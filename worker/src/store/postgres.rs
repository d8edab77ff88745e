//! PostgreSQL's commit path. A flush's transaction runs on a native connection (the Any driver
//! has neither `COPY` nor array parameters), where
//! - rows known to be new (above the shard's newest bucket, see `Frontier` in `db.rs`) stream in
//!   with one `COPY … FROM STDIN` per table, in the text format ([`push_copy_field`]): no
//!   statement to plan and no conflict check (measured in psql: 1 M rows of a SECONDS table
//!   2.5 s by `COPY` against 4.4 s by `INSERT … SELECT FROM unnest`);
//! - the other rows are upserted by [`Dialect::upsert_arrays`], each column's values bound as
//!   one typed array ([`ArrayColumn`]) in PostgreSQL's binary format.
//!
//! Everything else the store does on PostgreSQL — reads, purges, leases, migrations — goes
//! through the Any pool, as on the other backends.

use shardtally_publisher::protocol::AttrType;
use sqlx::postgres::{PgArguments, PgConnection, PgCopyIn, PgPool, Postgres};
use sqlx::query::Query;

use crate::layout::AggRow;
use crate::store::db::{BatchId, Store, Written, invalid_value, row_param};
use crate::store::dialect::{Dialect, MAX_ROWS_PER_ARRAY_STATEMENT};
use crate::store::error::{StoreError, ValueError};
use crate::store::schema::{Role, TableDef};
use crate::store::values::{Param, seq_to_db};

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// How much `COPY` data is gathered before it is sent: PostgreSQL reads and inserts one piece
/// while the next is encoded, and a flush of many new rows never holds all its text at once.
const COPY_CHUNK_BYTES: usize = 64 << 10;

impl Store {
    /// One attempt at a flush's transaction on PostgreSQL (see [`Store::commit`]): the batch
    /// ids, then each table's rows — the first `rows.len() - fresh[i]` of table `i` upserted,
    /// the last `fresh[i]` copied in.
    pub(super) async fn write_flush_postgres(
        &self,
        pool: &PgPool,
        shard_id: &str,
        ids: &[&BatchId],
        tables: &[(TableDef, Vec<&AggRow>)],
        fresh: &[usize],
    ) -> Result<Written, StoreError> {
        let mut tx = pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(StoreError::db("starting the commit transaction"))?;
        for chunk in ids.chunks(self.dialect.rows_per_statement(3)) {
            let sql = self.dialect.insert_batches(chunk.len());
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query
                    .bind(id.publisher_id.as_str())
                    .bind(seq_to_db(id.seq))
                    .bind(shard_id);
            }
            if let Err(source) = query.execute(&mut *tx).await {
                // A failed rollback only matters to the connection, which the pool then drops.
                let _ = tx.rollback().await;
                return self.batch_ids_refused(source, ids).await;
            }
        }
        for ((def, rows), &fresh) in tables.iter().zip(fresh) {
            let (old, new) = rows.split_at(rows.len() - fresh);
            if let Err(err) = upsert_arrays(&mut tx, &self.dialect, def, old, shard_id).await {
                let _ = tx.rollback().await;
                return Err(err);
            }
            if let Err(err) = copy_rows(&mut tx, &self.dialect, def, new, shard_id).await {
                let _ = tx.rollback().await;
                if err.is_unique_violation() {
                    return Ok(Written::RowExisted(def.name.clone()));
                }
                return Err(err);
            }
        }
        tx.commit()
            .await
            .map_err(StoreError::db("committing the flush"))?;
        Ok(Written::Committed)
    }
}

/// Upserts `rows` into `def`: statements of up to [`MAX_ROWS_PER_ARRAY_STATEMENT`] rows, each
/// column's values one array parameter (the `SHARD_ID` column's the shard id itself).
async fn upsert_arrays(
    conn: &mut PgConnection,
    dialect: &Dialect,
    def: &TableDef,
    rows: &[&AggRow],
    shard_id: &str,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = dialect.upsert_arrays(def);
    for chunk in rows.chunks(MAX_ROWS_PER_ARRAY_STATEMENT) {
        let mut query = sqlx::query(&sql);
        for c in &def.columns {
            if c.role == Role::Shard {
                query = query.bind(shard_id);
                continue;
            }
            let mut column = ArrayColumn::new(c.ty, chunk.len());
            for row in chunk {
                column
                    .push(row_param(def, c, row, shard_id)?)
                    .map_err(|source| invalid_value(def, c, source))?;
            }
            query = column.bind(query);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db(format!("adding deltas to {}", def.name)))?;
    }
    Ok(())
}

/// Copies `rows`, which the caller believes new, into `def` with one `COPY … FROM STDIN`. A row
/// that exists after all fails the copy with a unique violation.
async fn copy_rows(
    conn: &mut PgConnection,
    dialect: &Dialect,
    def: &TableDef,
    rows: &[&AggRow],
    shard_id: &str,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let context = || format!("copying new rows into {}", def.name);
    let mut copy = conn
        .copy_in_raw(&dialect.copy_from_stdin(def))
        .await
        .map_err(StoreError::db(context()))?;
    if let Err(err) = send_rows(&mut copy, def, rows, shard_id).await {
        // Ends the copy and reads the server's answer, so the connection is in step for the
        // caller's rollback (dropping `copy` would leave that answer unread).
        let _ = copy.abort("shardtally: the flush could not be sent").await;
        return Err(err);
    }
    let copied = copy.finish().await.map_err(StoreError::db(context()))?;
    if copied != rows.len() as u64 {
        return Err(StoreError::Database {
            context: context(),
            source: sqlx::Error::Protocol(format!(
                "COPY reported {copied} rows for {} sent",
                rows.len()
            )),
        });
    }
    Ok(())
}

/// Encodes `rows` in `COPY`'s text format and sends them in pieces of [`COPY_CHUNK_BYTES`].
async fn send_rows(
    copy: &mut PgCopyIn<&mut PgConnection>,
    def: &TableDef,
    rows: &[&AggRow],
    shard_id: &str,
) -> Result<(), StoreError> {
    let context = || format!("copying new rows into {}", def.name);
    let mut data = String::with_capacity(COPY_CHUNK_BYTES.min(rows.len() * 128) + 512);
    for row in rows {
        for (i, c) in def.columns.iter().enumerate() {
            if i > 0 {
                data.push('\t');
            }
            push_copy_field(&mut data, row_param(def, c, row, shard_id)?);
        }
        data.push('\n');
        if data.len() >= COPY_CHUNK_BYTES {
            copy.send(data.as_bytes())
                .await
                .map_err(StoreError::db(context()))?;
            data.clear();
        }
    }
    if !data.is_empty() {
        copy.send(data.as_bytes())
            .await
            .map_err(StoreError::db(context()))?;
    }
    Ok(())
}

/// Appends `p` as one field of `COPY`'s text format: null as `\N`; strings verbatim but for
/// backslash, tab, newline and carriage return, which are backslash-escaped (NUL never reaches
/// a store); integers in decimal; floats in Rust's shortest form that reads back as the same
/// value (only finite values reach a store); booleans `t`/`f`.
pub(crate) fn push_copy_field(out: &mut String, p: Param<'_>) {
    use std::fmt::Write as _;
    match p {
        Param::Null(_) => out.push_str("\\N"),
        Param::Str(s) => push_copy_text(out, s),
        Param::Int(x) => out.push_str(itoa::Buffer::new().format(x)),
        Param::Long(x) => out.push_str(itoa::Buffer::new().format(x)),
        // Writing into a String cannot fail.
        Param::Float(x) => _ = write!(out, "{x}"),
        Param::Double(x) => _ = write!(out, "{x}"),
        Param::Bool(x) => out.push(if x { 't' } else { 'f' }),
    }
}

/// Appends `s` with backslash, tab, newline and carriage return backslash-escaped. Those are
/// ASCII, and no byte of a multi-byte UTF-8 character is, so the text between them is copied
/// in runs, byte-wise.
fn push_copy_text(out: &mut String, s: &str) {
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        out.push_str(escaped);
        run = i + 1;
    }
    out.push_str(&s[run..]);
}

/// One column's values of a statement's rows, bound as one PostgreSQL array of the column's
/// type (nulls as null elements).
#[derive(Debug, PartialEq)]
pub(crate) enum ArrayColumn<'a> {
    Str(Vec<Option<&'a str>>),
    Int(Vec<Option<i32>>),
    Long(Vec<Option<i64>>),
    Float(Vec<Option<f32>>),
    Double(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
}

impl<'a> ArrayColumn<'a> {
    /// An empty column of Siddhi type `ty`, with room for `rows` values.
    pub(crate) fn new(ty: AttrType, rows: usize) -> ArrayColumn<'a> {
        match ty {
            AttrType::String => ArrayColumn::Str(Vec::with_capacity(rows)),
            AttrType::Int => ArrayColumn::Int(Vec::with_capacity(rows)),
            AttrType::Long => ArrayColumn::Long(Vec::with_capacity(rows)),
            AttrType::Float => ArrayColumn::Float(Vec::with_capacity(rows)),
            AttrType::Double => ArrayColumn::Double(Vec::with_capacity(rows)),
            AttrType::Bool => ArrayColumn::Bool(Vec::with_capacity(rows)),
        }
    }

    /// Appends `p`; a value of another type (which a checked row never has) is refused.
    pub(crate) fn push(&mut self, p: Param<'a>) -> Result<(), ValueError> {
        match (self, p) {
            (ArrayColumn::Str(v), Param::Null(_)) => v.push(None),
            (ArrayColumn::Int(v), Param::Null(_)) => v.push(None),
            (ArrayColumn::Long(v), Param::Null(_)) => v.push(None),
            (ArrayColumn::Float(v), Param::Null(_)) => v.push(None),
            (ArrayColumn::Double(v), Param::Null(_)) => v.push(None),
            (ArrayColumn::Bool(v), Param::Null(_)) => v.push(None),
            (ArrayColumn::Str(v), Param::Str(x)) => v.push(Some(x)),
            (ArrayColumn::Int(v), Param::Int(x)) => v.push(Some(x)),
            (ArrayColumn::Long(v), Param::Long(x)) => v.push(Some(x)),
            (ArrayColumn::Float(v), Param::Float(x)) => v.push(Some(x)),
            (ArrayColumn::Double(v), Param::Double(x)) => v.push(Some(x)),
            (ArrayColumn::Bool(v), Param::Bool(x)) => v.push(Some(x)),
            (column, p) => {
                return Err(ValueError::TypeMismatch {
                    expected: column.ty(),
                    got: p.ty(),
                });
            }
        }
        Ok(())
    }

    fn ty(&self) -> AttrType {
        match self {
            ArrayColumn::Str(_) => AttrType::String,
            ArrayColumn::Int(_) => AttrType::Int,
            ArrayColumn::Long(_) => AttrType::Long,
            ArrayColumn::Float(_) => AttrType::Float,
            ArrayColumn::Double(_) => AttrType::Double,
            ArrayColumn::Bool(_) => AttrType::Bool,
        }
    }

    fn bind(self, query: PgQuery<'a>) -> PgQuery<'a> {
        match self {
            ArrayColumn::Str(v) => query.bind(v),
            ArrayColumn::Int(v) => query.bind(v),
            ArrayColumn::Long(v) => query.bind(v),
            ArrayColumn::Float(v) => query.bind(v),
            ArrayColumn::Double(v) => query.bind(v),
            ArrayColumn::Bool(v) => query.bind(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(params: &[Param<'_>]) -> String {
        let mut out = String::new();
        for (i, p) in params.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            push_copy_field(&mut out, *p);
        }
        out
    }

    #[test]
    fn copy_fields_escape_what_the_text_format_reads_specially() {
        assert_eq!(
            fields(&[
                Param::Str("a,b"),
                Param::Str("tab\there"),
                Param::Str("two\nlines\r"),
                Param::Str("back\\slash"),
                Param::Str("\\N"),
                Param::Str("\\."),
                Param::Str(""),
                Param::Str(" {\"x\"} "),
                Param::Null(AttrType::String),
            ]),
            "a,b\ttab\\there\ttwo\\nlines\\r\tback\\\\slash\t\\\\N\t\\\\.\t\t {\"x\"} \t\\N"
        );
        // Multi-byte characters next to escaped bytes stay whole.
        assert_eq!(
            fields(&[
                Param::Str("é\t🍕\\ß\n"),
                Param::Str("\r\r"),
                Param::Str("Napoli 🍕")
            ]),
            "é\\t🍕\\\\ß\\n\t\\r\\r\tNapoli 🍕"
        );
        assert_eq!(
            fields(&[Param::Long(i64::MAX), Param::Int(i32::MIN), Param::Long(0)]),
            "9223372036854775807\t-2147483648\t0"
        );
        assert_eq!(
            fields(&[
                Param::Long(i64::MIN),
                Param::Int(-7),
                Param::Null(AttrType::Long),
                Param::Bool(true),
                Param::Bool(false),
            ]),
            "-9223372036854775808\t-7\t\\N\tt\tf"
        );
        // Floats read back exactly from their shortest form.
        for x in [0.1, -0.0, f64::MAX, f64::MIN_POSITIVE, 5e-324, 1.0 / 3.0] {
            let out = fields(&[Param::Double(x)]);
            assert_eq!(out.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{out}");
        }
        for x in [0.1f32, f32::MAX, f32::MIN_POSITIVE, 1e-45] {
            let out = fields(&[Param::Float(x)]);
            assert_eq!(out.parse::<f32>().unwrap().to_bits(), x.to_bits(), "{out}");
        }
    }

    #[test]
    fn array_columns_take_their_type_and_nulls_only() {
        let mut column = ArrayColumn::new(AttrType::Long, 3);
        column.push(Param::Long(7)).unwrap();
        column.push(Param::Null(AttrType::Long)).unwrap();
        assert_eq!(
            column.push(Param::Str("7")),
            Err(ValueError::TypeMismatch {
                expected: AttrType::Long,
                got: AttrType::String,
            })
        );
        assert_eq!(column, ArrayColumn::Long(vec![Some(7), None]));
        let mut column = ArrayColumn::new(AttrType::String, 1);
        column.push(Param::Str("Naples")).unwrap();
        assert_eq!(column, ArrayColumn::Str(vec![Some("Naples")]));
    }
}
