//! The deploy wizard: profile → host (with what it has free) → size and
//! network → name and account → confirm. Each step is a plain form that
//! carries the steps before it as hidden fields; the server checks them
//! with the same control-layer checks a deployment runs
//! (`App::vm_deploy_check`), so a step is refused exactly as the API would
//! refuse it, next to its field. The last step creates the deployment
//! through the API's own call and answers with the only page that ever
//! shows the guest's password (`Cache-Control: no-store`); the script
//! then points the browser's address at the deployment's own page, which
//! never shows it, so a reload cannot.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use overvisor_control::AppError;
use overvisor_control::deployments::{DeployStage, HostCapacity, HostRoom};
use overvisor_deploy::request::{NetworkAttachment, default_username};
use overvisor_deploy::secret::RequestSecret;
use overvisor_deploy::{DeploymentRequest, Profile};
use overvisor_model::account::GuestKey;
use overvisor_model::host::{Host, HostId};
use overvisor_model::job::JobId;
use overvisor_model::operation::Operation;
use serde::Deserialize;
use uuid::Uuid;

use super::jobs::JobPanel;
use super::{Chrome, PortalSession, VerifiedForm, error_response, render};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/deploy", get(deploy_start).post(deploy_step))
        .route("/deploy/create", post(deploy_create))
        .route("/deploy/{job}", get(deployed_page))
}

/// The wizard's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Profile,
    Host,
    Size,
    Name,
    Confirm,
}

impl Step {
    const ALL: [Step; 5] = [
        Step::Profile,
        Step::Host,
        Step::Size,
        Step::Name,
        Step::Confirm,
    ];

    fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|step| step.id() == s)
            .unwrap_or(Step::Profile)
    }

    pub fn id(self) -> &'static str {
        match self {
            Step::Profile => "profile",
            Step::Host => "host",
            Step::Size => "size",
            Step::Name => "name",
            Step::Confirm => "confirm",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Step::Profile => "Profile",
            Step::Host => "Host",
            Step::Size => "Size and network",
            Step::Name => "Name and account",
            Step::Confirm => "Confirm",
        }
    }

    /// What must pass before this step is shown.
    fn requires(self) -> Option<DeployStage> {
        match self {
            Step::Profile => None,
            Step::Host => Some(DeployStage::Profile),
            Step::Size => Some(DeployStage::Host),
            Step::Name => Some(DeployStage::Size),
            Step::Confirm => Some(DeployStage::Name),
        }
    }

    fn previous(self) -> Option<Step> {
        Self::ALL.into_iter().take_while(|s| *s != self).last()
    }

    /// The form fields this step asks for (errors about them are shown
    /// next to them).
    fn fields(self) -> &'static [&'static str] {
        match self {
            Step::Profile => &["profile"],
            Step::Host => &["host"],
            Step::Size => &["vcpus", "memory_mib", "disk_gib", "network"],
            Step::Name => &[
                "name",
                "username",
                "ssh_keys",
                "locale",
                "timezone",
                "product_key",
            ],
            Step::Confirm => &[],
        }
    }

    /// The step whose field an error names (`network.bridge` and
    /// `ssh_keys[1]` count as their field).
    fn of_field(field: &str) -> Option<Step> {
        let base = field_base(field);
        Self::ALL.into_iter().find(|s| s.fields().contains(&base))
    }
}

fn field_base(field: &str) -> &str {
    field.split(['.', '[']).next().unwrap_or(field)
}

/// The wizard's form as typed, kept as text so a refused step comes back
/// exactly as the operator left it.
#[derive(Deserialize, Default, Clone)]
pub struct DeployForm {
    #[serde(default)]
    pub profile: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub vcpus: String,
    #[serde(default)]
    pub memory_mib: String,
    #[serde(default)]
    pub disk_gib: String,
    /// `bridge:NAME` or `network:NAME`.
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub username: String,
    /// One OpenSSH public key per line.
    #[serde(default)]
    pub ssh_keys: String,
    /// Blank: the default (`en-US`).
    #[serde(default)]
    pub locale: String,
    /// Blank: the default (`UTC`, or the Windows id for it).
    #[serde(default)]
    pub timezone: String,
    /// Windows only; blank: none (evaluation media).
    #[serde(default)]
    pub product_key: String,
    /// The step to show next.
    #[serde(default)]
    go: String,
}

