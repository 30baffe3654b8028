//! Host registry changes as steps. Each is one write, idempotent: a resumed
//! create finds its row, a resumed delete finds it gone.

use overvisor_model::host::{CredentialChange, Host, HostSecret};
use overvisor_model::operation::CredentialEdit;
use overvisor_store::StoreError;

use super::{StepCx, StepResult};
use crate::jobs::JobError;

pub const RECORD: &str = "record";
pub const REMOVE: &str = "remove";

fn host_output(host: &Host) -> serde_json::Value {
    serde_json::json!({ "host": host })
}

fn secret_from(secret: Option<&[u8]>) -> Result<Option<HostSecret>, JobError> {
    secret
        .map(|bytes| {
            HostSecret::from_sealable(bytes.to_vec())
                .ok_or_else(|| JobError::new("the credential sealed with this job is unreadable"))
        })
        .transpose()
}

pub async fn create(cx: &StepCx<'_>, host: &Host, secret: Option<&[u8]>) -> StepResult {
    let app = cx.app;
    let secret = secret_from(secret)?;
    let stored = match app
        .store()
        .host_insert(app.sealer(), host, secret.as_ref())
        .await
    {
        Ok(stored) => stored,
        // Resumed after the insert went through.
        Err(StoreError::Conflict(_)) if cx.resumed => app.store().host_get(host.id).await?,
        Err(e) => return Err(e.into()),
    };
    // The inventory starts following the host at once.
    app.inventory_wake();
    Ok(Some(host_output(&stored)))
}

pub async fn update(
    cx: &StepCx<'_>,
    host: &Host,
    edit: CredentialEdit,
    secret: Option<&[u8]>,
) -> StepResult {
    let app = cx.app;
    let change = match (edit, secret_from(secret)?) {
        (CredentialEdit::Set, Some(secret)) => CredentialChange::Set(secret),
        (CredentialEdit::Set, None) => {
            return Err(JobError::new("the new credential is missing from this job"));
        }
        (CredentialEdit::Remove, _) => CredentialChange::Remove,
        (CredentialEdit::Keep, _) => CredentialChange::Keep,
    };
    let result = app.store().host_update(app.sealer(), host, &change).await;
    // Whatever changed, the next call connects afresh with the new row.
    app.connections().forget(host.id);
    app.inventory_wake();
    Ok(Some(host_output(&result?)))
}

pub async fn delete(cx: &StepCx<'_>, host: &Host) -> StepResult {
    let app = cx.app;
    match app.store().host_delete(host.owner, host.id).await {
        Ok(()) => {}
        Err(StoreError::NotFound(_)) if cx.resumed => {}
        Err(e) => return Err(e.into()),
    }
    app.connections().forget(host.id);
    app.inventory_wake();
    Ok(Some(serde_json::json!({ "host": null })))
}
