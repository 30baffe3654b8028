//! Links from an identity provider's (issuer, subject) to an account. An
//! account made at first sign-in is inserted together with its link, so
//! two first requests racing cannot make two accounts for one person.

use chrono::{DateTime, Utc};
use overvisor_model::account::{User, UserId};

use crate::users::{insert_user_error, insert_user_query};
use crate::{Result, Store, StoreError, parse_col, with_pool};

/// The INSERT of a link, bound (a macro for either backend's transaction).
macro_rules! insert_link_query {
    ($user:expr, $issuer:expr, $subject:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO oidc_identities (issuer, subject, user_id, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind($issuer)
        .bind($subject)
        .bind($user.to_string())
        .bind($now)
    };
}

fn insert_link_error(e: sqlx::Error) -> StoreError {
    StoreError::on_unique(e, "a link to this identity")
}

impl Store {
    /// The account linked to `issuer` + `subject`, if any.
    pub async fn oidc_identity_user(&self, issuer: &str, subject: &str) -> Result<Option<UserId>> {
        let id: Option<String> = with_pool!(self, |pool| sqlx::query_scalar::<_, String>(
            "SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(pool)
        .await)?;
        id.map(|id| parse_col(&id, "user id")).transpose()
    }

    /// Inserts a new account (without a password) and its link at once.
    /// `Conflict` when the name is taken or the identity already linked.
    pub async fn oidc_user_insert(&self, user: &User, issuer: &str, subject: &str) -> Result<()> {
        with_pool!(self, |pool| async {
            let mut tx = pool.begin().await?;
            insert_user_query!(user, None::<&str>)
                .execute(&mut *tx)
                .await
                .map_err(insert_user_error)?;
            insert_link_query!(user.id, issuer, subject, user.created_at)
                .execute(&mut *tx)
                .await
                .map_err(insert_link_error)?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await)
    }

    /// Links an existing account to `issuer` + `subject`.
    pub async fn oidc_identity_link(
        &self,
        user: UserId,
        issuer: &str,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| insert_link_query!(user, issuer, subject, now)
            .execute(pool)
            .await)
        .map_err(insert_link_error)?;
        Ok(())
    }

    /// Ids of the accounts with this e-mail address (for linking by a
    /// verified e-mail).
    pub async fn users_with_email(&self, email: &str) -> Result<Vec<UserId>> {
        let ids: Vec<String> = with_pool!(self, |pool| sqlx::query_scalar::<_, String>(
            "SELECT id FROM users WHERE email = $1"
        )
        .bind(email)
        .fetch_all(pool)
        .await)?;
        ids.iter().map(|id| parse_col(id, "user id")).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use crate::testdb::new_user;

    async fn one_account_per_identity(store: Store) {
        let user = new_user("ada");
        assert_eq!(
            store
                .oidc_identity_user("https://idp", "s1")
                .await
                .expect("get"),
            None
        );
        store
            .oidc_user_insert(&user, "https://idp", "s1")
            .await
            .expect("insert");
        assert_eq!(
            store
                .oidc_identity_user("https://idp", "s1")
                .await
                .expect("get"),
            Some(user.id)
        );
        // The same identity again, under another name: refused, and no
        // second account is left behind.
        let twin = new_user("ada2");
        assert!(matches!(
            store.oidc_user_insert(&twin, "https://idp", "s1").await,
            Err(crate::StoreError::Conflict(_))
        ));
        assert!(store.user_get(twin.id).await.is_err());
        // Another issuer's subject "s1" is someone else.
        store
            .oidc_identity_link(user.id, "https://other", "s1", crate::testdb::now())
            .await
            .expect("link");
        assert_eq!(
            store
                .users_with_email("a@example.com")
                .await
                .expect("email"),
            vec![user.id]
        );
    }

    crate::testdb::on_both_backends!(one_account_per_identity);
}
