//! Links from an identity provider's (issuer, subject) to an account. An
//! account made at first sign-in is inserted together with its link, so
//! two first requests racing cannot make two accounts for one person.

use chrono::{DateTime, Utc};
use overvisor_model::account::{User, UserId};

use crate::{Result, Store, StoreError, parse_col};

impl Store {
    /// The account linked to `issuer` + `subject`, if any.
    pub async fn oidc_identity_user(&self, issuer: &str, subject: &str) -> Result<Option<UserId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM oidc_identities WHERE issuer = ? AND subject = ?",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(self.pool())
        .await?;
        id.map(|id| parse_col(&id, "user id")).transpose()
    }

    /// Inserts a new account (without a password) and its link at once.
    /// `Conflict` when the name is taken or the identity already linked.
    pub async fn oidc_user_insert(&self, user: &User, issuer: &str, subject: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        crate::users::insert_user(&mut *tx, user, None).await?;
        insert_link(&mut tx, user.id, issuer, subject, user.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Links an existing account to `issuer` + `subject`.
    pub async fn oidc_identity_link(
        &self,
        user: UserId,
        issuer: &str,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        insert_link(&mut tx, user, issuer, subject, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ids of the accounts with this e-mail address (for linking by a
    /// verified e-mail).
    pub async fn users_with_email(&self, email: &str) -> Result<Vec<UserId>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM users WHERE email = ?")
            .bind(email)
            .fetch_all(self.pool())
            .await?;
        ids.iter().map(|id| parse_col(id, "user id")).collect()
    }
}

async fn insert_link(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    user: UserId,
    issuer: &str,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO oidc_identities (issuer, subject, user_id, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(issuer)
    .bind(subject)
    .bind(user.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::on_unique(e, "a link to this identity"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::test_store;
    use crate::users::tests::sample_user;

    #[tokio::test]
    async fn one_account_per_identity() {
        let store = test_store().await;
        let user = sample_user("ada");
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
        let twin = sample_user("ada2");
        assert!(matches!(
            store.oidc_user_insert(&twin, "https://idp", "s1").await,
            Err(crate::StoreError::Conflict(_))
        ));
        assert!(store.user_get(twin.id).await.is_err());
        // Another issuer's subject "s1" is someone else.
        store
            .oidc_identity_link(user.id, "https://other", "s1", chrono::Utc::now())
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
}
