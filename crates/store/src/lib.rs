//! Persistence for Overvisor. One [`Store`] owns the database pool; each
//! resource has its own module (`users`, `sessions`, `api_keys`, …) with
//! `<resource>_<verb>` functions. SQLite in a data directory is the default
//! (WAL, versioned migrations embedded in the binary).
//!
//! The store never decides who may do what: callers pass ids they have
//! already authorized in the control layer.

pub mod api_keys;
pub mod audit;
pub mod hosts;
pub mod jobs;
pub mod oidc_identities;
pub mod seal;
pub mod sessions;
pub mod ssh_identities;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

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
    /// The disk holding the database is full (SQLite's `SQLITE_FULL`):
    /// nothing can be written until space is freed; reads still work.
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
        } else {
            StoreError::Database(err)
        }
    }
}

/// SQLite's `SQLITE_FULL` (13, in its primary or an extended code), or the
/// operating system's "no space left on device" reaching us directly.
fn is_disk_full(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == 13),
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
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

/// The database behind the control plane.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
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

    /// Opens a database from a `sqlite:` URL (used by tests and `--database-url`).
    pub async fn open_url(url: &str) -> Result<Self> {
        if url.starts_with("postgres") {
            return Err(StoreError::Unavailable(
                "PostgreSQL support is not available in this build yet; use a sqlite: URL".into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Self::connect_with(options, true).await
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
            .connect_with(options.clone())
            .await?;
        if let Some(path) = file {
            restrict_database_files(path)?;
        }
        Ok(Self { pool })
    }

    /// Applies pending migrations; safe to call on every start.
    pub async fn migrate(&self) -> Result<()> {
        SQLITE_MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Verifies the database file's structure (`PRAGMA integrity_check`).
    pub async fn integrity_check(&self) -> Result<()> {
        let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(verdict))
        }
    }

    /// Writes a consistent copy of the whole database to `dest` (a new
    /// file, readable by its owner only, like the database itself).
    pub async fn backup_to(&self, dest: &Path) -> Result<()> {
        let dest_str = dest
            .to_str()
            .ok_or_else(|| StoreError::Conflict("backup path is not valid UTF-8".into()))?;
        // VACUUM INTO fills an empty file it finds, keeping its mode.
        create_private_file(dest)?;
        sqlx::query("VACUUM INTO ?")
            .bind(dest_str)
            .execute(&self.pool)
            .await?;
        restrict_database_files(dest)?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
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
pub(crate) async fn test_store() -> Store {
    let store = Store::open_url("sqlite::memory:").await.expect("open");
    store.migrate().await.expect("migrate");
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_pool_counts_as_exhausted() {
        let store = test_store().await;
        store.close().await;
        let err = store.ping().await.expect_err("pool closed");
        assert!(err.is_pool_exhausted(), "{err}");
        assert!(!StoreError::NotFound("user").is_pool_exhausted());
    }
}
