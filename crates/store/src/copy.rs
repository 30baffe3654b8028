//! Moving an install from SQLite to PostgreSQL (`overvisor migrate --to`):
//! every table of the SQLite database is copied, row for row, into an
//! empty PostgreSQL database migrated to the same version, in one
//! transaction, and the row counts of every table are compared afterwards.
//!
//! The tables are found in the source (not listed here), so a table a
//! later migration adds is copied too once its PostgreSQL mirror exists;
//! a table or column without a counterpart stops the copy before anything
//! is written. Each value is converted to the type of its PostgreSQL column
//! (text, integers, booleans, bytes, timestamps). Sealed secrets stay valid:
//! they are bound to row ids, which are copied unchanged.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool, Row, SqlitePool};

use crate::{Db, Result, Store, StoreError};

/// How many rows of one table went across.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    pub rows: i64,
}

/// Rows read from SQLite and inserted at once (PostgreSQL allows 65,535
/// parameters per statement; no table here has 40 columns).
const BATCH: usize = 500;

/// The migrations table each backend keeps for itself: not copied.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// A PostgreSQL column's type, as far as the copy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Boolean,
    Bytes,
    Timestamp,
}

impl Kind {
    fn of(data_type: &str) -> Option<Self> {
        Some(match data_type {
            "text" | "character varying" => Kind::Text,
            "bigint" | "integer" | "smallint" => Kind::Integer,
            "boolean" => Kind::Boolean,
            "bytea" => Kind::Bytes,
            "timestamp with time zone" => Kind::Timestamp,
            _ => return None,
        })
    }
}

struct Table {
    name: String,
    columns: Vec<(String, Kind)>,
}

/// Copies every table of `from` (SQLite) into `to` (PostgreSQL, empty).
/// Both are migrated first; returns each table's row count, which the
/// target has been checked to hold as well.
pub async fn sqlite_to_postgres(from: &Store, to: &Store) -> Result<Vec<TableCount>> {
    let (Db::Sqlite(src), Db::Postgres(dst)) = (from.db(), to.db()) else {
        return Err(StoreError::Conflict(
            "the copy goes from a SQLite database to a PostgreSQL one".into(),
        ));
    };
    from.migrate().await?;
    to.migrate().await?;
    same_migrations(src, dst).await?;
    let tables = tables_in_order(src, dst).await?;
    for table in &tables {
        let rows = count(to, &table.name).await?;
        if rows > 0 {
            return Err(StoreError::Conflict(format!(
                "the target database is not empty (table {} has {rows} rows): copy into a new database",
                table.name
            )));
        }
    }
    let mut tx = dst.begin().await?;
    for table in &tables {
        copy_table(src, &mut tx, table).await?;
    }
    restart_identities(&mut tx).await?;
    tx.commit().await?;

    let mut counts = Vec::with_capacity(tables.len());
    for table in &tables {
        let (source, target) = (
            count(from, &table.name).await?,
            count(to, &table.name).await?,
        );
        if source != target {
            return Err(StoreError::Corrupt(format!(
                "table {}: {source} rows in SQLite but {target} in PostgreSQL after the copy",
                table.name
            )));
        }
        counts.push(TableCount {
            table: table.name.clone(),
            rows: target,
        });
    }
    Ok(counts)
}

/// Both databases must be at the same migration: the same schema version
/// on both sides is what makes a column-for-column copy right.
async fn same_migrations(src: &SqlitePool, dst: &PgPool) -> Result<()> {
    let sql = format!("SELECT version FROM {MIGRATIONS_TABLE} WHERE success ORDER BY version");
    let source: Vec<i64> = sqlx::query_scalar(&sql).fetch_all(src).await?;
    let target: Vec<i64> = sqlx::query_scalar(&sql).fetch_all(dst).await?;
    if source != target {
        return Err(StoreError::Conflict(format!(
            "the databases are at different migrations (SQLite {source:?}, PostgreSQL {target:?}): \
             this build lacks a PostgreSQL mirror of a migration"
        )));
    }
    Ok(())
}

