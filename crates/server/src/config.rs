//! Service configuration: built-in defaults, then an optional TOML file,
//! then `OVERVISOR_<FIELD>` environment variables (highest precedence).
//! Every field of [`Config`] can be set either way, under the same name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Holds the SQLite database and the generated master key.
    pub data_dir: PathBuf,
    pub ui_bind: SocketAddr,
    pub api_bind: SocketAddr,
    /// Defaults to `sqlite://<data_dir>/overvisor.db`; `postgres://…` selects
    /// PostgreSQL.
    pub database_url: Option<String>,
    /// Base64 master key for sealed secrets; wins over `master_key_file`.
    pub master_key: Option<String>,
    /// Defaults to `<data_dir>/master.key`, generated on first start.
    pub master_key_file: Option<PathBuf>,
    /// `Secure` on cookies. Defaults to on unless the UI listens on loopback only.
    pub secure_cookies: Option<bool>,
    pub session_ttl_secs: u64,
    /// Base URL shown to users for the API; defaults to `http://<api_bind>`.
    pub public_api_url: Option<String>,
    /// `text` or `json`.
    pub log_format: String,
    /// Use the left-most `X-Forwarded-For` address as the client address
    /// (only behind a trusted reverse proxy).
    pub trust_forwarded_for: bool,
    pub max_body_bytes: usize,
    /// A client must send a request's headers within this many seconds of
    /// connecting (or of its previous response); idle connections close then.
    pub header_read_timeout_secs: u64,
    /// ... and the request's body within this many seconds of its headers.
    pub body_read_timeout_secs: u64,
    /// Connections served at once per listener; more wait to be accepted.
    pub max_connections: usize,
    pub login_window_secs: u64,
    pub login_max_failures_per_account: usize,
    pub login_max_failures_per_address: usize,
    /// Full resync of every connected host's inventory this often (at least 1).
    pub inventory_resync_secs: u64,
    /// Several replicas on PostgreSQL: how long a replica's hold on a host
    /// lasts without renewal (renewed every third of it). A replica that
    /// dies loses its hosts to the others after this.
    pub host_lease_secs: u64,
    /// Several replicas: the URL the other replicas reach this one's API at
    /// (e.g. `http://10.0.0.5:8001`), to forward requests that need a host
    /// it owns. Default: the API listener's address, unless that is
    /// 0.0.0.0 (then set it, e.g. from the pod's IP).
    pub replica_url: Option<String>,
    /// Several replicas: the URL the other replicas reach this one's portal
    /// at, to forward portal pages that need a host it owns. Default: the
    /// portal listener's address, unless that is 0.0.0.0.
    pub replica_ui_url: Option<String>,
    /// An open event stream re-validates its credential this often (at
    /// least 1), to end streams whose key or session expired or was revoked
    /// by another process (such as `overvisor key revoke`). Revocations
    /// made through this service end streams at once regardless.
    pub stream_recheck_secs: u64,
    /// Event streams (`GET /api/v1/events`) one API key or session may have
    /// open at once (1..=4096); more are refused with 429.
    pub event_streams_per_credential: usize,
    /// SSH handshakes in flight at once across all hosts (at least 1):
    /// after a restart, hosts connect this many at a time instead of all at
    /// once.
    pub ssh_connects_in_flight: usize,
    /// Deadline of one command on a host (5..=3600 s): a host that stops
    /// answering fails the step running on it after this long at most.
    pub ssh_command_timeout_secs: u64,
    /// Serial consoles open at once on one host (1..=64; viewers of one VM
    /// share one), and 4× as many graphical ones. Each serial console is
    /// an SSH session channel beside the service's 6 for commands, so the
    /// host's sshd `MaxSessions` (default 10) must allow 6 + this.
    pub consoles_per_host: usize,
    /// Keepalive period of host connections (1..=300 s): three unanswered
    /// in a row and the connection counts as dead, failing what runs on it.
    pub ssh_keepalive_secs: u64,
    /// How long a job's claim holds without renewal (2..=3600): when a
    /// service dies mid-job, another (or the restarted one) takes the job
    /// over this long after the last renewal, resuming or interrupting it.
    pub job_lease_secs: u64,
    /// Operator deployment profiles (`*.toml`), beside the built-in ones;
    /// defaults to `<data_dir>/profiles` (which need not exist).
    pub profiles_dir: Option<PathBuf>,
    /// Deploy guests emulated (libvirt domain type `qemu`, TCG) even on
    /// hosts that offer KVM: for nested labs where `/dev/kvm` exists but
    /// cannot run guests. Off: KVM wherever libvirt offers it.
    #[serde(deserialize_with = "flag")]
    pub deploy_emulated: bool,
    /// The images the control plane keeps to stream to hosts with no
    /// route out (`<data_dir>/images`) are removed once unused this many
    /// days (1..=3650); 0 keeps them for good. Hosts' own caches are not
    /// touched.
    pub image_cache_keep_days: u64,
    /// Every connected host (and its VMs) is sampled for the usage graphs
    /// this often, in seconds (1..=600); 0 turns sampling off. The graphs
    /// keep one hour at this step and one day at 10 minutes (or this step
    /// if longer), in memory: about 3.3 KiB per VM at 30 s.
    pub metrics_step_secs: u64,
    /// `/metrics` also exports each VM's figures (labelled by host, VM UUID
    /// and name): six series per VM, so off by default.
    #[serde(deserialize_with = "flag")]
    pub metrics_per_vm: bool,
    /// Whether this process runs jobs. Every replica does by default; one
    /// with `false` serves the API and portal and leaves the jobs it
    /// accepts to the replicas that run them.
    #[serde(deserialize_with = "flag")]
    pub run_jobs: bool,
    /// OpenID Connect providers, one `[[oidc]]` table each (see
    /// docs/oidc.md): "Sign in with …" on the portal, and bearer JWTs on
    /// the API for those with an `api_audience`.
    pub oidc: Vec<overvisor_oidc::ProviderSettings>,
    /// Offer sign-in with a password. Off (`false`) hides the form and
    /// refuses password sign-in everywhere; needs an `[[oidc]]` provider.
    /// API keys keep working.
    #[serde(deserialize_with = "flag")]
    pub password_login: bool,
    /// The portal's URL as browsers reach it, for identity providers to
    /// send them back to (`<public_ui_url>/login/oidc/<id>/callback`);
    /// defaults to `http://<ui_bind>`.
    pub public_ui_url: Option<String>,
    /// Offers `POST /api/v1/jobs/test-sleep`, a job that only sleeps, for
    /// integration tests. `true`/`false` (or `1`/`0`); keep it off in production.
    #[serde(deserialize_with = "flag")]
    pub test_jobs: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            ui_bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            api_bind: SocketAddr::from(([127, 0, 0, 1], 8001)),
            database_url: None,
            master_key: None,
            master_key_file: None,
            secure_cookies: None,
            session_ttl_secs: 12 * 3600,
            public_api_url: None,
            log_format: "text".into(),
            trust_forwarded_for: false,
            max_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 60,
            max_connections: 1024,
            login_window_secs: 15 * 60,
            login_max_failures_per_account: 5,
            login_max_failures_per_address: 20,
            inventory_resync_secs: 60,
            host_lease_secs: 15,
            replica_url: None,
            replica_ui_url: None,
            stream_recheck_secs: 30,
            event_streams_per_credential: 16,
            ssh_connects_in_flight: 16,
            ssh_command_timeout_secs: 60,
            consoles_per_host: 4,
            ssh_keepalive_secs: 15,
            job_lease_secs: 15,
            profiles_dir: None,
            deploy_emulated: false,
            image_cache_keep_days: 30,
            metrics_step_secs: 30,
            metrics_per_vm: false,
            run_jobs: true,
            test_jobs: false,
            oidc: Vec::new(),
            password_login: true,
            public_ui_url: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