impl DeployForm {
    /// The host and the deployment request the form says. Fields not filled
    /// in yet become values the control layer refuses (0, empty), so only
    /// text that cannot be a value at all is refused here.
    fn request(&self) -> Result<(Option<HostId>, DeploymentRequest), ApiError> {
        let host = super::host_field(&self.host, "Choose a host")?;
        let number = |field: &str, text: &str| -> Result<u64, ApiError> {
            match text.trim() {
                "" => Ok(0),
                t => t.parse().map_err(|_| {
                    ApiError::invalid(field, format!("{field} must be a whole number"))
                }),
            }
        };
        let vcpus = u32::try_from(number("vcpus", &self.vcpus)?)
            .map_err(|_| ApiError::invalid("vcpus", "vcpus is too large"))?;
        let network = match self.network.split_once(':') {
            Some(("network", n)) => NetworkAttachment::Network(n.to_owned()),
            Some(("bridge", b)) => NetworkAttachment::Bridge(b.to_owned()),
            _ => NetworkAttachment::Bridge(String::new()),
        };
        let request = DeploymentRequest {
            profile: self.profile.trim().to_owned(),
            name: self.name.trim().to_owned(),
            vcpus,
            memory_mib: number("memory_mib", &self.memory_mib)?,
            disk_gib: number("disk_gib", &self.disk_gib)?,
            network,
            ssh_keys: self.keys(),
            username: optional(&self.username),
            locale: optional(&self.locale),
            timezone: optional(&self.timezone),
            image_transfer: None,
            product_key: optional(&self.product_key).map(RequestSecret::new),
        };
        Ok((host, request))
    }

    /// The keys typed, one per line; none typed: the account's guest keys.
    fn keys(&self) -> Option<Vec<String>> {
        let keys: Vec<String> = self
            .ssh_keys
            .lines()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        (!keys.is_empty()).then_some(keys)
    }

    /// Fills the sizes in from the profile's defaults where they are blank.
    fn with_defaults(mut self, profile: &Profile) -> Self {
        let fill = |field: &mut String, value: u64| {
            if field.trim().is_empty() {
                *field = value.to_string();
            }
        };
        fill(&mut self.vcpus, profile.defaults.vcpus.into());
        fill(&mut self.memory_mib, profile.defaults.memory_mib);
        fill(&mut self.disk_gib, profile.defaults.disk_gib);
        self
    }
}

/// A blank field means the request leaves it out (its default applies).
fn optional(text: &str) -> Option<String> {
    Some(text.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A refusal as the wizard shows it.
pub struct StepError {
    pub field: Option<String>,
    pub message: String,
}

impl From<ApiError> for StepError {
    /// Next to its field, a message need not name the field again
    /// ("name must …" becomes "Must …").
    fn from(e: ApiError) -> Self {
        let message = match e.field.as_deref().and_then(|f| e.message.strip_prefix(f)) {
            Some(rest) => {
                let rest = rest.trim_start();
                let mut chars = rest.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_uppercase().chain(chars).collect()
                })
            }
            None => e.message,
        };
        Self {
            field: e.field,
            message,
        }
    }
}

/// A host offered in the host step.
pub struct HostChoice {
    pub host: Host,
    /// `Ok(None)`: shown once chosen (another replica asks the host).
    pub capacity: Result<Option<HostRoom>, String>,
}

#[derive(Template)]
#[template(path = "deploy.html")]
struct DeployPage {
    chrome: Chrome,
    step: Step,
    steps: [Step; 5],
    form: DeployForm,
    error: Option<StepError>,
    /// Profile step: every profile and why it cannot be deployed (if so).
    profiles: Vec<(Profile, Option<String>)>,
    /// Host step.
    hosts: Vec<HostChoice>,
    /// Later steps: the chosen profile and host.
    profile: Option<Profile>,
    host: Option<Host>,
    capacity: Option<HostCapacity>,
    /// Name and confirm steps: the account's guest keys, injected when no
    /// key is typed (not for Windows).
    guest_keys: Vec<GuestKey>,
    /// The guest user name a blank field gives (none: the account's name
    /// cannot be one on this profile's OS).
    default_user: Option<String>,
}

impl DeployPage {
    fn on(&self, step: &str) -> bool {
        self.step.id() == step
    }

