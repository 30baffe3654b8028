//! A provider as the operator configures it (`[[oidc]]` in the service's
//! configuration), checked at start so a typo fails loudly there rather
//! than at someone's first sign-in.

use std::collections::BTreeMap;

use overvisor_model::account::Role;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest clock difference with a provider that is tolerated.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Short name used in URLs (`/login/oidc/<id>`): a-z, 0-9 and '-'.
    pub id: String,
    /// Shown on the sign-in page: "Sign in with <display_name>".
    pub display_name: String,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Needed for the sign-in flow (confidential client); never logged or
    /// shown.
    #[serde(default)]
    pub client_secret: Option<ClientSecret>,
    /// Scopes asked for at sign-in (`openid` is always added).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Offer "Sign in with …" on the portal. Off: the provider only
    /// vouches for bearer tokens on the API.
    #[serde(default = "yes")]
    pub sign_in: bool,
    /// Bearer JWTs on the API are accepted from this provider only when
    /// set, and only with this audience (`aud`).
    #[serde(default)]
    pub api_audience: Option<String>,
    #[serde(default)]
    pub roles: RoleMapping,
    /// On first sign-in, link to an existing account whose e-mail matches
    /// the provider's verified e-mail instead of creating one. Only for
    /// providers trusted to verify e-mail addresses.
    #[serde(default)]
    pub link_verified_email: bool,
    /// Clock difference tolerated on `exp`/`nbf`/`iat` (0..=300 s).
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// A token signed with a key id not in the cached key set makes the
    /// key set be fetched again, at most once per this many seconds.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_min_secs: u64,
}

/// Which claims carry roles, and what their values mean.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    /// Claims read, in order (`roles`, `groups`, `scp`, or a dotted path
    /// such as `realm_access.roles`). A claim may be a list of strings, or
    /// one string of space-separated values (as `scp` and `scope` are).
    #[serde(default = "default_claims")]
    pub claims: Vec<String>,
    /// Claim value → Overvisor role. When several values map, the highest
    /// role wins.
    #[serde(default)]
    pub map: BTreeMap<String, Role>,
    /// The role of someone none of whose values map; none (the default)
    /// refuses them.
    #[serde(default)]
    pub default: Option<Role>,
}

impl Default for RoleMapping {
    fn default() -> Self {
        Self {
            claims: default_claims(),
            map: BTreeMap::new(),
            default: None,
        }
    }
}

/// A client secret: kept out of `Debug`, logs and responses.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(redacted)")
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_claims() -> Vec<String> {
    vec!["roles".into(), "groups".into()]
}

fn yes() -> bool {
    true
}

fn default_skew() -> u64 {
    60
}

fn default_refresh() -> u64 {
    30
}

impl ProviderSettings {
    /// Checks one provider; the message names it and the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        let at =
            |field: &str, problem: &str| format!("oidc provider {:?}: {field} {problem}", self.id);
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 32
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(at("id", "must be 1 to 32 characters of a-z, 0-9 and '-'"));
        }
        if self.display_name.trim().is_empty() {
            return Err(at("display_name", "must not be empty"));
        }
        check_issuer(&self.issuer).map_err(|p| at("issuer", &p))?;
        if self.client_id.trim().is_empty() {
            return Err(at("client_id", "must not be empty"));
        }
        if self.sign_in && self.client_secret.as_ref().is_none_or(|s| s.0.is_empty()) {
            return Err(at(
                "client_secret",
                "is required to sign in (or set sign_in = false for an API-only provider)",
            ));
        }
        if self.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err(at("scopes", "must be single words"));
        }
        if self
            .api_audience
            .as_ref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(at("api_audience", "must not be empty when set"));
        }
        if self.roles.claims.is_empty() || self.roles.claims.iter().any(|c| c.is_empty()) {
            return Err(at("roles.claims", "must name at least one claim"));
        }
        if self.roles.map.is_empty() && self.roles.default.is_none() {
            return Err(at(
                "roles",
                "maps no claim value to a role and has no default: nobody could sign in",
            ));
        }
        if self.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            return Err(at("clock_skew_secs", "must be between 0 and 300"));
        }
        if self.jwks_refresh_min_secs > 3600 {
            return Err(at("jwks_refresh_min_secs", "must be between 0 and 3600"));
        }
        if !self.sign_in && self.api_audience.is_none() {
            return Err(at(
                "api_audience",
                "is required when sign_in = false (the provider would serve nothing)",
            ));
        }
        Ok(())
    }

    /// The scopes asked for at sign-in, `openid` first and once.
    pub fn scopes_with_openid(&self) -> Vec<String> {
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(self.scopes.iter().filter(|s| *s != "openid").cloned());
        scopes
    }
}

/// HTTPS, or HTTP to a loopback address (a provider on this machine, as in
/// tests); no query or fragment, as the issuer is compared verbatim.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be an https:// URL (http:// only on loopback)".into()),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must have no query or fragment".into());
    }
    Ok(())
}