const ENV_PREFIX: &str = "OVERVISOR_";
/// Longest period a background check may be set to (a day).
const MAX_PERIOD_SECS: u64 = 24 * 3600;
/// More handshakes at once than this only slow each other down.
const MAX_CONNECTS_IN_FLIGHT: usize = 1024;
/// Longest a client may take to send its headers or body.
const MAX_READ_TIMEOUT_SECS: u64 = 3600;
/// More connections per listener than a process could have descriptors for.
const MAX_CONNECTIONS: usize = 1 << 20;
/// More streams per credential than any portal or script needs.
const MAX_STREAMS_PER_CREDENTIAL: usize = 4096;

impl Config {
    /// Loads defaults ← `file` ← environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in std::env::vars() {
            let Some(field) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if !FIELDS.contains(&field.as_str()) {
                continue;
            }
            table.insert(field, env_value(&value));
        }
        let config: Config = table.clone().try_into().map_err(|e: toml::de::Error| {
            ConfigError::Invalid(match culprit(&table) {
                Some(key) => format!("{key}: {}", e.message()),
                None => e.message().to_owned(),
            })
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log_format must be text or json".into(),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be at least 1024".into(),
            ));
        }
        if self.session_ttl_secs < 60 {
            return Err(ConfigError::Invalid(
                "session_ttl_secs must be at least 60".into(),
            ));
        }
        for (name, secs) in [
            ("inventory_resync_secs", self.inventory_resync_secs),
            ("stream_recheck_secs", self.stream_recheck_secs),
            ("host_lease_secs", self.host_lease_secs),
        ] {
            if !(1..=MAX_PERIOD_SECS).contains(&secs) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be between 1 and {MAX_PERIOD_SECS}"
                )));
            }
        }
        for (name, secs) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
        ] {
            if !(1..=MAX_READ_TIMEOUT_SECS).contains(&secs) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be between 1 and {MAX_READ_TIMEOUT_SECS}"
                )));
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        if !(1..=MAX_STREAMS_PER_CREDENTIAL).contains(&self.event_streams_per_credential) {
            return Err(ConfigError::Invalid(format!(
                "event_streams_per_credential must be between 1 and {MAX_STREAMS_PER_CREDENTIAL}"
            )));
        }
        if !(1..=MAX_CONNECTS_IN_FLIGHT).contains(&self.ssh_connects_in_flight) {
            return Err(ConfigError::Invalid(format!(
                "ssh_connects_in_flight must be between 1 and {MAX_CONNECTS_IN_FLIGHT}"
            )));
        }
        if !(5..=3600).contains(&self.ssh_command_timeout_secs) {
            return Err(ConfigError::Invalid(
                "ssh_command_timeout_secs must be between 5 and 3600".into(),
            ));
        }
        if !(1..=64).contains(&self.consoles_per_host) {
            return Err(ConfigError::Invalid(
                "consoles_per_host must be between 1 and 64".into(),
            ));
        }
        if !(1..=300).contains(&self.ssh_keepalive_secs) {
            return Err(ConfigError::Invalid(
                "ssh_keepalive_secs must be between 1 and 300".into(),
            ));
        }
        if self.image_cache_keep_days > 3650 {
            return Err(ConfigError::Invalid(
                "image_cache_keep_days must be between 1 and 3650, or 0 to keep images for good"
                    .into(),
            ));
        }
        if self.metrics_step_secs > 600 {
            return Err(ConfigError::Invalid(
                "metrics_step_secs must be between 1 and 600, or 0 to turn sampling off".into(),
            ));
        }
        if !(2..=3600).contains(&self.job_lease_secs) {
            return Err(ConfigError::Invalid(
                "job_lease_secs must be between 2 and 3600".into(),
            ));
        }
        self.validate_oidc()
    }

    fn validate_oidc(&self) -> Result<(), ConfigError> {
        let mut ids = std::collections::BTreeSet::new();
        let mut api_issuers = std::collections::BTreeSet::new();
        for provider in &self.oidc {
            provider.validate().map_err(ConfigError::Invalid)?;
            if !ids.insert(provider.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "oidc provider {:?}: id is used twice",
                    provider.id
                )));
            }
            if provider.api_audience.is_some()
                && !api_issuers.insert(provider.issuer.trim_end_matches('/'))
            {
                return Err(ConfigError::Invalid(format!(
                    "oidc provider {:?}: another provider with api_audience has the same issuer",
                    provider.id
                )));
            }
        }
        if !self.password_login && !self.oidc.iter().any(|p| p.sign_in) {
            return Err(ConfigError::Invalid(
                "password_login = false needs an [[oidc]] provider to sign in with".into(),
            ));
        }
        if let Some(url) = &self.public_ui_url {
            let ok = url::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
            if !ok {
                return Err(ConfigError::Invalid(
                    "public_ui_url must be an http:// or https:// URL without a query".into(),
                ));
            }
        }
        Ok(())
    }

    /// The portal's base URL as browsers reach it (no trailing slash).
    pub fn public_ui_url(&self) -> String {
        self.public_ui_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{}", self.ui_bind))
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("overvisor.db").display()))
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.profiles_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("profiles"))
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
            .unwrap_or(!self.ui_bind.ip().is_loopback())
    }

    pub fn connection_limits(&self) -> crate::listen::ConnectionLimits {
        crate::listen::ConnectionLimits {
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            body_read_timeout: std::time::Duration::from_secs(self.body_read_timeout_secs),
            max_connections: self.max_connections,
        }
    }

    pub fn public_api_url(&self) -> String {
        self.public_api_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.api_bind))
    }
}