    /// The error about `field`, when this step shows that field.
    fn field_error(&self, field: &str) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|e| e.field.as_deref().map(field_base) == Some(field))
            .map(|e| e.message.as_str())
    }

    /// An error about none of this step's fields: shown above the form.
    fn page_error(&self) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|e| {
                e.field
                    .as_deref()
                    .is_none_or(|f| !self.step.fields().contains(&field_base(f)))
            })
            .map(|e| e.message.as_str())
    }

    /// `aria-invalid` for a field.
    fn invalid(&self, field: &str) -> &'static str {
        if self.field_error(field).is_some() {
            "true"
        } else {
            "false"
        }
    }

    fn network_choices(&self) -> Vec<(String, String)> {
        let Some(c) = &self.capacity else {
            return Vec::new();
        };
        let bridges = c
            .facts
            .bridges
            .iter()
            .map(|b| (format!("bridge:{b}"), format!("Bridge {b}")));
        let networks = c
            .facts
            .networks
            .iter()
            .map(|n| (format!("network:{n}"), format!("libvirt network {n}")));
        bridges.chain(networks).collect()
    }

    fn network_label(&self) -> String {
        match self.form.network.split_once(':') {
            Some(("bridge", b)) => format!("Bridge {b}"),
            Some(("network", n)) => format!("libvirt network {n}"),
            _ => self.form.network.clone(),
        }
    }

    /// The chosen profile installs Windows (its time zones are Windows ids).
    fn windows(&self) -> bool {
        self.profile
            .as_ref()
            .is_some_and(|p| p.os == overvisor_deploy::profile::OsFamily::Windows)
    }

    /// The keys the deployment will inject: those typed, or else the
    /// account's guest keys (none on Windows).
    fn key_count(&self) -> usize {
        match self.form.keys() {
            Some(keys) => keys.len(),
            None if self.windows() => 0,
            None => self.guest_keys.len(),
        }
    }

    /// Whether the account's guest keys are the ones injected.
    fn default_keys(&self) -> bool {
        self.form.keys().is_none() && !self.windows()
    }

    /// The guest user the deployment creates, as far as known.
    fn user_label(&self) -> &str {
        match optional(&self.form.username) {
            Some(_) => self.form.username.trim(),
            None => self.default_user.as_deref().unwrap_or(""),
        }
    }
}

#[derive(Deserialize, Default)]
struct StartQuery {
    #[serde(default)]
    host: String,
    #[serde(default)]
    profile: String,
}

/// The wizard's first step; `?host=` (from a host's page) picks the host.
async fn deploy_start(
    State(state): State<AppState>,
    session: PortalSession,
    Query(q): Query<StartQuery>,
) -> Response {
    let form = DeployForm {
        host: q.host,
        profile: q.profile,
        ..DeployForm::default()
    };
    show(&state, &session, form, Step::Profile, None, None).await
}

/// One step forward (or back): checks what the steps before the one asked
/// for say, and shows it, or the step a refusal is about.
async fn deploy_step(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<DeployForm>,
) -> Response {
    let target = Step::parse(&form.go);
    let checked = async {
        let (host, req) = form.request()?;
        match target.requires() {
            None => Ok(None),
            Some(stage) => state
                .app
                .vm_deploy_check(&session.subject, host, &req, stage)
                .await
                .map_err(ApiError::from),
        }
    }
    .await;
    match checked {
        Ok(capacity) => show(&state, &session, form, target, None, capacity).await,
        Err(e) => refused(&state, &session, form, target, e).await,
    }
}

/// Shows a refusal on the step whose field it names; one naming no field
/// on the step just submitted.
async fn refused(
    state: &AppState,
    session: &PortalSession,
    form: DeployForm,
    target: Step,
    e: ApiError,
) -> Response {
    if matches!(e.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) && e.field.is_none() {
        return error_response(session, e);
    }
    let step = e
        .field
        .as_deref()
        .and_then(Step::of_field)
        .or_else(|| target.previous())
        .unwrap_or(Step::Profile);
    let status = e.status;
    let page = show(state, session, form, step, Some(e.into()), None).await;
    if page.status() == StatusCode::OK {
        (status, page).into_response()
    } else {
        page
    }
}

