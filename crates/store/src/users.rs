//! User accounts. The password hash stays in this crate and the control
//! layer's login path; it is never part of [`User`].

use chrono::{DateTime, Utc};
use overvisor_model::account::{Email, Role, User, UserChanges, UserId, UserName};

use crate::{DbRow, Result, Store, StoreError, parse_col, with_pool};

/// A user together with the password hash, for sign-in only.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: Option<String>,
}

const COLUMNS: &str = "id, name, email, role, disabled, created_at, updated_at, password_hash";

fn user_from_row(row: &impl DbRow) -> Result<UserCredentials> {
    let id: String = row.col("id")?;
    let name: String = row.col("name")?;
    let email: String = row.col("email")?;
    let role: String = row.col("role")?;
    Ok(UserCredentials {
        user: User {
            id: parse_col(&id, "user id")?,
            name: UserName::parse(&name)
                .map_err(|_| StoreError::Corrupt("bad user name in database".into()))?,
            email: Email::parse(&email)
                .map_err(|_| StoreError::Corrupt("bad e-mail in database".into()))?,
            role: parse_col(&role, "role")?,
            disabled: row.col("disabled")?,
            created_at: row.col("created_at")?,
            updated_at: row.col("updated_at")?,
        },
        password_hash: row.col("password_hash")?,
    })
}

/// The INSERT of an account, bound: a macro so that it type-checks on
/// either backend's pool or transaction (an OIDC account is inserted
/// together with its link).
macro_rules! insert_user_query {
    ($user:expr, $password_hash:expr) => {
        sqlx::query(
            "INSERT INTO users (id, name, email, role, disabled, created_at, updated_at, password_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($user.id.to_string())
        .bind($user.name.as_str())
        .bind($user.email.as_str())
        .bind($user.role.as_str())
        .bind($user.disabled)
        .bind($user.created_at)
        .bind($user.updated_at)
        .bind($password_hash)
    };
}
pub(crate) use insert_user_query;

/// What a failed account INSERT means.
pub(crate) fn insert_user_error(e: sqlx::Error) -> StoreError {
    StoreError::on_unique(e, "a user with this name")
}

impl Store {
    pub async fn user_insert(&self, user: &User, password_hash: Option<&str>) -> Result<()> {
        with_pool!(self, |pool| insert_user_query!(user, password_hash)
            .execute(pool)
            .await)
        .map_err(insert_user_error)?;
        Ok(())
    }

    pub async fn user_get(&self, id: UserId) -> Result<User> {
        Ok(self.user_credentials(id).await?.user)
    }

    pub async fn user_credentials(&self, id: UserId) -> Result<UserCredentials> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM users WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("user"))?;
        user_from_row(&row)
    }

    pub async fn user_credentials_by_name(&self, name: &str) -> Result<UserCredentials> {
        let row = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM users WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(pool)
        .await)?
        .ok_or(StoreError::NotFound("user"))?;
        user_from_row(&row)
    }

    pub async fn users_list(&self) -> Result<Vec<User>> {
        let rows = with_pool!(self, |pool| sqlx::query(&format!(
            "SELECT {COLUMNS} FROM users ORDER BY name"
        ))
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|r| user_from_row(r).map(|c| c.user))
            .collect()
    }

    pub async fn users_count(&self) -> Result<i64> {
        Ok(with_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM users"
        )
        .fetch_one(pool)
        .await)?)
    }

    pub async fn user_update(
        &self,
        id: UserId,
        changes: &UserChanges,
        now: DateTime<Utc>,
    ) -> Result<User> {
        let done = with_pool!(self, |pool| sqlx::query(
            "UPDATE users SET email = COALESCE($1, email), role = COALESCE($2, role),
                disabled = COALESCE($3, disabled), updated_at = $4 WHERE id = $5",
        )
        .bind(changes.email.as_ref().map(Email::as_str))
        .bind(changes.role.map(Role::as_str))
        .bind(changes.disabled)
        .bind(now)
        .bind(id.to_string())
        .execute(pool)
        .await)?;
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
        let done = with_pool!(self, |pool| sqlx::query(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(hash)
        .bind(now)
        .bind(id.to_string())
        .execute(pool)
        .await)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("user"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testdb::new_user as sample_user;

    async fn insert_get_update(store: Store) {
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

    crate::testdb::on_both_backends!(insert_get_update);
}
