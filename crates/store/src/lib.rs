//! Persistence for Overvisor. One [`Store`] owns the database pool; each
//! resource has its own module (`users`, `sessions`, `api_keys`, …) with
//! `<resource>_<verb>` functions. SQLite in a data directory is the default
//! (WAL, versioned migrations embedded in the binary); a `postgres://` URL
//! selects PostgreSQL, with its own migrations of the same numbering.
//!
//! Each query is written once, with `$1`-style placeholders that both
//! drivers accept, and compiled once per backend by [`with_pool!`]; rows
//! are read through [`DbRow`], so a module never names a backend.
//!
//! The store never decides who may do what: callers pass ids they have
//! already authorized in the control layer.

pub mod api_keys;
pub mod audit;
pub mod copy;
pub mod guest_keys;
pub mod host_leases;
pub mod hosts;
pub mod jobs;
pub mod oidc_identities;
pub mod replicas;
pub mod seal;
pub mod sessions;
pub mod ssh_identities;
pub mod users;

#[cfg(test)]
mod testdb;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

pub use seal::{MasterKey, SealError, Sealer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The disk holding the database is full (SQLite's `SQLITE_FULL`,
    /// PostgreSQL's `disk_full`): nothing can be written until space is
    /// freed; reads still work.
    #[error("the disk holding the database is full")]
    Full,
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_disk_full(&err) {
            StoreError::Full
        } else if is_connection_lost(&err) {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::Database(err)
        }
    }
}

/// SQLite's `SQLITE_FULL` (13, in its primary or an extended code),
/// PostgreSQL's `53100 disk_full`, or the operating system's "no space left
/// on device" reaching us directly.
fn is_disk_full(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code == "53100" || code.parse::<i32>().is_ok_and(|code| code & 0xff == 13)
        }),
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// The database server went away or refuses work for now: the socket
/// failed, or PostgreSQL answered with a connection exception (class
/// `08`) or is shutting down / starting up (`57P01`..`57P03`).
fn is_connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

impl StoreError {
    /// Whether no database connection could be had (all busy past the
    /// acquire timeout, or the pool closing): worth retrying later.
    pub fn is_pool_exhausted(&self) -> bool {
        matches!(
            self,
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        )
    }

    /// Maps a unique-constraint violation to a conflict naming what collided.
    pub(crate) fn on_unique(err: sqlx::Error, what: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("{what} already exists"))
            }
            _ => err.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `postgres://` or `postgresql://`
    /// for PostgreSQL, anything else for SQLite.
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The pool of one backend.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the store's pool, whichever backend
/// it is: the body is written once and type-checked once per backend (so a
/// query's binds and row types must suit both). What the body returns is
/// made backend-neutral by [`Unify`] (rows become [`AnyRow`], a statement's
/// outcome [`Done`]).
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store.db() {
            $crate::Db::Sqlite($pool) => $crate::Unify::unify($body),
            $crate::Db::Postgres($pool) => $crate::Unify::unify($body),
        }
    };
}
pub(crate) use with_pool;

/// A value both backends can decode from a column.
pub(crate) trait Column:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
{
}

impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
{
}

/// A result row, read by column name.
pub(crate) trait DbRow {
    fn col<T: Column>(&self, name: &str) -> Result<T>;
}

/// A result row of either backend.
pub(crate) enum AnyRow {
    Sqlite(sqlx::sqlite::SqliteRow),
    Postgres(sqlx::postgres::PgRow),
}

impl DbRow for AnyRow {
    fn col<T: Column>(&self, name: &str) -> Result<T> {
        Ok(match self {
            AnyRow::Sqlite(row) => sqlx::Row::try_get(row, name)?,
            AnyRow::Postgres(row) => sqlx::Row::try_get(row, name)?,
        })
    }
}

/// What a statement did, on either backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done(u64);

impl Done {
    pub(crate) fn rows_affected(self) -> u64 {
        self.0
    }
}