/// Renders `step` with what it needs: the profiles, the hosts with their
/// capacity, or the chosen host's capacity (asked again when the check
/// that led here did not answer it).
async fn show(
    state: &AppState,
    session: &PortalSession,
    form: DeployForm,
    step: Step,
    error: Option<StepError>,
    capacity: Option<HostCapacity>,
) -> Response {
    let app = &state.app;
    let subject = &session.subject;
    let profiles = match app.vm_deploy_profiles(subject) {
        Ok(p) => p,
        Err(e) => return error_response(session, e),
    };
    let profile = profiles
        .iter()
        .find(|(p, _)| p.name.as_str() == form.profile.trim())
        .map(|(p, _)| p.clone());
    let mut page = DeployPage {
        chrome: Chrome::new(session, "vms"),
        step,
        steps: Step::ALL,
        form,
        error,
        profiles: Vec::new(),
        hosts: Vec::new(),
        profile,
        host: None,
        capacity,
        guest_keys: Vec::new(),
        default_user: None,
    };
    match step {
        Step::Profile => page.profiles = profiles,
        Step::Host => match app.vm_deploy_hosts(subject).await {
            Ok(hosts) => {
                page.hosts = hosts
                    .into_iter()
                    .map(|(host, capacity)| HostChoice {
                        host,
                        capacity: capacity.map_err(|e| ApiError::from(e).message),
                    })
                    .collect()
            }
            Err(e) => return error_response(session, e),
        },
        Step::Size | Step::Name | Step::Confirm => {
            let host = page.form.request().ok().and_then(|(h, _)| h);
            let Some(host) = host else {
                return Box::pin(refused(
                    state,
                    session,
                    page.form,
                    step,
                    ApiError::invalid("host", "Choose a host"),
                ))
                .await;
            };
            match app.host_get(subject, host).await {
                Ok(h) => page.host = Some(h),
                Err(e) => return error_response(session, e),
            }
            if step == Step::Size && page.capacity.is_none() {
                let asked = match page.form.request() {
                    Ok((_, req)) => app
                        .vm_deploy_check(subject, Some(host), &req, DeployStage::Host)
                        .await
                        .map_err(ApiError::from),
                    Err(e) => Err(e),
                };
                match asked {
                    Ok(c) => page.capacity = c,
                    Err(e) if page.error.is_none() => {
                        return Box::pin(refused(state, session, page.form, Step::Size, e)).await;
                    }
                    Err(_) => {}
                }
            }
            if let Some(p) = &page.profile {
                page.form = page.form.clone().with_defaults(p);
                page.default_user = default_username(subject.user.name.as_str(), p.os);
            }
            if step >= Step::Name {
                match app.guest_keys_list(subject, subject.id()).await {
                    Ok(keys) => page.guest_keys = keys,
                    Err(e) => return error_response(session, e),
                }
            }
        }
    }
    render(&page)
}

