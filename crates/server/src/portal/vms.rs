//! VMs in the portal: one list across every host (search, sort and
//! pagination on the server, so the browser only ever holds one page), and
//! the detail page with lifecycle buttons. Both re-render themselves when the
//! event stream says a VM changed, so states change without reloading.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use overvisor_control::inventory::{VmQuery, VmRecord, VmSort};
use overvisor_model::host::{Host, HostId, HostKind};
use overvisor_model::job::Job;
use overvisor_model::vm::{VmAction, VmInfo, VmName, VmState, allowed};
use serde::Deserialize;
use uuid::Uuid;

use super::session::urlencode;
use super::{Chrome, PortalSession, VerifiedForm, error_response, render};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vms", get(vms_page))
        .route("/vms/{host}/{uuid}", get(vm_page))
        .route("/vms/{host}/{uuid}/panel", get(vm_panel))
        .route("/vms/{host}/{uuid}/action", post(vm_action))
        .route("/vms/{host}/{uuid}/delete", post(vm_delete))
        .route("/vms/{host}/{uuid}/console", get(console_page))
}

const PAGE_SIZE: usize = 50;

/// The list's query as typed: name search, filters, order, page.
#[derive(Deserialize, Default, Clone)]
struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    host: String,
    /// `libvirt`, `hyperv` or empty (any).
    #[serde(default)]
    kind: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    dir: String,
    #[serde(default)]
    page: Option<usize>,
}

/// The states offered as a filter, most useful first.
const STATES: [VmState; 8] = [
    VmState::Running,
    VmState::ShutOff,
    VmState::Paused,
    VmState::Crashed,
    VmState::ShuttingDown,
    VmState::PmSuspended,
    VmState::Blocked,
    VmState::Unknown,
];

impl ListQuery {
    fn descending(&self) -> bool {
        self.dir == "desc"
    }

    fn page(&self) -> usize {
        self.page.unwrap_or(1).clamp(1, 1_000_000)
    }

    /// The URL of another page or ordering of the same search.
    fn link(&self, sort: &str, dir: &str, page: usize) -> String {
        format!(
            "/vms?q={}&state={}&host={}&kind={}&sort={}&dir={}&page={page}",
            urlencode(&self.q),
            urlencode(&self.state),
            urlencode(&self.host),
            urlencode(&self.kind),
            urlencode(sort),
            urlencode(dir),
        )
    }

    /// Link for a column header: ascending first, toggles when already sorted by it.
    pub fn sort_link(&self, column: &str) -> String {
        let dir = if self.sorted_by(column) && !self.descending() {
            "desc"
        } else {
            "asc"
        };
        self.link(column, dir, 1)
    }

    fn sorted_by(&self, column: &str) -> bool {
        self.sort == column || (self.sort.is_empty() && column == "name")
    }

    pub fn aria_sort(&self, column: &str) -> &'static str {
        match (self.sorted_by(column), self.descending()) {
            (false, _) => "none",
            (true, false) => "ascending",
            (true, true) => "descending",
        }
    }

    /// The inventory query; unknown values are refused, not ignored.
    fn to_query(&self) -> Result<VmQuery, ApiError> {
        let sort = match self.sort.as_str() {
            "" => VmSort::Name,
            s => VmSort::parse(s).ok_or_else(|| ApiError::invalid("sort", "Unknown sort order"))?,
        };
        let state = match self.state.as_str() {
            "" => None,
            s => Some(
                STATES
                    .into_iter()
                    .find(|st| st.to_string() == s)
                    .ok_or_else(|| ApiError::invalid("state", "Unknown VM state"))?,
            ),
        };
        let host = super::host_field(&self.host, "Unknown host")?;
        let kind = match self.kind.as_str() {
            "" => None,
            k => Some(
                k.parse::<HostKind>()
                    .map_err(|_| ApiError::invalid("kind", "Unknown host kind"))?,
            ),
        };
        Ok(VmQuery {
            host,
            kind,
            state,
            name: Some(self.q.trim().to_owned()).filter(|q| !q.is_empty()),
            sort,
            descending: self.descending(),
            offset: (self.page() - 1) * PAGE_SIZE,
            limit: PAGE_SIZE,
            ..VmQuery::default()
        })
    }
}

#[derive(Template)]
#[template(path = "vms.html")]
struct VmsPage {
    chrome: Chrome,
    q: ListQuery,
    states: [VmState; 8],
    hosts: Vec<Host>,
    table: VmsTable,
}

#[derive(Template)]
#[template(path = "vms_table.html")]
struct VmsTable {
    q: ListQuery,
    rows: Vec<Arc<VmRecord>>,
    total: usize,
    first: usize,
    prev: Option<String>,
    next: Option<String>,
}

/// One page of the fleet list, from the in-memory inventory: never waits
/// on a host, however many VMs there are.
fn vms_table(
    state: &AppState,
    session: &PortalSession,
    q: &ListQuery,
) -> Result<VmsTable, ApiError> {
    let page = state.app.inventory_vms(&session.subject, &q.to_query()?)?;
    let n = q.page();
    Ok(VmsTable {
        prev: (n > 1).then(|| q.link(&q.sort, &q.dir, n - 1)),
        next: (n * PAGE_SIZE < page.total).then(|| q.link(&q.sort, &q.dir, n + 1)),
        q: q.clone(),
        first: page.offset + 1,
        total: page.total,
        rows: page.items,
    })
}