/// Field names accepted from the environment (and so also from the file).
const FIELDS: &[&str] = &[
    "data_dir",
    "ui_bind",
    "api_bind",
    "database_url",
    "master_key",
    "master_key_file",
    "secure_cookies",
    "session_ttl_secs",
    "public_api_url",
    "log_format",
    "trust_forwarded_for",
    "max_body_bytes",
    "header_read_timeout_secs",
    "body_read_timeout_secs",
    "max_connections",
    "login_window_secs",
    "login_max_failures_per_account",
    "login_max_failures_per_address",
    "inventory_resync_secs",
    "host_lease_secs",
    "replica_url",
    "replica_ui_url",
    "stream_recheck_secs",
    "event_streams_per_credential",
    "ssh_connects_in_flight",
    "ssh_command_timeout_secs",
    "consoles_per_host",
    "ssh_keepalive_secs",
    "job_lease_secs",
    "profiles_dir",
    "deploy_emulated",
    "image_cache_keep_days",
    "metrics_step_secs",
    "metrics_per_vm",
    "run_jobs",
    "test_jobs",
    "oidc",
    "password_login",
    "public_ui_url",
];

/// The field whose value cannot be read (serde names the problem, not the
/// field): each one is tried alone, the others left at their defaults.
fn culprit(table: &toml::Table) -> Option<&str> {
    table.iter().find_map(|(key, value)| {
        let mut alone = toml::Table::new();
        alone.insert(key.clone(), value.clone());
        alone.try_into::<Config>().is_err().then_some(key.as_str())
    })
}

