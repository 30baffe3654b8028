use std::process::Command;

use super::*;
use crate::catalog::Catalog;
use crate::iso::tests::isoinfo;
use crate::request::DeploymentRequest;
use crate::request::tests::{ED25519, request};

fn seed(r: &DeploymentRequest) -> (NoCloudSeed, GeneratedPassword) {
    let catalog = Catalog::builtin().expect("built-ins");
    let deployment = r.check(&catalog).expect("valid request");
    let password = GeneratedPassword::generate();
    let id = Uuid::parse_str("6f1c2a5e-0b7d-4c1e-9a53-2f0e8d4b7c61").expect("uuid");
    let seed = NoCloudSeed::new(&deployment, &password, id).expect("seed");
    (seed, password)
}

/// Requests covering every optional part of the user-data.
fn requests() -> Vec<DeploymentRequest> {
    let keyed = request("ubuntu-24.04");
    let mut keyless = request("debian-12");
    keyless.ssh_keys = Some(vec![]);
    let mut dotted = request("ubuntu-24.04");
    dotted.name = "db_02.lab.example.org".into();
    dotted.locale = Some("de-DE".into());
    dotted.timezone = Some("Europe/Berlin".into());
    let mut many_keys = request("debian-12");
    many_keys.ssh_keys = Some(vec![
        ED25519.trim().into(),
        include_str!("../../tests/data/ecdsa.pub").trim().into(),
    ]);
    many_keys.username = Some("_svc-01".into());
    vec![keyed, keyless, dotted, many_keys]
}

#[test]
fn user_data_is_cloud_config_with_a_hash_only() {
    let (seed, password) = seed(&request("ubuntu-24.04"));
    let body = seed
        .user_data
        .strip_prefix("#cloud-config\n")
        .expect("header");
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let user = &json["users"][0];
    assert_eq!(user["name"], "alice");
    assert!(
        user["hashed_passwd"]
            .as_str()
            .is_some_and(|h| h.starts_with("$6$"))
    );
    assert_eq!(user["ssh_authorized_keys"][0], ED25519.trim());
    assert_eq!(json["ssh_pwauth"], false);
    assert_eq!(json["hostname"], "web-01");
    assert_eq!(json["packages"][0], "qemu-guest-agent");
    assert!(!seed.user_data.contains(password.expose()));
    assert!(!seed.meta_data.contains(password.expose()));

    let meta: serde_json::Value = serde_json::from_str(&seed.meta_data).expect("JSON");
    assert_eq!(
        meta["instance-id"],
        "iid-6f1c2a5e-0b7d-4c1e-9a53-2f0e8d4b7c61"
    );
    assert_eq!(meta["local-hostname"], "web-01");
}

#[test]
fn password_log_in_only_without_keys() {
    let mut r = request("debian-12");
    r.ssh_keys = Some(vec![]);
    let (seed, _) = seed(&r);
    assert!(
        seed.user_data.contains("\"ssh_pwauth\": true"),
        "{}",
        seed.user_data
    );
    assert!(!seed.user_data.contains("ssh_authorized_keys"));
}

/// cloud-init's own validator (Debian 12's cloud-init 22.4 calls it
/// `cloud-init schema`) accepts every user-data we generate. A machine
/// without cloud-init fails this test: scripts/install-deps installs it.
#[test]
fn cloud_init_schema_accepts_every_user_data() {
    for r in requests() {
        let (seed, _) = seed(&r);
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &seed.user_data).expect("write user-data");
        let out = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(file.path())
            .output()
            .expect("cloud-init runs (package cloud-init, scripts/install-deps)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Valid cloud-config"),
            "cloud-init refused {}:\n{stdout}\n{}",
            seed.user_data,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_seed_iso_holds_both_files() {
    let (seed, _) = seed(&request("ubuntu-24.04"));
    let image = seed.iso().expect("iso");
    assert!(isoinfo(&image, &["-d"]).contains("Volume id: CIDATA"));
    assert_eq!(isoinfo(&image, &["-R", "-x", "/user-data"]), seed.user_data);
    assert_eq!(isoinfo(&image, &["-R", "-x", "/meta-data"]), seed.meta_data);
}

#[test]
fn the_agents_seed_holds_no_account_hash_or_key() {
    let catalog = Catalog::builtin().expect("built-ins");
    let deployment = request("debian-12").check(&catalog).expect("valid");
    let id = Uuid::parse_str("6f1c2a5e-0b7d-4c1e-9a53-2f0e8d4b7c61").expect("uuid");
    let seed = NoCloudSeed::without_secrets(&deployment, id).expect("seed");
    let body = seed
        .user_data
        .strip_prefix("#cloud-config\n")
        .expect("header");
    let config: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(config["users"], serde_json::json!([]));
    assert_eq!(config["hostname"], deployment.hostname.as_str());
    for secret in ["$6$", deployment.username.as_str(), ED25519.trim()] {
        assert!(
            !seed.user_data.contains(secret),
            "{secret} in {}",
            seed.user_data
        );
    }
}
