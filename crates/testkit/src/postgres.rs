//! The test PostgreSQL cluster: `scripts/with-postgres` starts a throwaway
//! cluster (never the machine's own service) and names it in
//! `OVERVISOR_TEST_POSTGRES_URL`. Each test takes a database of its own on
//! it, so tests run in parallel and never see each other's rows. A missing
//! URL fails the test with instructions: a skipped test proves nothing.

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The variable naming the test cluster: a `postgres://` URL with a
/// database path (e.g. `postgres://postgres@localhost/postgres?host=/tmp/pg`).
pub const URL_VAR: &str = "OVERVISOR_TEST_POSTGRES_URL";

/// The test cluster's URL.
///
/// # Panics
/// When `OVERVISOR_TEST_POSTGRES_URL` is unset: run the tests under
/// `scripts/with-postgres` (as `scripts/test` does).
pub fn cluster_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set: PostgreSQL tests need a cluster. Run them under \
             scripts/with-postgres (e.g. `scripts/with-postgres cargo nextest run -p overvisor-store`), \
             which starts a throwaway one and stops it afterwards"
        ),
    }
}

/// Creates a new, empty database on the test cluster and returns its URL.
///
/// # Panics
/// When there is no test cluster or it refuses (a test failure).
pub async fn fresh_database() -> String {
    let admin = cluster_url();
    let name = format!("ovt_{}", uuid::Uuid::new_v4().simple());
    let options = PgConnectOptions::from_str(&admin)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a PostgreSQL URL: {e}"));
    let mut conn = PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster ({URL_VAR}): {e}"));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    database_url(&admin, &name)
}

/// `url` with its database path replaced by `name` (query kept).
pub fn database_url(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{URL_VAR} is not a URL: {e}"));
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_socket_kept() {
        assert_eq!(
            database_url(
                "postgres://postgres@localhost/postgres?host=/tmp/pg",
                "ovt_1"
            ),
            "postgres://postgres@localhost/ovt_1?host=/tmp/pg"
        );
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1:5433/x", "ovt_2"),
            "postgres://u:p@127.0.0.1:5433/ovt_2"
        );
    }
}