/// A switch: `true`/`false`, or `1`/`0` as such variables are often set.
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Number(i64),
    }
    match Flag::deserialize(deserializer)? {
        Flag::Bool(b) => Ok(b),
        Flag::Number(0) => Ok(false),
        Flag::Number(1) => Ok(true),
        Flag::Number(_) => Err(serde::de::Error::custom("expected true, false, 1 or 0")),
    }
}

/// Environment values are typed like TOML values when they parse as one
/// (`8000`, `true`), and taken as strings otherwise (`127.0.0.1:8000`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_typed() {
        // `OVERVISOR_OIDC` may hold the provider list as inline tables.
        assert!(env_value("[{id = \"corp\"}]").is_array());
        assert_eq!(env_value("8000"), toml::Value::Integer(8000));
        assert_eq!(env_value("true"), toml::Value::Boolean(true));
        assert_eq!(
            env_value("127.0.0.1:9"),
            toml::Value::String("127.0.0.1:9".into())
        );
        assert_eq!(
            env_value("/var/lib/x"),
            toml::Value::String("/var/lib/x".into())
        );
    }

    #[test]
    fn defaults_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "ui_bind = \"0.0.0.0:9000\"\nsession_ttl_secs = 600\n",
        )
        .expect("write");
        let config = Config::load(Some(&path)).expect("load");
        assert_eq!(config.ui_bind.port(), 9000);
        assert_eq!(config.session_ttl_secs, 600);
        assert!(
            config.secure_cookies(),
            "non-loopback binds default to Secure cookies"
        );
        std::fs::write(&path, "bogus = 1\n").expect("write");
        assert!(
            Config::load(Some(&path)).is_err(),
            "unknown keys are refused"
        );
        assert!(!Config::default().secure_cookies());
    }

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(Some(&path))
    }

    #[test]
    fn oidc_providers_and_password_login() {
        let provider = |id: &str, issuer: &str| {
            format!(
                "[[oidc]]\nid = \"{id}\"\ndisplay_name = \"Corp\"\nissuer = \"{issuer}\"\n\
                 client_id = \"c\"\nclient_secret = \"s\"\napi_audience = \"api\"\n\
                 [oidc.roles]\ndefault = \"reader\"\n"
            )
        };
        let one = provider("corp", "https://idp.example.com");
        let config = from_toml(&format!("password_login = false\n{one}")).expect("load");
        assert_eq!(config.oidc.len(), 1);
        assert!(!config.password_login);
        assert_eq!(config.public_ui_url(), "http://127.0.0.1:8000");
        let url = from_toml("public_ui_url = \"https://ov.example.com/\"\n").expect("load");
        assert_eq!(url.public_ui_url(), "https://ov.example.com");
        for (bad, words) in [
            (
                "password_login = false\n".to_owned(),
                "needs an [[oidc]] provider",
            ),
            (
                format!("{one}{}", provider("corp", "https://other.example.com")),
                "used twice",
            ),
            (
                format!("{one}{}", provider("two", "https://idp.example.com/")),
                "same issuer",
            ),
            ("public_ui_url = \"ftp://x\"\n".to_owned(), "public_ui_url"),
            (provider("corp", "http://idp.example.com"), "issuer"),
        ] {
            let err = from_toml(&bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(err.to_string().contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn periods_and_test_jobs() {
        let defaults = Config::default();
        assert_eq!(defaults.inventory_resync_secs, 60);
        assert_eq!(defaults.stream_recheck_secs, 30);
        assert!(!defaults.test_jobs);
        assert_eq!(defaults.ssh_connects_in_flight, 16);
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.header_read_timeout_secs, 10);
        assert_eq!(defaults.event_streams_per_credential, 16);
        assert_eq!(
            (
                defaults.ssh_command_timeout_secs,
                defaults.ssh_keepalive_secs
            ),
            (60, 15)
        );
        assert_eq!(
            from_toml("event_streams_per_credential = 2\n")
                .expect("load")
                .event_streams_per_credential,
            2
        );
        assert_eq!(
            from_toml("ssh_connects_in_flight = 64\n")
                .expect("load")
                .ssh_connects_in_flight,
            64
        );
        let config =
            from_toml("inventory_resync_secs = 5\nstream_recheck_secs = 1\ntest_jobs = true\n")
                .expect("load");
        assert_eq!(config.inventory_resync_secs, 5);
        assert_eq!(config.stream_recheck_secs, 1);
        assert!(config.test_jobs);
        // Environment values arrive typed: `1` is a number.
        assert!(from_toml("test_jobs = 1\n").expect("load").test_jobs);
        assert!(!from_toml("test_jobs = 0\n").expect("load").test_jobs);
        for bad in [
            "test_jobs = 2\n",
            "test_jobs = \"yes\"\n",
            "stream_recheck_secs = 0\n",
            "inventory_resync_secs = 0\n",
            "inventory_resync_secs = 86401\n",
            "stream_recheck_secs = -1\n",
            "ssh_connects_in_flight = 0\n",
            "ssh_connects_in_flight = 1025\n",
            "header_read_timeout_secs = 0\n",
            "body_read_timeout_secs = 3601\n",
            "max_connections = 0\n",
            "event_streams_per_credential = 0\n",
            "ssh_command_timeout_secs = 4\n",
            "consoles_per_host = 0\n",
            "consoles_per_host = 65\n",
            "image_cache_keep_days = 3651\n",
            "image_cache_keep_days = -1\n",
            "ssh_keepalive_secs = 0\n",
            "ssh_keepalive_secs = 301\n",
            "event_streams_per_credential = 4097\n",
            "event_streams_per_credential = -1\n",
            "event_streams_per_credential = \"many\"\n",
        ] {
            let err = from_toml(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            let field = bad.split(' ').next().unwrap_or_default();
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
    }
}