/// Turns what a query returned on one backend into the same type for both.
pub(crate) trait Unify {
    type Out;
    fn unify(self) -> Self::Out;
}

impl Unify for sqlx::sqlite::SqliteRow {
    type Out = AnyRow;
    fn unify(self) -> AnyRow {
        AnyRow::Sqlite(self)
    }
}

impl Unify for sqlx::postgres::PgRow {
    type Out = AnyRow;
    fn unify(self) -> AnyRow {
        AnyRow::Postgres(self)
    }
}

impl Unify for sqlx::sqlite::SqliteQueryResult {
    type Out = Done;
    fn unify(self) -> Done {
        Done(self.rows_affected())
    }
}

impl Unify for sqlx::postgres::PgQueryResult {
    type Out = Done;
    fn unify(self) -> Done {
        Done(self.rows_affected())
    }
}

impl<T: Unify, E> Unify for std::result::Result<T, E> {
    type Out = std::result::Result<T::Out, E>;
    fn unify(self) -> Self::Out {
        self.map(Unify::unify)
    }
}

impl<T: Unify> Unify for Option<T> {
    type Out = Option<T::Out>;
    fn unify(self) -> Self::Out {
        self.map(Unify::unify)
    }
}

impl<T: Unify> Unify for Vec<T> {
    type Out = Vec<T::Out>;
    fn unify(self) -> Self::Out {
        self.into_iter().map(Unify::unify).collect()
    }
}

/// Values that are the same on both backends (scalars).
macro_rules! unify_as_is {
    ($($t:ty),+) => {
        $(impl Unify for $t {
            type Out = $t;
            fn unify(self) -> $t {
                self
            }
        })+
    };
}
unify_as_is!((), bool, i64, String);

impl Unify for Vec<u8> {
    type Out = Vec<u8>;
    fn unify(self) -> Vec<u8> {
        self
    }
}

/// A query builder for the backend of `pool` (which only names the type).
pub(crate) fn builder<'a, DB: sqlx::Database>(
    _pool: &sqlx::Pool<DB>,
    sql: impl Into<String>,
) -> sqlx::QueryBuilder<'a, DB> {
    sqlx::QueryBuilder::new(sql)
}

/// Connections a PostgreSQL pool keeps at most (SQLite's is 8: one writer
/// at a time, readers in WAL).
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

