//! The HTTP side of the remote commands: which service and key to use
//! (flags, environment, remotes.toml), and JSON calls whose failures carry
//! the exit code they mean.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use super::Opts;
use super::config::{self, Remotes};
use super::error::{Error, Result};
use super::tls;

/// Where to send requests and with which key.
pub struct Target {
    pub url: Url,
    pub api_key: String,
    pub ca_file: Option<PathBuf>,
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn parse_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw).map_err(|e| Error::Usage(format!("bad URL {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(Error::Usage(format!(
            "bad URL {raw:?}: must be http:// or https://"
        )));
    }
    Ok(url)
}

impl Target {
    /// `OVERVISOR_URL` + `OVERVISOR_API_KEY` win over the remotes file
    /// (for scripts); else `--remote`, else the current remote, with
    /// `OVERVISOR_API_KEY` replacing its key when set.
    pub fn resolve(opts: &Opts) -> Result<Self> {
        let env_key = env_value("OVERVISOR_API_KEY");
        if let Some(url) = env_value("OVERVISOR_URL") {
            let api_key = env_key.ok_or_else(|| {
                Error::Usage("OVERVISOR_URL is set but OVERVISOR_API_KEY is not".into())
            })?;
            return Ok(Self {
                url: parse_url(&url)?,
                api_key,
                ca_file: opts.ca_file.clone(),
            });
        }
        let path = config::require_path()?;
        let remotes = Remotes::load(&path)?;
        let name = opts.remote.clone().or(remotes.current).ok_or_else(|| {
            Error::Usage(
                "no remote chosen: `overvisor remote add NAME URL` (or set OVERVISOR_URL and OVERVISOR_API_KEY)"
                    .into(),
            )
        })?;
        let remote = remotes.remotes.get(&name).ok_or_else(|| {
            Error::Usage(format!("no remote named {name:?} in {}", path.display()))
        })?;
        Ok(Self {
            url: parse_url(&remote.url)?,
            api_key: env_key.unwrap_or_else(|| remote.api_key.clone()),
            ca_file: opts.ca_file.clone().or_else(|| remote.ca_file.clone()),
        })
    }
}

pub struct Client {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    base: Url,
    auth: HeaderValue,
}

/// The reasons behind a reqwest error, outermost first; reqwest's own
/// outermost words ("error sending request for url (…)") only when there
/// is nothing under them.
fn reasons(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut source = err.source();
    if source.is_none() {
        parts.push(err.to_string());
    }
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

impl Client {
    pub fn new(target: &Target) -> Result<Self> {
        // TLS is always verified; a CA file adds a root, it never turns
        // verification off.
        let tls = tls::client_config(target.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("overvisor-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| Error::Failed(format!("cannot set up HTTP: {}", reasons(&e))))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", target.api_key))
            .map_err(|_| Error::Usage("the API key holds characters a header cannot".into()))?;
        auth.set_sensitive(true);
        Ok(Self {
            http,
            tls,
            base: target.url.clone(),
            auth,
        })
    }

    /// `<base>/api/v1/<segments…>`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    pub fn url_with(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The TLS configuration, for connections reqwest does not make.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The `Authorization` header value (marked sensitive).
    pub fn authorization(&self) -> HeaderValue {
        self.auth.clone()
    }

    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
    }

    /// Sends and maps failures: no answer → unreachable; a non-2xx answer
    /// → the API's error with its status.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(api_error(status, &text))
    }

    pub fn transport(&self, err: &reqwest::Error) -> Error {
        if err.is_builder() {
            return Error::Usage(reasons(err));
        }
        Error::Unreachable {
            url: self.base.to_string(),
            reason: reasons(err),
        }
    }

    /// A JSON call; a 2xx answer's body (`null` when empty).
    pub async fn call(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value> {
        let mut req = self.request(method, url).header(ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = self.send(req).await?;
        let text = resp.text().await.map_err(|e| self.transport(&e))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            Error::Failed(format!(
                "the service answered something that is not JSON: {e}"
            ))
        })
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value> {
        self.call(Method::GET, self.url_with(segments, query), None)
            .await
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value> {
        self.call(Method::POST, self.url(segments), Some(body))
            .await
    }
}

/// Query parameters: the ones given, in order.
pub fn query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, Option<String>)>,
) -> Vec<(&'a str, String)> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// The API's error envelope as a message: `not_found: no such host (field: id)`.
fn api_error(status: StatusCode, text: &str) -> Error {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = &body["error"];
    let message = match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => {
            let field = error["field"]
                .as_str()
                .map(|f| format!(" (field: {f})"))
                .unwrap_or_default();
            format!("{code}: {message}{field}")
        }
        _ => format!("the service answered {status}"),
    };
    Error::Api {
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(&Target {
            url: parse_url(base).expect("url"),
            api_key: "ovk_0123456789ab_x".into(),
            ca_file: None,
        })
        .expect("client")
    }

    #[test]
    fn urls_encode_segments_under_any_base_path() {
        let c = client("http://h:1/");
        assert_eq!(
            c.url(&["hosts", "x", "vms", "odd name/é"]).as_str(),
            "http://h:1/api/v1/hosts/x/vms/odd%20name%2F%C3%A9"
        );
        let c = client("https://h/overvisor");
        assert_eq!(c.url(&["jobs"]).as_str(), "https://h/overvisor/api/v1/jobs");
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for bad in ["ftp://h", "h:8001", "not a url"] {
            assert_eq!(
                parse_url(bad).err().map(|e| e.exit_code()),
                Some(2),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_envelopes_become_messages() {
        let e = api_error(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"invalid_input","message":"too big","field":"limit"}}"#,
        );
        assert_eq!(e.to_string(), "invalid_input: too big (field: limit)");
        assert_eq!(e.exit_code(), 1);
        let e = api_error(StatusCode::NOT_FOUND, "<html>");
        assert_eq!(e.exit_code(), 3);
    }
}