/// Where a role came from, for the audit log and the refusal page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleDecision {
    /// A claim value mapped to the role.
    Mapped { role: Role, value: String },
    /// No value mapped; the provider's default applies.
    Default(Role),
    /// No value mapped and there is no default: refuse.
    NoRole,
}

impl RoleDecision {
    pub fn role(&self) -> Option<Role> {
        match self {
            RoleDecision::Mapped { role, .. } | RoleDecision::Default(role) => Some(*role),
            RoleDecision::NoRole => None,
        }
    }
}

impl std::fmt::Display for RoleDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleDecision::Mapped { role, value } => write!(f, "role={role} from {value:?}"),
            RoleDecision::Default(role) => write!(f, "role={role} (default)"),
            RoleDecision::NoRole => f.write_str("no role mapped"),
        }
    }
}

impl RoleMapping {
    /// The role the claims give: the highest mapped one, else the default.
    pub fn decide(&self, claims: &Map<String, Value>) -> RoleDecision {
        let mut best: Option<(Role, String)> = None;
        for name in &self.claims {
            for value in claim_values(claims, name) {
                if let Some(role) = self.map.get(&value)
                    && best.as_ref().is_none_or(|(b, _)| role > b)
                {
                    best = Some((*role, value));
                }
            }
        }
        match (best, self.default) {
            (Some((role, value)), _) => RoleDecision::Mapped { role, value },
            (None, Some(role)) => RoleDecision::Default(role),
            (None, None) => RoleDecision::NoRole,
        }
    }
}

/// The string values of a claim: a list of strings, or space-separated
/// words in one string. A name is looked up as is first (namespaced claims
/// such as `https://example.com/roles` contain dots), then as a dotted path.
fn claim_values(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    let value = claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, p| v.get(p))
    });
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> RoleMapping {
        RoleMapping {
            claims: vec!["groups".into(), "scp".into(), "realm_access.roles".into()],
            map: [
                ("ops".to_owned(), Role::Operator),
                ("admins".to_owned(), Role::Admin),
                ("overvisor.read".to_owned(), Role::Reader),
            ]
            .into_iter()
            .collect(),
            default: None,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn highest_mapped_role_wins_across_claims() {
        let m = mapping();
        let got = m.decide(&claims(
            json!({"groups": ["ops", "x"], "scp": "a overvisor.read"}),
        ));
        assert_eq!(got.role(), Some(Role::Operator));
        let got = m.decide(&claims(
            json!({"realm_access": {"roles": ["admins"]}, "groups": ["ops"]}),
        ));
        assert_eq!(
            got,
            RoleDecision::Mapped {
                role: Role::Admin,
                value: "admins".into()
            }
        );
        assert_eq!(
            m.decide(&claims(json!({"scp": "overvisor.read"}))).role(),
            Some(Role::Reader)
        );
    }

    #[test]
    fn unmapped_values_fall_back_to_the_default_or_refuse() {
        let mut m = mapping();
        let c = claims(json!({"groups": ["marketing"], "roles": ["admins"]}));
        // `roles` is not among the claims read.
        assert_eq!(m.decide(&c), RoleDecision::NoRole);
        assert_eq!(
            m.decide(&claims(json!({"groups": 7}))),
            RoleDecision::NoRole
        );
        m.default = Some(Role::Reader);
        assert_eq!(m.decide(&c), RoleDecision::Default(Role::Reader));
    }

    fn settings() -> ProviderSettings {
        ProviderSettings {
            id: "corp".into(),
            display_name: "Corp".into(),
            issuer: "https://login.example.com/tenant/v2.0".into(),
            client_id: "abc".into(),
            client_secret: Some(ClientSecret::new("s3cret")),
            scopes: default_scopes(),
            sign_in: true,
            api_audience: None,
            roles: mapping(),
            link_verified_email: false,
            clock_skew_secs: 60,
            jwks_refresh_min_secs: 30,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(settings().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut ProviderSettings)>;
        let cases: Vec<(&str, Change)> = vec![
            ("id", Box::new(|s| s.id = "Corp!".into())),
            (
                "issuer",
                Box::new(|s| s.issuer = "http://idp.example.com".into()),
            ),
            ("issuer", Box::new(|s| s.issuer = "not a url".into())),
            ("client_secret", Box::new(|s| s.client_secret = None)),
            ("roles", Box::new(|s| s.roles.map.clear())),
            ("clock_skew_secs", Box::new(|s| s.clock_skew_secs = 301)),
            ("api_audience", Box::new(|s| s.sign_in = false)),
            ("display_name", Box::new(|s| s.display_name = " ".into())),
        ];
        for (field, change) in cases {
            let mut s = settings();
            change(&mut s);
            let err = s.validate().expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
        let mut s = settings();
        s.issuer = "http://127.0.0.1:4000".into();
        assert_eq!(s.validate(), Ok(()), "http on loopback is allowed");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let text = format!("{:?}", settings());
        assert!(!text.contains("s3cret"), "{text}");
    }
}
