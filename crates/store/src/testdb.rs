//! Fresh, migrated stores for the unit tests, on either backend:
//! SQLite in memory, or a database of its own on the test PostgreSQL
//! cluster. [`on_both_backends!`] turns each `async fn(Store)` test body
//! into one test per backend (`…::on_sqlite::name`, `…::on_postgres::name`).

use crate::Store;

pub(crate) async fn sqlite() -> Store {
    let store = Store::open_url("sqlite::memory:").await.expect("open");
    store.migrate().await.expect("migrate");
    store
}

pub(crate) async fn postgres() -> Store {
    let url = overvisor_testkit::postgres::fresh_database().await;
    let store = Store::open_url(&url).await.expect("open");
    store.migrate().await.expect("migrate");
    store
}

/// One `#[tokio::test]` per backend for each named `async fn(Store)`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::testdb::sqlite().await).await;
                }
            )+
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::testdb::postgres().await).await;
                }
            )+
        }
    };
}
pub(crate) use on_both_backends;

/// Now, to the microsecond: what PostgreSQL keeps of a timestamp (SQLite
/// keeps the nanoseconds), so a value read back equals the one written.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// A new operator account named `name` (not stored).
pub(crate) fn new_user(name: &str) -> overvisor_model::account::User {
    use overvisor_model::account::{Email, Role, User, UserId, UserName};
    let at = now();
    User {
        id: UserId::new(),
        name: UserName::parse(name).expect("name"),
        email: Email::parse("a@example.com").expect("email"),
        role: Role::Operator,
        disabled: false,
        created_at: at,
        updated_at: at,
    }
}

/// A new operator account named `name`, inserted.
pub(crate) async fn user(store: &Store, name: &str) -> overvisor_model::account::User {
    let user = new_user(name);
    store.user_insert(&user, None).await.expect("insert user");
    user
}

/// `n` hosts (`h0`, `h1`, …) registered by a new account; their ids.
pub(crate) async fn registered_hosts(store: &Store, n: u8) -> Vec<overvisor_model::host::HostId> {
    let owner = user(store, "alice").await.id;
    let sealer = crate::Sealer::new(&crate::MasterKey::generate());
    let mut ids = Vec::new();
    for i in 0..n {
        let host = crate::hosts::tests::host(owner, &format!("h{i}"), &format!("10.0.0.{i}"));
        ids.push(
            store
                .host_insert(&sealer, &host, None)
                .await
                .expect("host")
                .id,
        );
    }
    ids
}
