//! The deployment wizard's host step at fleet size, through the portal as
//! a browser sends it (a signed-in admin's form), timed from the request
//! to the whole page. Every host should be listed with what it has free;
//! where the figures come from (the host's latest usage sample or a live
//! ask) is the service's business.

use std::time::Instant;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use super::api::Api;
use crate::stats::Samples;

/// A signed-in portal session.
pub struct Portal {
    client: reqwest::Client,
    ui: String,
    csrf: String,
}

/// Creates an admin through `api` and signs it in on each portal of `uis`
/// (replicas share their accounts).
pub async fn admin_portals(api: &Api, uis: &[String]) -> anyhow::Result<Vec<Portal>> {
    let (name, password) = ("wizard-bench", "wizard-bench-password-123");
    let created = api
        .post(
            "/api/v1/users",
            Some(&json!({"name": name, "email": "wizard-bench@example.com",
                         "role": "admin", "password": password})),
        )
        .await?;
    ensure!(
        created.status.is_success(),
        "creating the wizard's user: {}",
        created.describe()
    );
    let mut portals = Vec::new();
    for ui in uis {
        let client = reqwest::Client::builder().cookie_store(true).build()?;
        let signed_in: Value = client
            .post(format!("{ui}/api/v1/auth/login"))
            .json(&json!({"name": name, "password": password}))
            .send()
            .await?
            .error_for_status()
            .context("signing in on the portal")?
            .json()
            .await?;
        let csrf = signed_in["csrf_token"]
            .as_str()
            .context("no csrf_token in the sign-in answer")?
            .to_owned();
        portals.push(Portal {
            client,
            ui: ui.clone(),
            csrf,
        });
    }
    Ok(portals)
}

/// Times `rounds` host steps, each listing `hosts` KVM hosts; prints the
/// timings and how many hosts the last page showed without figures.
pub async fn host_step(portal: &Portal, hosts: usize, rounds: usize) -> anyhow::Result<()> {
    let form = [
        ("csrf_token", portal.csrf.as_str()),
        ("profile", "debian-12"),
        ("go", "host"),
    ];
    let mut pages = Samples::default();
    let mut without = hosts;
    for _ in 0..rounds {
        let started = Instant::now();
        let answer = portal
            .client
            .post(format!("{}/deploy", portal.ui))
            .form(&form)
            .send()
            .await?;
        let status = answer.status();
        let html = answer.text().await?;
        pages.push(started.elapsed());
        if !status.is_success() {
            bail!("the host step answered {status}");
        }
        without = hosts.saturating_sub(html.matches("data-free-memory>").count());
    }
    println!("   page of {hosts} hosts   {}", pages.line());
    println!("   hosts shown without free memory and CPUs: {without} of {hosts}");
    Ok(())
}
