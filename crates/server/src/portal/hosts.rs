//! Hosts in the portal: the list, adding a host (the server probes it and
//! shows the SSH host-key fingerprint; only the operator's confirmation
//! registers it), the detail page (facts and VMs load separately so a slow
//! host never holds the page up), editing and removal.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use overvisor_control::inventory::{Connectivity, HostStatus, VmQuery, VmRecord};
use overvisor_model::host::{
    DEFAULT_LIBVIRT_URI, DEFAULT_SSH_USER, Host, HostChanges, HostFacts, HostId,
    HostKeyFingerprint, HostKind, NewHost,
};
use serde::Deserialize;

use super::{Chrome, CsrfOnly, Done, PortalSession, VerifiedForm, error_response, render};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(hosts_page).post(host_create))
        .route("/hosts/new", get(host_new_page).post(host_probe))
        .route("/hosts/{id}", get(host_page))
        .route("/hosts/{id}/facts", get(host_facts_fragment))
        .route("/hosts/{id}/vms", get(host_vms_fragment))
        .route("/hosts/{id}/edit", post(host_edit))
        .route("/hosts/{id}/delete", post(host_delete))
        .route("/hosts/{id}/resync", post(host_resync))
}

#[derive(Template)]
#[template(path = "hosts.html")]
struct HostsPage {
    chrome: Chrome,
    hosts: Vec<(Host, Option<HostStatus>)>,
    notice: Option<String>,
}

/// Each host with its connectivity as the inventory sees it (none yet for
/// a host the reconciler has not picked up).
fn with_status(
    state: &AppState,
    session: &PortalSession,
    hosts: Vec<Host>,
) -> Result<Vec<(Host, Option<HostStatus>)>, overvisor_control::AppError> {
    let mut statuses = state.app.inventory_summary(&session.subject)?.host_status;
    Ok(hosts
        .into_iter()
        .map(|h| {
            let status = statuses
                .iter()
                .position(|s| s.host_id == h.id)
                .map(|i| statuses.swap_remove(i));
            (h, status)
        })
        .collect())
}

/// One host's connectivity; `host` must already be authorized.
fn status_of(state: &AppState, host: &Host) -> Option<HostStatus> {
    state.app.inventory().host_status(host.id)
}

async fn hosts_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<Done>,
) -> Response {
    let hosts = async {
        let hosts = state.app.hosts_list(&session.subject).await?;
        with_status(&state, &session, hosts)
    }
    .await;
    match hosts {
        Ok(hosts) => render(&HostsPage {
            chrome: Chrome::new(&session, "hosts"),
            hosts,
            notice: (q.done.as_deref() == Some("removed")).then(|| "The host was removed.".into()),
        }),
        Err(e) => error_response(&session, e),
    }
}

/// The add-host form as typed; kept as text so a refused form comes back
/// exactly as the operator left it.
#[derive(Deserialize, Default, Clone)]
struct HostForm {
    #[serde(default)]
    name: String,
    /// `libvirt` (the default) or `hyperv`; only when adding.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    ssh_user: String,
    #[serde(default)]
    libvirt_uri: String,
    #[serde(default)]
    tags: String,
    /// Set once the operator has seen the probe's fingerprint.
    #[serde(default)]
    fingerprint: String,
}

impl HostForm {
    fn with_defaults() -> Self {
        Self {
            port: "22".into(),
            ssh_user: DEFAULT_SSH_USER.into(),
            libvirt_uri: DEFAULT_LIBVIRT_URI.into(),
            ..Self::default()
        }
    }

    fn port(&self) -> Result<u16, ApiError> {
        match self.port.trim() {
            "" => Ok(22),
            p => p.parse().map_err(|_| {
                ApiError::invalid("port", "The port must be a number from 1 to 65535")
            }),
        }
    }

    /// What the form says, as a change to a host: blank text keeps a field
    /// (or, for a new host, leaves it to its default). Adding and editing
    /// both read the form through this.
    fn changes(&self) -> Result<HostChanges, ApiError> {
        let host_key_fingerprint = match self.fingerprint.trim() {
            "" => None,
            f => Some(HostKeyFingerprint::parse(f).map_err(|_| {
                ApiError::invalid(
                    "fingerprint",
                    "A fingerprint looks like SHA256: followed by 43 characters",
                )
            })?),
        };
        Ok(HostChanges {
            name: some_text(&self.name),
            address: some_text(&self.address),
            port: Some(self.port()?),
            ssh_user: some_text(&self.ssh_user),
            libvirt_uri: some_text(&self.libvirt_uri),
            tags: Some(split_tags(&self.tags)),
            host_key_fingerprint,
            ..HostChanges::default()
        })
    }
}

