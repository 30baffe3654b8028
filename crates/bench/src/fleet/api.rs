//! A small client of the service's REST API for the fleet mode: bearer
//! auth with the administrator's key, JSON in and out, and errors that
//! carry the status and the error envelope's message (never the request
//! body, which may hold a private key).

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The API of one running service.
pub struct Api {
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    token: String,
}

/// A response: status, headers and the JSON body (`Null` when empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The error envelope's message, or the status alone.
    pub fn describe(&self) -> String {
        match self.body.pointer("/error/message").and_then(Value::as_str) {
            Some(message) => format!("{}: {message}", self.status),
            None => self.status.to_string(),
        }
    }
}

impl Api {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            // Long enough for a `?wait=60` long-poll.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()?,
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Reply> {
        let resp = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| what.to_owned())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.with_context(|| what.to_owned())?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| format!("{what}: not JSON"))?
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// GET `path`; a non-2xx answer is an error.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let what = format!("GET {path}");
        let reply = self.send(self.client.get(self.url(path)), &what).await?;
        if !reply.status.is_success() {
            bail!("{what}: {}", reply.describe());
        }
        Ok(reply.body)
    }

    /// POST `body` (JSON) to `path`, whatever the answer.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Reply> {
        let mut request = self.client.post(self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, &format!("POST {path}")).await
    }
}
