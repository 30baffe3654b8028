use std::io::Write;
use std::process::Command;

use super::*;

/// Runs genisoimage's `isoinfo` on `image` (scripts/install-deps installs
/// it): an independent reader of what we wrote.
pub(crate) fn isoinfo(image: &[u8], args: &[&str]) -> String {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(image).expect("write image");
    let out = Command::new("isoinfo")
        .args(args)
        .arg("-i")
        .arg(file.path())
        .output()
        .expect("isoinfo runs (package genisoimage, scripts/install-deps)");
    assert!(out.status.success(), "isoinfo {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn writes_volume_id_joliet_and_rock_ridge() {
    let image = build(
        "CIDATA",
        &[
            ("meta-data", b"{}\n"),
            ("user-data", b"#cloud-config\n{}\n"),
        ],
    )
    .expect("image");
    assert_eq!(image.len() % 2048, 0, "whole sectors");
    let info = isoinfo(&image, &["-d"]);
    assert!(info.contains("Volume id: CIDATA"), "{info}");
    assert!(info.contains("Joliet"), "{info}");
    assert!(info.contains("Rock Ridge signatures"), "{info}");

    let rock_ridge = isoinfo(&image, &["-R", "-f"]);
    assert!(
        rock_ridge.lines().any(|l| l == "/user-data"),
        "{rock_ridge}"
    );
    assert!(
        rock_ridge.lines().any(|l| l == "/meta-data"),
        "{rock_ridge}"
    );
    let joliet = isoinfo(&image, &["-J", "-f"]);
    assert!(joliet.lines().any(|l| l == "/user-data"), "{joliet}");
    assert_eq!(
        isoinfo(&image, &["-R", "-x", "/user-data"]),
        "#cloud-config\n{}\n"
    );
}

#[test]
fn refuses_bad_volume_ids() {
    for id in ["", "cidata", "CI DATA", &"X".repeat(33)] {
        assert!(build(id, &[]).is_err(), "{id:?}");
    }
}