fn split_tags(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn some_text(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[derive(Template)]
#[template(path = "host_new.html")]
struct HostNewPage {
    chrome: Chrome,
    form: HostForm,
    error: Option<String>,
    /// The key the probe saw, to be confirmed.
    probed: Option<(String, String)>,
}

fn host_new(
    session: &PortalSession,
    form: HostForm,
    outcome: Result<Option<(String, String)>, ApiError>,
) -> Response {
    let (probed, error, status) = match outcome {
        Ok(probed) => (probed, None, StatusCode::OK),
        Err(e) => (None, Some(e.message), e.status),
    };
    let page = render(&HostNewPage {
        chrome: Chrome::new(session, "hosts"),
        form,
        error,
        probed,
    });
    (status, page).into_response()
}

async fn host_new_page(session: PortalSession) -> Response {
    host_new(&session, HostForm::with_defaults(), Ok(None))
}

/// Step one: contact the host and show the key it presents.
async fn host_probe(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<HostForm>,
) -> Response {
    let probed = match form.port() {
        Ok(port) => state
            .app
            .host_probe(&session.subject, form.address.trim(), port)
            .await
            .map(|key| Some((key.fingerprint.to_string(), key.public_key)))
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    host_new(&session, form, probed)
}

/// Step two: register the host pinned to the fingerprint the operator saw.
async fn host_create(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<HostForm>,
) -> Response {
    let created = async {
        let changes = form.changes()?;
        if changes.host_key_fingerprint.is_none() {
            return Err(ApiError::invalid(
                "fingerprint",
                "Probe the host and confirm its fingerprint first",
            ));
        }
        let kind = match form.kind.trim() {
            "" => HostKind::Libvirt,
            k => k
                .parse()
                .map_err(|_| ApiError::invalid("kind", "Choose KVM (libvirt) or Hyper-V"))?,
        };
        let new = NewHost {
            kind,
            ..NewHost::from_changes(changes)
        };
        state
            .app
            .host_create(&session.subject, new)
            .await
            .map(|(host, _job)| host)
            .map_err(ApiError::from)
    }
    .await;
    match created {
        Ok(host) => Redirect::to(&format!("/hosts/{}?done=created", host.id)).into_response(),
        Err(e) => {
            let mut form = form;
            form.fingerprint.clear();
            host_new(&session, form, Err(e))
        }
    }
}

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    chrome: Chrome,
    host: Host,
    status: Option<HostStatus>,
    notice: Option<String>,
    error: Option<String>,
}

fn host_notice(code: &str) -> Option<String> {
    match code {
        "created" => Some("The host was added, pinned to the fingerprint you confirmed.".into()),
        "saved" => Some("Your changes were saved.".into()),
        "resynced" => Some("The host's VMs were re-read just now.".into()),
        _ => None,
    }
}

async fn host_page(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<HostId>,
    Query(q): Query<Done>,
) -> Response {
    match state.app.host_get(&session.subject, id).await {
        Ok(host) => render(&HostPage {
            chrome: Chrome::new(&session, "hosts"),
            status: status_of(&state, &host),
            host,
            notice: q.done.as_deref().and_then(host_notice),
            error: None,
        }),
        Err(e) => error_response(&session, e),
    }
}

#[derive(Template)]
#[template(path = "host_facts.html")]
struct FactsFragment {
    facts: Result<HostFacts, String>,
}

async fn host_facts_fragment(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<HostId>,
) -> Response {
    let facts = state
        .app
        .host_facts(&session.subject, id)
        .await
        .map_err(|e| ApiError::from(e).message);
    render(&FactsFragment { facts })
}

#[derive(Template)]
#[template(path = "host_vms.html")]
struct VmsFragment {
    status: Option<HostStatus>,
    vms: Vec<Arc<VmRecord>>,
    total: usize,
}

/// The host's VMs as the inventory knows them: instant, even when the host
/// is slow or gone (then they are its last known VMs, flagged as such).
async fn host_vms_fragment(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<HostId>,
) -> Response {
    let host = match state.app.host_get(&session.subject, id).await {
        Ok(host) => host,
        Err(e) => return error_response(&session, e),
    };
    let query = VmQuery {
        host: Some(id),
        limit: HOST_VMS_SHOWN,
        ..VmQuery::default()
    };
    // A host the reconciler has not picked up yet is not in the inventory.
    let page = state.app.inventory_vms(&session.subject, &query).ok();
    render(&VmsFragment {
        status: status_of(&state, &host),
        total: page.as_ref().map_or(0, |p| p.total),
        vms: page.map(|p| p.items).unwrap_or_default(),
    })
}

/// How long a page waits for a (quick) host job before showing the outcome.
const HOST_JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// More than this and the host page links to the searchable list instead.
const HOST_VMS_SHOWN: usize = 200;

async fn host_edit(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<HostId>,
    VerifiedForm(form): VerifiedForm<HostForm>,
) -> Response {
    let saved = async {
        let changes = form.changes()?;
        // A job like the API's, followed here: the page shows the outcome.
        let job = state
            .app
            .host_update_job(&session.subject, id, changes)
            .await?;
        state
            .app
            .job_follow(&session.subject, &job, HOST_JOB_WAIT)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match saved {
        Ok(_) => Redirect::to(&format!("/hosts/{id}?done=saved")).into_response(),
        Err(e) => match state.app.host_get(&session.subject, id).await {
            Ok(host) => {
                let page = render(&HostPage {
                    chrome: Chrome::new(&session, "hosts"),
                    status: status_of(&state, &host),
                    host,
                    notice: None,
                    error: Some(e.message),
                });
                (e.status, page).into_response()
            }
            Err(_) => error_response(&session, e),
        },
    }
}

/// "Resync now": an `inventory.resync` job; a failure shows its job page.
async fn host_resync(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<HostId>,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    let job = match state
        .app
        .inventory_resync_job(&session.subject, Some(id))
        .await
    {
        Ok(job) => job,
        Err(e) => return error_response(&session, e),
    };
    match state
        .app
        .job_follow(&session.subject, &job, HOST_JOB_WAIT)
        .await
    {
        Ok(_) => Redirect::to(&format!("/hosts/{id}?done=resynced")).into_response(),
        Err(_) => Redirect::to(&format!("/jobs/{}", job.id)).into_response(),
    }
}

async fn host_delete(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<HostId>,
    _: VerifiedForm<CsrfOnly>,
) -> Response {
    let removed = async {
        let job = state.app.host_delete_job(&session.subject, id).await?;
        state
            .app
            .job_follow(&session.subject, &job, HOST_JOB_WAIT)
            .await
    }
    .await;
    match removed {
        Ok(_) => Redirect::to("/hosts?done=removed").into_response(),
        Err(e) => error_response(&session, e),
    }
}
