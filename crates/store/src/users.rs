//! User accounts. The password hash stays in this crate and the control
//! layer's login path; it is never part of [`User`].

use chrono::{DateTime, Utc};
use overvisor_model::account::{Email, Role, User, UserChanges, UserId, UserName};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, parse_col};

/// A user together with the password hash, for sign-in only.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: Option<String>,
}

const COLUMNS: &str = "id, name, email, role, disabled, created_at, updated_at, password_hash";

fn user_from_row(row: &SqliteRow) -> Result<UserCredentials> {
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("name")?;
    let email: String = row.try_get("email")?;
    let role: String = row.try_get("role")?;
    Ok(UserCredentials {
        user: User {
            id: parse_col(&id, "user id")?,
            name: UserName::parse(&name)
                .map_err(|_| StoreError::Corrupt("bad user name in database".into()))?,
            email: Email::parse(&email)
                .map_err(|_| StoreError::Corrupt("bad e-mail in database".into()))?,
            role: parse_col(&role, "role")?,
            disabled: row.try_get("disabled")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        },
        password_hash: row.try_get("password_hash")?,
    })
}

/// Inserts an account on `executor` (the pool, or a transaction that
/// inserts more with it).
pub(crate) async fn insert_user<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    user: &User,
    password_hash: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, name, email, role, disabled, created_at, updated_at, password_hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
    .bind(user.name.as_str())
    .bind(user.email.as_str())
    .bind(user.role.as_str())
    .bind(user.disabled)
    .bind(user.created_at)
    .bind(user.updated_at)
    .bind(password_hash)
    .execute(executor)
    .await
    .map_err(|e| StoreError::on_unique(e, "a user with this name"))?;
    Ok(())
}

impl Store {
    pub async fn user_insert(&self, user: &User, password_hash: Option<&str>) -> Result<()> {
        insert_user(self.pool(), user, password_hash).await
    }

    pub async fn user_get(&self, id: UserId) -> Result<User> {
        Ok(self.user_credentials(id).await?.user)
    }

    pub async fn user_credentials(&self, id: UserId) -> Result<UserCredentials> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("user"))?;
        user_from_row(&row)
    }

    pub async fn user_credentials_by_name(&self, name: &str) -> Result<UserCredentials> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE name = ?"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("user"))?;
        user_from_row(&row)
    }

    pub async fn users_list(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| user_from_row(r).map(|c| c.user))
            .collect()
    }

    pub async fn users_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?)
    }

    pub async fn user_update(
        &self,
        id: UserId,
        changes: &UserChanges,
        now: DateTime<Utc>,
    ) -> Result<User> {
        let done = sqlx::query(
            "UPDATE users SET email = COALESCE(?, email), role = COALESCE(?, role),
                disabled = COALESCE(?, disabled), updated_at = ? WHERE id = ?",
        )
        .bind(changes.email.as_ref().map(Email::as_str))
        .bind(changes.role.map(Role::as_str))
        .bind(changes.disabled)
        .bind(now)
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("user"));
        }
        self.user_get(id).await
    }

    pub async fn user_set_password_hash(
        &self,
        id: UserId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
            .bind(hash)
            .bind(now)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("user"));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_store;

    pub(crate) fn sample_user(name: &str) -> User {
        let now = Utc::now();
        User {
            id: UserId::new(),
            name: UserName::parse(name).expect("name"),
            email: Email::parse("a@example.com").expect("email"),
            role: Role::Operator,
            disabled: false,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn insert_get_update() {
        let store = test_store().await;
        let user = sample_user("alice");
        store
            .user_insert(&user, Some("hash"))
            .await
            .expect("insert");
        assert!(matches!(
            store.user_insert(&sample_user("alice"), None).await,
            Err(StoreError::Conflict(_))
        ));
        let creds = store.user_credentials_by_name("alice").await.expect("get");
        assert_eq!(creds.user, user);
        assert_eq!(creds.password_hash.as_deref(), Some("hash"));
        let changed = store
            .user_update(
                user.id,
                &UserChanges {
                    role: Some(Role::Admin),
                    disabled: Some(true),
                    ..Default::default()
                },
                Utc::now(),
            )
            .await
            .expect("update");
        assert_eq!(changed.role, Role::Admin);
        assert!(changed.disabled);
        assert!(matches!(
            store.user_get(UserId::new()).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
