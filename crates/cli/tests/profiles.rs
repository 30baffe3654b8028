//! Deployment profiles through the real service: the built-in ones and an
//! operator's file are listed; a bad file stops start-up naming the file,
//! the field and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::{TestApp, assert_error};

/// An operator's profile: a Debian image pinned by its SHA-256.
const LAB_PROFILE: &str = r#"
title = "Lab Debian"
os = "linux"
firmware = "bios"
disk_bus = "virtio"
nic_model = "virtio"
seed = "nocloud"

[image]
format = "qcow2"
url = "http://127.0.0.1:9/debian.qcow2"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[defaults]
vcpus = 1
memory_mib = 512
disk_gib = 4

[minimum]
vcpus = 1
memory_mib = 256
disk_gib = 2
"#;

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn built_in_and_operator_profiles_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lab-debian.toml"), LAB_PROFILE).unwrap();
    std::fs::write(dir.path().join("README"), "not a profile").unwrap();
    let app = TestApp::builder()
        .env("OVERVISOR_PROFILES_DIR", dir.path().display().to_string())
        .start()
        .await;
    let (_, reader, _) = app.create_user("rita", "reader").await;
    let (status, list) = app.client(&reader).get("/api/v1/profiles").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        names(&list),
        [
            "debian-12",
            "lab-debian",
            "ubuntu-24.04",
            "windows-server-2022"
        ]
    );
    let lab = &list[1];
    assert_eq!(lab["builtin"], false, "{lab}");
    assert_eq!(lab["minimum"]["memory_mib"], 256, "{lab}");
    assert_eq!(list[0]["builtin"], true);
    let (status, body) = app.anonymous().get("/api/v1/profiles").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[test]
fn a_bad_profile_stops_start_up_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let bad = LAB_PROFILE.replace("memory_mib = 256", "memory_mib = \"lots\"");
    std::fs::write(profiles.join("broken.toml"), bad).unwrap();
    let out = std::process::Command::new(TestApp::binary())
        .arg("serve")
        .env_clear()
        .env("OVERVISOR_DATA_DIR", dir.path().join("data"))
        .env("OVERVISOR_PROFILES_DIR", &profiles)
        .env("OVERVISOR_UI_BIND", "127.0.0.1:0")
        .env("OVERVISOR_API_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a bad profile: {stderr}"
    );
    assert!(stderr.contains("broken.toml"), "{stderr}");
    assert!(stderr.contains("memory_mib"), "{stderr}");
}