/// Quotes an identifier read from a catalog (always plain names here).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The source's tables, each referenced table before the tables that
/// reference it, with the target's type for each column.
async fn tables_in_order(src: &SqlitePool, dst: &PgPool) -> Result<Vec<Table>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         AND name <> $1 ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(src)
    .await?;
    let mut pending = Vec::new();
    for name in names {
        let parents: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list($1)")
                .bind(&name)
                .fetch_all(src)
                .await?;
        let columns = columns(src, dst, &name).await?;
        pending.push((Table { name, columns }, parents));
    }
    let mut ordered: Vec<Table> = Vec::new();
    while !pending.is_empty() {
        let done: BTreeSet<String> = ordered.iter().map(|t| t.name.clone()).collect();
        let ready = pending.iter().position(|(table, parents)| {
            parents.iter().all(|p| *p == table.name || done.contains(p))
        });
        let Some(i) = ready else {
            return Err(StoreError::Corrupt(
                "the tables' foreign keys form a cycle".into(),
            ));
        };
        ordered.push(pending.remove(i).0);
    }
    Ok(ordered)
}

/// The source table's columns with their PostgreSQL types; every column
/// must exist in the target.
async fn columns(src: &SqlitePool, dst: &PgPool, table: &str) -> Result<Vec<(String, Kind)>> {
    let source: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
            .bind(table)
            .fetch_all(src)
            .await?;
    let target: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind(table)
    .fetch_all(dst)
    .await?;
    if target.is_empty() {
        return Err(StoreError::Conflict(format!(
            "table {table} has no counterpart in PostgreSQL"
        )));
    }
    source
        .into_iter()
        .map(|column| {
            let data_type = target
                .iter()
                .find(|(name, _)| *name == column)
                .map(|(_, t)| t.as_str())
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "column {table}.{column} has no counterpart in PostgreSQL"
                    ))
                })?;
            let kind = Kind::of(data_type).ok_or_else(|| {
                StoreError::Conflict(format!(
                    "column {table}.{column}: PostgreSQL type {data_type} is not copied"
                ))
            })?;
            Ok((column, kind))
        })
        .collect()
}

async fn count(store: &Store, table: &str) -> Result<i64> {
    let sql = format!("SELECT COUNT(*) FROM {}", ident(table));
    Ok(crate::with_pool!(store, |pool| {
        sqlx::query_scalar::<_, i64>(&sql).fetch_one(pool).await
    })?)
}

/// Copies one table in batches, in rowid order (for `jobs`, creation
/// order: a parent job is inserted before its children).
async fn copy_table(
    src: &SqlitePool,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &Table,
) -> Result<()> {
    let names: Vec<String> = table.columns.iter().map(|(n, _)| ident(n)).collect();
    let select = format!(
        "SELECT rowid AS \"__rowid\", {} FROM {} WHERE rowid > $1 ORDER BY rowid LIMIT {BATCH}",
        names.join(", "),
        ident(&table.name)
    );
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(&select).bind(after).fetch_all(src).await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.try_get("__rowid")?;
        let mut args = PgArguments::default();
        let mut tuples = Vec::with_capacity(rows.len());
        let mut n = 0;
        for row in &rows {
            let mut params = Vec::with_capacity(table.columns.len());
            for (name, kind) in &table.columns {
                bind_value(&mut args, row, name, *kind)?;
                n += 1;
                params.push(format!("${n}"));
            }
            tuples.push(format!("({})", params.join(", ")));
        }
        let insert = format!(
            "INSERT INTO {} ({}) VALUES {}",
            ident(&table.name),
            names.join(", "),
            tuples.join(", ")
        );
        sqlx::query_with(&insert, args).execute(&mut **tx).await?;
    }
}