async fn vms_page(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<ListQuery>,
) -> Response {
    let table = match vms_table(&state, &session, &q) {
        Ok(table) => table,
        Err(e) => return error_response(&session, e),
    };
    if session.htmx {
        // The address bar follows the search, so it can be bookmarked and shared.
        let url = q.link(&q.sort, &q.dir, q.page());
        return ([("hx-push-url", url)], render(&table)).into_response();
    }
    let hosts = match state.app.hosts_list(&session.subject).await {
        Ok(hosts) => hosts,
        Err(e) => return error_response(&session, e),
    };
    render(&VmsPage {
        chrome: Chrome::new(&session, "vms"),
        q,
        states: STATES,
        hosts,
        table,
    })
}

#[derive(Template)]
#[template(path = "vm.html")]
struct VmPage {
    chrome: Chrome,
    host: Host,
    panel: VmPanel,
}

#[derive(Template)]
#[template(path = "vm_panel.html")]
struct VmPanel {
    host_id: HostId,
    csrf_token: String,
    can_operate: bool,
    /// The host's VMs have serial and VNC consoles (libvirt hosts).
    has_consoles: bool,
    vm: Result<VmInfo, String>,
    /// The job a button just started.
    job: Option<Job>,
}

/// A lifecycle button: the action, its form value, its label, the question
/// asked first ("" for none) and whether it can lose the guest's data.
struct Button {
    action: VmAction,
    value: &'static str,
    label: &'static str,
    confirm: &'static str,
    danger: bool,
}

const fn button(
    action: VmAction,
    value: &'static str,
    label: &'static str,
    confirm: &'static str,
    danger: bool,
) -> Button {
    Button {
        action,
        value,
        label,
        confirm,
        danger,
    }
}

const BUTTONS: &[Button] = &[
    button(VmAction::Start, "start", "Start", "", false),
    button(
        VmAction::Shutdown,
        "shutdown",
        "Shut down",
        "Ask the guest to shut down?",
        false,
    ),
    button(
        VmAction::Reboot,
        "reboot",
        "Reboot",
        "Ask the guest to reboot?",
        false,
    ),
    button(VmAction::Suspend, "suspend", "Pause", "", false),
    button(VmAction::Resume, "resume", "Resume", "", false),
    button(
        VmAction::Reset,
        "reset",
        "Reset",
        "Reset the VM like a hardware reset button? Unsaved data in the guest is lost.",
        true,
    ),
    button(
        VmAction::ForceStop,
        "force-stop",
        "Force stop",
        "Pull the plug on the VM? Unsaved data in the guest is lost.",
        true,
    ),
];

impl VmPanel {
    /// The actions the VM's current state allows.
    fn buttons(&self) -> Vec<&'static Button> {
        let Ok(vm) = &self.vm else {
            return Vec::new();
        };
        BUTTONS
            .iter()
            .filter(|b| allowed(vm.state, b.action))
            .collect()
    }

    fn can_delete(&self) -> bool {
        matches!(&self.vm, Ok(vm) if allowed(vm.state, VmAction::Delete))
    }
}

/// The VM's panel; `kind` is the host's kind when the caller has read the
/// host already (it is read here otherwise).
async fn load_panel(
    state: &AppState,
    session: &PortalSession,
    host: HostId,
    uuid: Uuid,
    kind: Option<HostKind>,
) -> VmPanel {
    let vm = state
        .app
        .vm_get(&session.subject, host, &VmName::from_uuid(uuid))
        .await
        .map_err(|e| ApiError::from(e).message);
    let kind = match kind {
        Some(kind) => Some(kind),
        None => state
            .app
            .host_get(&session.subject, host)
            .await
            .ok()
            .map(|h| h.kind),
    };
    let has_consoles = kind == Some(HostKind::Libvirt);
    VmPanel {
        host_id: host,
        csrf_token: session.csrf_token.clone(),
        can_operate: session.can_operate(),
        has_consoles,
        vm,
        job: None,
    }
}

async fn vm_page(
    State(state): State<AppState>,
    session: PortalSession,
    Path((host_id, uuid)): Path<(HostId, Uuid)>,
) -> Response {
    let host = match state.app.host_get(&session.subject, host_id).await {
        Ok(host) => host,
        Err(e) => return error_response(&session, e),
    };
    let panel = load_panel(&state, &session, host_id, uuid, Some(host.kind)).await;
    render(&VmPage {
        chrome: Chrome::new(&session, "vms"),
        host,
        panel,
    })
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    chrome: Chrome,
    host: Host,
    vm: VmInfo,
    /// `serial` or `vnc`.
    kind: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    #[serde(default)]
    kind: Option<String>,
}