/// The last step: the deployment itself, through the API's own call.
async fn deploy_create(
    State(state): State<AppState>,
    session: PortalSession,
    VerifiedForm(form): VerifiedForm<DeployForm>,
) -> Response {
    let created = async {
        let (host, req) = form.request()?;
        let host = host.ok_or_else(|| ApiError::invalid("host", "Choose a host"))?;
        let (job, credentials) = state
            .app
            .vm_deploy_job(&session.subject, host, &req)
            .await?;
        let detail = state.app.job_get(&session.subject, job.id).await?;
        Ok::<_, ApiError>((detail, credentials))
    }
    .await;
    match created {
        Ok((detail, credentials)) => {
            let Some(page) = DeployedPage::of(&session, JobPanel { detail }) else {
                return error_response(&session, AppError::Internal("not a deployment".into()));
            };
            let page = DeployedPage {
                credentials: Some((
                    credentials.username,
                    credentials.password.expose().to_owned(),
                )),
                ..page
            };
            let mut response = render(&page);
            // The page holds a password: nobody may keep it, not even the
            // browser's cache or back-forward cache.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => refused(&state, &session, form, Step::Confirm, e).await,
    }
}

#[derive(Template)]
#[template(path = "deployed.html")]
struct DeployedPage {
    chrome: Chrome,
    panel: JobPanel,
    host: HostId,
    vm_name: String,
    vm_uuid: Uuid,
    /// Only in the answer to the deployment itself.
    credentials: Option<(String, String)>,
}

impl DeployedPage {
    /// The page of a `vm.deploy` job (none for other jobs).
    fn of(session: &PortalSession, panel: JobPanel) -> Option<Self> {
        let Some(Operation::VmDeploy { host, vm, spec }) = &panel.detail.operation else {
            return None;
        };
        Some(Self {
            chrome: Chrome::new(session, "vms"),
            host: *host,
            vm_name: vm.as_str().to_owned(),
            vm_uuid: spec.uuid,
            credentials: None,
            panel,
        })
    }
}

/// The deployment's page as anyone may see it again: progress, no password.
async fn deployed_page(
    State(state): State<AppState>,
    session: PortalSession,
    Path(id): Path<JobId>,
) -> Response {
    match state.app.job_get(&session.subject, id).await {
        Ok(detail) => match DeployedPage::of(&session, JobPanel { detail }) {
            Some(page) => render(&page),
            None => error_response(&session, AppError::NotFound("deployment")),
        },
        Err(e) => error_response(&session, e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_refusal_belongs_to_the_step_of_its_field() {
        for (field, step) in [
            ("profile", Step::Profile),
            ("host", Step::Host),
            ("memory_mib", Step::Size),
            ("network.bridge", Step::Size),
            ("name", Step::Name),
            ("ssh_keys[3]", Step::Name),
            ("locale", Step::Name),
            ("timezone", Step::Name),
        ] {
            assert_eq!(Step::of_field(field), Some(step), "{field}");
        }
        assert_eq!(Step::of_field("windows"), None);
        assert_eq!(Step::Confirm.previous(), Some(Step::Name));
        assert_eq!(Step::Profile.previous(), None);
        assert_eq!(Step::parse("size"), Step::Size);
        assert_eq!(Step::parse("bogus"), Step::Profile);
    }

    #[test]
    fn next_to_its_field_a_message_does_not_repeat_the_field() {
        let shown = StepError::from(ApiError::invalid("vcpus", "vcpus must be at most 2"));
        assert_eq!(shown.message, "Must be at most 2");
        assert_eq!(shown.field.as_deref(), Some("vcpus"));
        let other = StepError::from(ApiError::invalid("name", "Choose a name"));
        assert_eq!(other.message, "Choose a name");
    }

    #[test]
    fn the_form_becomes_the_api_request() {
        let form = DeployForm {
            profile: " debian-12 ".into(),
            host: "6f1c0a4e-93c4-4b8e-a0a2-3c1d7f6f2b10".into(),
            vcpus: "2".into(),
            memory_mib: "2048".into(),
            disk_gib: "".into(),
            network: "network:default".into(),
            name: "web-01".into(),
            username: "ops".into(),
            ssh_keys: "ssh-ed25519 AAAA a\r\n\r\n  ssh-ed25519 BBBB b  \r\n".into(),
            locale: " ".into(),
            timezone: " Europe/Berlin ".into(),
            product_key: " ".into(),
            go: "confirm".into(),
        };
        let (host, req) = form.request().unwrap();
        assert!(host.is_some());
        assert_eq!(req.profile, "debian-12");
        assert_eq!((req.vcpus, req.memory_mib, req.disk_gib), (2, 2048, 0));
        assert_eq!(req.network, NetworkAttachment::Network("default".into()));
        assert_eq!(
            req.ssh_keys,
            Some(vec![
                "ssh-ed25519 AAAA a".into(),
                "ssh-ed25519 BBBB b".into()
            ])
        );
        assert_eq!(req.username.as_deref(), Some("ops"));
        // Blank: the account's user name and guest keys.
        let blank = DeployForm {
            username: " ".into(),
            ssh_keys: "\r\n ".into(),
            ..form.clone()
        };
        let (_, req) = blank.request().unwrap();
        assert_eq!((req.username, req.ssh_keys), (None, None));
        assert_eq!(req.locale, None, "blank: the default");
        assert_eq!(req.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(req.product_key, None, "blank: none");
        let keyed = DeployForm {
            product_key: " VDYBY-N7KWH-9GXR3-XBQX3-CVHD8 ".into(),
            ..form.clone()
        };
        let (_, req) = keyed.request().unwrap();
        assert_eq!(
            req.product_key.as_ref().map(RequestSecret::expose),
            Some("VDYBY-N7KWH-9GXR3-XBQX3-CVHD8")
        );
        let bad = DeployForm {
            vcpus: "two".into(),
            ..form.clone()
        };
        assert_eq!(bad.request().unwrap_err().field.as_deref(), Some("vcpus"));
        let bad = DeployForm {
            host: "not-a-host".into(),
            ..form
        };
        assert_eq!(bad.request().unwrap_err().field.as_deref(), Some("host"));
    }
}
