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

/// Sets `path`'s modification time `days` back (its last use).
fn unused_for_days(path: &std::path::Path, days: u64) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(then)
        .unwrap();
}

#[tokio::test]
async fn images_the_control_plane_kept_are_pruned_once_unused_longer_than_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let images = data.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let file = |name: String, days: u64| {
        let path = images.join(name);
        std::fs::write(&path, b"image").unwrap();
        unused_for_days(&path, days);
        path
    };
    let stale = file(format!("{}.img", "a1".repeat(32)), 11);
    let stale_part = file(format!("{}.part", "b2".repeat(32)), 11);
    let recent = file(format!("{}.img", "c3".repeat(32)), 9);
    let other = file("README".into(), 400);
    let _app = TestApp::builder()
        .data_dir(&data)
        .env("OVERVISOR_IMAGE_CACHE_KEEP_DAYS", "10")
        .start()
        .await;
    // Looked for as the service starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (stale.exists() || stale_part.exists()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!stale.exists(), "an image unused for 11 days is removed");
    assert!(!stale_part.exists(), "so is a partial download");
    assert!(recent.exists(), "one used 9 days ago stays");
    assert!(other.exists(), "files that are not the cache's stay");
}

#[tokio::test]
async fn a_bad_image_cache_keep_days_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_overvisor"))
        .arg("serve")
        .env("OVERVISOR_DATA_DIR", dir.path())
        .env("OVERVISOR_IMAGE_CACHE_KEEP_DAYS", "3651")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("image_cache_keep_days"), "{stderr}");
}