/// A VM's console: the page asks the API for a ticket itself (operators
/// only; the API refuses everyone else, and the page then says why).
async fn console_page(
    State(state): State<AppState>,
    session: PortalSession,
    Path((host_id, uuid)): Path<(HostId, Uuid)>,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let kind = match query.kind.as_deref() {
        None | Some("serial") => "serial",
        Some("vnc") => "vnc",
        Some(_) => {
            return error_response(
                &session,
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "kind: expected serial or vnc",
                ),
            );
        }
    };
    let host = match state.app.host_get(&session.subject, host_id).await {
        Ok(host) => host,
        Err(e) => return error_response(&session, e),
    };
    let vm = match state
        .app
        .vm_get(&session.subject, host_id, &VmName::from_uuid(uuid))
        .await
    {
        Ok(vm) => vm,
        Err(e) => return error_response(&session, e),
    };
    render(&ConsolePage {
        chrome: Chrome::new(&session, "vms"),
        host,
        vm,
        kind,
    })
}

async fn vm_panel(
    State(state): State<AppState>,
    session: PortalSession,
    Path((host_id, uuid)): Path<(HostId, Uuid)>,
) -> Response {
    render(&load_panel(&state, &session, host_id, uuid, None).await)
}

#[derive(Deserialize)]
struct ActionForm {
    action: String,
}

fn parse_action(raw: &str) -> Result<VmAction, ApiError> {
    BUTTONS
        .iter()
        .find(|b| b.value == raw)
        .map(|b| b.action)
        .ok_or_else(|| ApiError::invalid("action", "Unknown action"))
}

async fn vm_action(
    State(state): State<AppState>,
    session: PortalSession,
    Path((host_id, uuid)): Path<(HostId, Uuid)>,
    VerifiedForm(form): VerifiedForm<ActionForm>,
) -> Response {
    let action = match parse_action(&form.action) {
        Ok(action) => action,
        Err(e) => return error_response(&session, e),
    };
    // Every change is a job; its progress and the VM's new state arrive
    // through the event stream.
    let name = VmName::from_uuid(uuid);
    let job = match state
        .app
        .vm_act_job(&session.subject, host_id, &name, action)
        .await
    {
        Ok(job) => job,
        Err(e) => return error_response(&session, e),
    };
    if session.htmx {
        let mut panel = load_panel(&state, &session, host_id, uuid, None).await;
        panel.job = Some(job);
        return render(&panel);
    }
    Redirect::to(&format!("/vms/{host_id}/{uuid}")).into_response()
}

/// How long the delete form waits for its job before redirecting.
const DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    with_storage: Option<String>,
}

async fn vm_delete(
    State(state): State<AppState>,
    session: PortalSession,
    Path((host_id, uuid)): Path<(HostId, Uuid)>,
    VerifiedForm(form): VerifiedForm<DeleteForm>,
) -> Response {
    let name = VmName::from_uuid(uuid);
    // The API's job, followed here so the page can show the outcome.
    let deleted = async {
        let job = state
            .app
            .vm_delete_job(
                &session.subject,
                host_id,
                &name,
                form.with_storage.is_some(),
            )
            .await?;
        state
            .app
            .job_follow(&session.subject, &job, DELETE_WAIT)
            .await
    }
    .await;
    match deleted {
        Ok(_) => Redirect::to(&format!("/hosts/{host_id}")).into_response(),
        Err(e) => error_response(&session, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str, sort: &str, dir: &str, page: usize) -> ListQuery {
        ListQuery {
            q: q.into(),
            sort: sort.into(),
            dir: dir.into(),
            page: Some(page),
            ..ListQuery::default()
        }
    }

    #[test]
    fn sort_links_toggle_direction() {
        let q = query("a b", "name", "", 1);
        assert_eq!(
            q.sort_link("name"),
            "/vms?q=a%20b&state=&host=&kind=&sort=name&dir=desc&page=1"
        );
        assert_eq!(
            q.sort_link("host"),
            "/vms?q=a%20b&state=&host=&kind=&sort=host&dir=asc&page=1"
        );
        assert_eq!(q.aria_sort("name"), "ascending");
        assert_eq!(q.aria_sort("host"), "none");
        assert_eq!(query("", "", "", 1).aria_sort("name"), "ascending");
    }

    #[test]
    fn queries_are_checked() {
        let mut q = query("Web", "memory", "desc", 3);
        q.state = "shut_off".into();
        let vq = q.to_query().expect("valid");
        assert_eq!(vq.offset, 2 * PAGE_SIZE);
        assert_eq!(vq.state, Some(VmState::ShutOff));
        assert_eq!(vq.name.as_deref(), Some("Web"));
        assert!(vq.descending);
        q.sort = "bogus".into();
        assert!(q.to_query().is_err());
        let mut q = query("", "", "", 1);
        q.state = "exploded".into();
        assert!(q.to_query().is_err());
        q.state.clear();
        q.kind = "hyperv".into();
        assert_eq!(q.to_query().expect("valid").kind, Some(HostKind::Hyperv));
        q.kind = "xen".into();
        assert!(q.to_query().is_err());
        q.kind.clear();
        q.state.clear();
        q.host = "not-a-uuid".into();
        assert!(q.to_query().is_err());
    }
}