/// The database behind the control plane.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Opens (creating if needed) the SQLite database file at `path` in WAL mode.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Self::connect_with(options, true).await
    }

    /// Opens an existing SQLite file read-only, changing nothing (to check a backup).
    pub async fn open_sqlite_read_only(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false);
        Self::connect_with(options, false).await
    }

    /// Opens a database from its URL (`database_url`): `postgres://…` for
    /// PostgreSQL, else a `sqlite:` URL (created if missing).
    pub async fn open_url(url: &str) -> Result<Self> {
        if Backend::of_url(url) == Backend::Postgres {
            return Self::open_postgres(url).await;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Self::connect_with(options, true).await
    }

    /// Connects to an existing PostgreSQL database (the URL's password is
    /// never part of an error).
    async fn open_postgres(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("the PostgreSQL URL is not valid".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unavailable(match e {
                    sqlx::Error::Database(db) => db.message().to_owned(),
                    other => other.to_string(),
                })
            })?;
        Ok(Self {
            db: Db::Postgres(pool),
        })
    }

    /// The same database over a pool of its own of at most `connections`:
    /// for work that must never queue behind bulk writes (a replica's lease
    /// renewals). SQLite (one process) shares the pool.
    pub fn with_own_pool(&self, connections: u32) -> Self {
        match &self.db {
            Db::Postgres(pool) => Self {
                db: Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(connections)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_lazy_with((*pool.connect_options()).clone()),
                ),
            },
            Db::Sqlite(_) => self.clone(),
        }
    }

    /// `own`: the database is ours to create and keep private (not a
    /// backup opened read-only).
    async fn connect_with(options: SqliteConnectOptions, own: bool) -> Result<Self> {
        let file = database_file(&options).filter(|_| own);
        if let Some(path) = file {
            create_private_file(path)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            // A file needs no recycled connections (pool defaults made for
            // servers behind proxies): each new one is a new worker thread,
            // with its own malloc arena and an empty page cache.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        if let Some(path) = file {
            restrict_database_files(path)?;
        }
        Ok(Self {
            db: Db::Sqlite(pool),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies pending migrations; safe to call on every start.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Db::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await)?;
        Ok(())
    }

    /// Verifies a SQLite database file's structure (`PRAGMA
    /// integrity_check`); PostgreSQL databases are checked with its own
    /// tools (`pg_amcheck`), so this refuses them.
    pub async fn integrity_check(&self) -> Result<()> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(StoreError::Unavailable(
                "the integrity check reads SQLite files only".into(),
            ));
        };
        let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(pool)
            .await?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(verdict))
        }
    }

    /// Writes a consistent copy of the whole SQLite database to `dest` (a
    /// new file, readable by its owner only, like the database itself).
    /// PostgreSQL is backed up with `pg_dump`: refused here.
    pub async fn backup_to(&self, dest: &Path) -> Result<()> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(StoreError::Unavailable(
                "a PostgreSQL database is backed up with pg_dump, not by Overvisor".into(),
            ));
        };
        let dest_str = dest
            .to_str()
            .ok_or_else(|| StoreError::Conflict("backup path is not valid UTF-8".into()))?;
        // VACUUM INTO fills an empty file it finds, keeping its mode.
        create_private_file(dest)?;
        sqlx::query("VACUUM INTO $1")
            .bind(dest_str)
            .execute(pool)
            .await?;
        restrict_database_files(dest)?;
        Ok(())
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

/// The file behind `options`, unless the database lives in memory.
fn database_file(options: &SqliteConnectOptions) -> Option<&Path> {
    let path = options.get_filename();
    let name = path.to_str().unwrap_or_default();
    (name != ":memory:" && !name.starts_with("file:")).then_some(path)
}

/// Creates `path` (if missing) readable and writable by its owner only,
/// whatever the umask: the database holds password hashes, sessions and
/// sealed secrets, and SQLite gives its `-wal` and `-shm` files the mode of
/// the database file.
fn create_private_file(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| file_error(path, e))?;
        }
    }
    Ok(())
}

/// Sets the database file and its `-wal`/`-shm` companions to 0600 (files
/// made by an older version, or copied in by a restore, may be wider).
fn restrict_database_files(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = Path::new(&name);
            match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(file_error(file, e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn file_error(path: &Path, err: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {err}", path.display()))
}

/// Parses a column that must hold a domain value; a bad value means corruption.
pub(crate) fn parse_col<T: FromStr>(value: &str, what: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("bad {what} value in database")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn a_closed_pool_counts_as_exhausted(store: Store) {
        store.close().await;
        let err = store.ping().await.expect_err("pool closed");
        assert!(err.is_pool_exhausted(), "{err}");
        assert!(!StoreError::NotFound("user").is_pool_exhausted());
    }

    crate::testdb::on_both_backends!(a_closed_pool_counts_as_exhausted);

    #[test]
    fn a_lost_connection_is_unavailable_and_a_full_disk_full() {
        let io = |kind| StoreError::from(sqlx::Error::Io(std::io::Error::from(kind)));
        assert!(matches!(
            io(std::io::ErrorKind::ConnectionReset),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            io(std::io::ErrorKind::StorageFull),
            StoreError::Full
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::Database(_)
        ));
    }

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Backend::of_url("postgres://db/overvisor"),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("postgresql://db/overvisor"),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("sqlite://data/overvisor.db"),
            Backend::Sqlite
        );
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_unavailable() {
        // Port 1 on loopback: nothing listens there.
        let err = Store::open_url("postgres://nobody:hunter2@127.0.0.1:1/overvisor")
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
