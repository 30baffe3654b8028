//! The REST API under `/api/v1`. One module per resource; handlers are
//! `<resource>_<verb>`. The OpenAPI document is generated from these handlers.

pub mod audit;
pub mod auth;
pub mod consoles;
pub mod deployments;
pub mod events;
pub mod guest_keys;
pub mod hosts;
pub mod inventory;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod profiles;
pub mod sessions;
pub mod users;
pub mod vms;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(auth::auth_login))
        .route("/api/v1/auth/logout", post(auth::auth_logout))
        .route("/api/v1/users/me", get(users::user_me))
        .route("/api/v1/users/me/password", post(users::password_change))
        .route("/api/v1/users/me/ssh-key", get(users::ssh_key_get))
        .route(
            "/api/v1/users/me/sessions",
            get(sessions::sessions_list).delete(sessions::sessions_delete_all),
        )
        .route(
            "/api/v1/users/me/sessions/{id}",
            axum::routing::delete(sessions::session_delete),
        )
        .route(
            "/api/v1/users/me/keys",
            get(keys::keys_list).post(keys::key_create),
        )
        .route(
            "/api/v1/users/me/keys/{id}",
            get(keys::key_get).delete(keys::key_revoke),
        )
        .route("/api/v1/users/me/keys/{id}/rotate", post(keys::key_rotate))
        .route(
            "/api/v1/users/me/guest-keys",
            get(guest_keys::guest_keys_list).post(guest_keys::guest_key_create),
        )
        .route(
            "/api/v1/users/me/guest-keys/{id}",
            axum::routing::delete(guest_keys::guest_key_delete),
        )
        .route(
            "/api/v1/users",
            get(users::users_list).post(users::user_create),
        )
        .route(
            "/api/v1/users/{id}",
            get(users::user_get).patch(users::user_update),
        )
        .route(
            "/api/v1/users/{id}/reset-password",
            post(users::user_reset_password),
        )
        .route("/api/v1/audit", get(audit::audit_list))
        .route(
            "/api/v1/hosts",
            get(hosts::hosts_list).post(hosts::host_create),
        )
        .route("/api/v1/hosts/probe", post(hosts::host_probe))
        .route(
            "/api/v1/hosts/{id}",
            get(hosts::host_get)
                .patch(hosts::host_update)
                .delete(hosts::host_delete),
        )
        .route("/api/v1/hosts/{id}/facts", get(hosts::host_facts))
        .route("/api/v1/hosts/{id}/metrics", get(metrics::host_metrics))
        .route("/api/v1/vms/{id}/metrics", get(metrics::vm_metrics))
        .route("/api/v1/metrics/fleet", get(metrics::fleet_metrics))
        .route(
            "/api/v1/hosts/{id}/deployments",
            post(deployments::deployment_create),
        )
        .route("/api/v1/hosts/{id}/vms", get(inventory::host_vms))
        .route("/api/v1/hosts/{id}/resync", post(inventory::host_resync))
        .route(
            "/api/v1/hosts/{id}/vms/{name}",
            get(vms::vm_get).delete(vms::vm_delete),
        )
        .route(
            "/api/v1/hosts/{id}/vms/{name}/console",
            post(consoles::console_ticket),
        )
        .route("/api/v1/consoles/{ticket}", get(consoles::console_socket))
        .route(
            "/api/v1/hosts/{id}/vms/{name}/{action}",
            post(vms::vm_action),
        )
        .route("/api/v1/servers/connect", post(hosts::server_connect))
        // The path host agents have always used, without the /api prefix.
        .route("/v1/servers/connect", post(hosts::server_connect))
        .route("/api/v1/jobs", get(jobs::jobs_list))
        .route("/api/v1/jobs/{id}", get(jobs::job_get))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::job_cancel))
        .route("/api/v1/events", get(events::events_stream))
        .route("/api/v1/inventory", get(inventory::inventory_summary))
        .route(
            "/api/v1/inventory/resync",
            post(inventory::inventory_resync),
        )
        .route("/api/v1/vms", get(inventory::inventory_vms))
        .route("/api/v1/profiles", get(profiles::profiles_list))
        .route("/api/v1/vms/{id}", get(inventory::inventory_vm))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Overvisor API", description = "Control plane for QEMU/KVM (libvirt) and Hyper-V hosts. \
        Authenticate with `Authorization: Bearer <API key>`; errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`."),
    paths(
        auth::auth_login, auth::auth_logout,
        users::user_me, users::password_change, users::ssh_key_get,
        users::users_list, users::user_create, users::user_get, users::user_update, users::user_reset_password,
        sessions::sessions_list, sessions::sessions_delete_all, sessions::session_delete,
        keys::keys_list, keys::key_create, keys::key_get, keys::key_revoke, keys::key_rotate,
        guest_keys::guest_keys_list, guest_keys::guest_key_create, guest_keys::guest_key_delete,
        audit::audit_list,
        hosts::host_probe, hosts::host_create, hosts::hosts_list, hosts::host_get, hosts::host_update,
        hosts::host_delete, hosts::host_facts, hosts::server_connect,
        inventory::host_vms, vms::vm_get, vms::vm_action, vms::vm_delete,
        deployments::deployment_create,
        consoles::console_ticket, consoles::console_socket,
        jobs::jobs_list, jobs::job_get, jobs::job_cancel,
        events::events_stream,
        inventory::inventory_summary, inventory::inventory_vms, inventory::inventory_vm,
        inventory::inventory_resync, inventory::host_resync,
        profiles::profiles_list,
        metrics::host_metrics, metrics::vm_metrics, metrics::fleet_metrics,
        crate::observe::healthz, crate::observe::readyz, crate::observe::metrics_text,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &CommonResponses),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "auth", description = "Browser sign-in for the portal and scripts"),
        (name = "account", description = "The caller's own account, keys, guest SSH keys and sessions"),
        (name = "users", description = "User administration (admin)"),
        (name = "audit", description = "Who did what, when"),
        (name = "hosts", description = "The host registry, host key confirmation and agent enrolment"),
        (name = "vms", description = "VMs on a host: list (from the inventory), show, lifecycle actions, delete"),
        (name = "jobs", description = "Every change runs as a job: status, progress, log, result"),
        (name = "profiles", description = "What can be deployed: OS images, firmware, sizing"),
        (name = "consoles", description = "A running VM's serial console over a WebSocket, opened with a single-use ticket"),
        (name = "events", description = "Live stream of job, inventory and host events"),
        (name = "inventory", description = "Every VM on every host, from memory"),
        (name = "metrics", description = "Usage graphs: CPU, memory, disk and network of hosts, VMs and the fleet"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ovk_…")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("ov_session"))),
        );
    }
}

/// The error answers any operation can give because of how it is called,
/// added where an operation does not list them itself: 401 to every one
/// that needs credentials, 400 where a query or body is parsed (a bad
/// value, bad JSON), 404 where a path names something (or cannot be an
/// id), and 413/415 where a JSON body is read.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

        let global_security = openapi.security.clone().unwrap_or_default();
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let shared = item.parameters.clone().unwrap_or_default();
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let security = op.security.as_ref().unwrap_or(&global_security);
                let public = security
                    .iter()
                    .any(|r| *r == SecurityRequirement::default());
                let params = op.parameters.iter().flatten().chain(&shared);
                let (mut query, mut path) = (false, false);
                for p in params {
                    if let RefOr::T(p) = p {
                        query |= matches!(p.parameter_in, ParameterIn::Query);
                        path |= matches!(p.parameter_in, ParameterIn::Path);
                    }
                }
                let body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description));
                };
                if !public {
                    add("401", "Missing, invalid, expired or revoked credentials");
                }
                if query || body {
                    add(
                        "400",
                        "A query parameter or the body is malformed or invalid (`field` names it)",
                    );
                }
                if path {
                    add(
                        "404",
                        "Nothing by that id or name (or it belongs to someone you may not see)",
                    );
                }
                if body {
                    add("413", "The body is over `max_body_bytes`");
                    add("415", "The body is not `Content-Type: application/json`");
                }
            }
        }
    }
}

pub fn docs_routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", ApiDoc::openapi()))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}
