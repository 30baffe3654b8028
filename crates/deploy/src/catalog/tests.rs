use super::*;
use crate::profile::{ImageChecksum, ImageSource, OsFamily};

#[test]
fn builtins_are_valid() {
    let catalog = Catalog::builtin().expect("built-in profiles are valid");
    let names: Vec<_> = catalog.profiles().map(|p| p.name.to_string()).collect();
    assert_eq!(names, ["debian-12", "ubuntu-24.04", "windows-server-2022"]);
    let ubuntu = catalog.get("ubuntu-24.04").expect("present");
    assert!(ubuntu.builtin);
    assert_eq!(ubuntu.os, OsFamily::Linux);
    assert_eq!(
        (
            ubuntu.defaults.vcpus,
            ubuntu.defaults.memory_mib,
            ubuntu.defaults.disk_gib
        ),
        (2, 4096, 40)
    );
    assert!(matches!(
        ubuntu.image.source,
        ImageSource::Download {
            checksum: ImageChecksum::List { .. },
            ..
        }
    ));
    let windows = catalog.get("windows-server-2022").expect("present");
    assert_eq!(
        (
            windows.defaults.vcpus,
            windows.defaults.memory_mib,
            windows.defaults.disk_gib
        ),
        (4, 8192, 80)
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write test profile");
}

#[test]
fn loads_a_directory_and_ignores_other_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "alma-9.toml", crate::profile::tests::LINUX);
    write(dir.path(), "README.md", "not a profile");
    let catalog = Catalog::load(dir.path()).expect("valid");
    let alma = catalog.get("alma-9").expect("loaded");
    assert!(!alma.builtin);
    assert_eq!(catalog.profiles().count(), 4);
}

#[test]
fn a_missing_directory_means_builtins_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Catalog::load(&dir.path().join("nope")).expect("no directory is fine");
    assert_eq!(catalog.profiles().count(), 3);
}

fn error_for(name: &str, text: &str) -> ProfileError {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), name, text);
    let err = Catalog::load(dir.path()).expect_err("refused");
    assert!(err.file.ends_with(name), "{err}");
    err
}

#[test]
fn errors_name_file_field_and_reason() {
    let linux = crate::profile::tests::LINUX;
    let err = error_for("bad.toml", &linux.replace("vcpus = 1", "vcpus = \"one\""));
    assert_eq!(err.field, "minimum.vcpus", "{err}");
    assert!(err.reason.contains("line"), "{err}");

    let err = error_for("bad.toml", &format!("colour = \"red\"\n{linux}"));
    assert_eq!(err.field, "colour", "{err}");
    assert!(err.reason.contains("unknown field"), "{err}");

    let err = error_for(
        "bad.toml",
        &linux.replace("sha256 = \"0123", "sha256 = \"zz"),
    );
    assert_eq!(err.field, "image.sha256");
    assert!(
        err.to_string()
            .contains("bad.toml: image.sha256: must be 64 hexadecimal digits"),
        "{err}"
    );

    let err = error_for(
        "bad.toml",
        &linux.replace("sha256 =", "transfer = \"pigeon\"\nsha256 ="),
    );
    assert_eq!(err.field, "image.transfer", "{err}");
    assert!(err.reason.contains("unknown variant"), "{err}");

    let err = error_for("Bad Name.toml", linux);
    assert_eq!(err.field, "(file name)");

    let err = error_for("debian-12.toml", linux);
    assert!(err.reason.contains("built-in"), "{err}");

    let err = error_for("short.toml", "title = \"x\"\n");
    assert!(err.reason.contains("missing field"), "{err}");
}