/// Reads column `name` of a SQLite row as `kind` and binds it.
fn bind_value(
    args: &mut PgArguments,
    row: &sqlx::sqlite::SqliteRow,
    name: &str,
    kind: Kind,
) -> Result<()> {
    let bound = match kind {
        Kind::Text => args.add(row.try_get::<Option<String>, _>(name)?),
        Kind::Integer => args.add(row.try_get::<Option<i64>, _>(name)?),
        Kind::Boolean => args.add(row.try_get::<Option<bool>, _>(name)?),
        Kind::Bytes => args.add(row.try_get::<Option<Vec<u8>>, _>(name)?),
        Kind::Timestamp => args.add(row.try_get::<Option<DateTime<Utc>>, _>(name)?),
    };
    bound.map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// Identity columns (`audit_log.id`, `jobs.seq`, …) were given explicit
/// values: their sequences continue after the highest copied one.
async fn restart_identities(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
    let identities: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND is_identity = 'YES'",
    )
    .fetch_all(&mut **tx)
    .await?;
    for (table, column) in identities {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({col}), 0) + 1, false) FROM {tab}",
            col = ident(&column),
            tab = ident(&table)
        );
        sqlx::query(&sql)
            .bind(&table)
            .bind(&column)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::NewAuditEvent;
    use crate::jobs::{NewJob, NewStep};
    use crate::{MasterKey, Sealer, testdb};
    use overvisor_model::account::{Outcome, Role};
    use overvisor_model::host::{Host, HostId, HostKind, HostSecret};
    use overvisor_model::job::{Job, JobLogLine, LogLevel};
    use overvisor_model::operation::{Grant, Operation};

    /// A SQLite install with a row in every table (a job with a child).
    async fn filled_sqlite(sealer: &Sealer) -> (Store, Host, Job) {
        let store = testdb::sqlite().await;
        let user = testdb::user(&store, "alice").await;
        let now = testdb::now();
        store
            .user_set_password_hash(user.id, "argon2-hash", now)
            .await
            .expect("password");
        store
            .ssh_identity_put(sealer, user.id, "ssh-ed25519 AAAA", b"PRIVATE", now)
            .await
            .expect("identity");
        store
            .oidc_identity_link(user.id, "https://idp.example", "sub-1", now)
            .await
            .expect("oidc link");
        let guest_key = overvisor_model::account::GuestKey {
            id: overvisor_model::account::GuestKeyId::new(),
            user_id: user.id,
            name: "laptop".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            fingerprint: "SHA256:x".into(),
            created_at: now,
        };
        store
            .guest_key_insert(&guest_key, 1)
            .await
            .expect("guest key");
        for action in ["auth.login", "host.create", "vm.start"] {
            let event = NewAuditEvent {
                actor_id: Some(user.id),
                actor_name: Some("alice".into()),
                via: None,
                source_ip: None,
                action: action.into(),
                target: None,
                target_owner: Some(user.id),
                outcome: Outcome::Success,
                detail: None,
            };
            store.audit_append(&event, now).await.expect("audit");
        }
        let host = Host {
            id: HostId::new(),
            owner: user.id,
            name: "kvm1".into(),
            kind: HostKind::Libvirt,
            address: "10.0.0.1".into(),
            port: 22,
            ssh_user: "ovdeploy".into(),
            libvirt_uri: "qemu:///system".into(),
            tags: vec!["rack:1".into()],
            host_key_fingerprint: None,
            has_credential: true,
            created_at: now,
            updated_at: now,
        };
        let secret = HostSecret::PrivateKey("HOST-KEY".into());
        let host = store
            .host_insert(sealer, &host, Some(&secret))
            .await
            .expect("host");
        let grant = Grant {
            subject: user.id,
            subject_name: "alice".into(),
            via: "console".into(),
            source_ip: None,
            role: Role::Admin,
            owner: user.id,
        };
        let op = Operation::TestSleep {
            seconds: 1,
            fail: false,
        };
        // PostgreSQL keeps microseconds: the copy rounds anything finer.
        let mut parent = Job::queued("test.sleep".into(), user.id, user.id, None);
        parent.created_at = now;
        let mut child = Job::queued("test.sleep".into(), user.id, user.id, None);
        child.created_at = now;
        child.parent = Some(parent.id);
        for job in [&parent, &child] {
            let new = NewJob {
                job,
                operation: &op,
                grant: &grant,
                secret: Some(b"job-secret"),
                slot: None,
                timeout_secs: 30,
                steps: &[
                    NewStep {
                        name: "one",
                        has_undo: true,
                        done: None,
                    },
                    NewStep {
                        name: "two",
                        has_undo: false,
                        done: None,
                    },
                ],
            };
            store.job_insert(sealer, &new).await.expect("job");
        }
        let line = JobLogLine {
            at: now,
            level: LogLevel::Info,
            message: "hello".into(),
        };
        store.job_log_append(child.id, &line).await.expect("log");
        (store, host, child)
    }

    #[tokio::test]
    async fn every_table_is_copied_and_counted() {
        let sealer = Sealer::new(&MasterKey::generate());
        let (sqlite, host, child) = filled_sqlite(&sealer).await;
        let postgres = testdb::postgres().await;
        let counts = sqlite_to_postgres(&sqlite, &postgres).await.expect("copy");
        let rows = |table: &str| {
            counts
                .iter()
                .find(|c| c.table == table)
                .map(|c| c.rows)
                .unwrap_or_else(|| panic!("{table} not copied"))
        };
        assert_eq!(counts.len(), 14, "{counts:?}");
        assert_eq!(
            (rows("users"), rows("ssh_identities"), rows("hosts")),
            (1, 1, 1)
        );
        assert_eq!((rows("oidc_identities"), rows("guest_keys")), (1, 1));
        assert_eq!(
            (rows("audit_log"), rows("jobs"), rows("job_steps")),
            (3, 2, 4)
        );
        assert_eq!(rows("job_log"), 1);
        // Parents come before the tables that reference them.
        let at = |table: &str| counts.iter().position(|c| c.table == table);
        assert!(at("users") < at("hosts") && at("jobs") < at("job_steps"));
        assert!(at("users") < at("oidc_identities") && at("users") < at("guest_keys"));

        // The copy reads back the same through the store, sealed secrets included.
        let creds = postgres
            .user_credentials_by_name("alice")
            .await
            .expect("user");
        let original = sqlite
            .user_credentials_by_name("alice")
            .await
            .expect("user");
        assert_eq!(creds.user, original.user);
        assert_eq!(creds.password_hash.as_deref(), Some("argon2-hash"));
        assert_eq!(postgres.host_get(host.id).await.expect("host"), host);
        assert_eq!(
            postgres.host_secret(&sealer, host.id).await.expect("open"),
            Some(HostSecret::PrivateKey("HOST-KEY".into()))
        );
        assert_eq!(
            postgres
                .ssh_private_key(&sealer, creds.user.id)
                .await
                .expect("key"),
            b"PRIVATE"
        );
        assert_eq!(
            postgres.job_get(child.id).await.expect("job"),
            sqlite.job_get(child.id).await.expect("job")
        );
        assert_eq!(
            postgres
                .job_secret(&sealer, child.id)
                .await
                .expect("secret"),
            Some(b"job-secret".to_vec())
        );
        assert_eq!(postgres.job_steps(child.id).await.expect("steps").len(), 2);
        // Identities continue after the copied rows.
        let event = NewAuditEvent {
            actor_id: None,
            actor_name: None,
            via: None,
            source_ip: None,
            action: "after.copy".into(),
            target: None,
            target_owner: None,
            outcome: Outcome::Success,
            detail: None,
        };
        assert_eq!(
            postgres
                .audit_append(&event, testdb::now())
                .await
                .expect("append"),
            4
        );

        // A second copy into the now non-empty database is refused, and
        // nothing is copied the other way round.
        let again = sqlite_to_postgres(&sqlite, &postgres).await;
        assert!(
            matches!(&again, Err(StoreError::Conflict(m)) if m.contains("not empty")),
            "{again:?}"
        );
        assert!(matches!(
            sqlite_to_postgres(&postgres, &sqlite).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(count(&postgres, "users").await.expect("count"), 1);
    }
}
