use super::*;

pub(crate) const ED25519: &str = include_str!("../../tests/data/ed25519.pub");
const ECDSA: &str = include_str!("../../tests/data/ecdsa.pub");
const RSA1024: &str = include_str!("../../tests/data/rsa1024.pub");
const DSA: &str = include_str!("../../tests/data/dsa.pub");

/// A valid request for `profile`; tests change one field.
pub(crate) fn request(profile: &str) -> DeploymentRequest {
    let windows = profile.starts_with("windows");
    DeploymentRequest {
        profile: profile.into(),
        name: "web-01".into(),
        vcpus: 2,
        memory_mib: 4096,
        disk_gib: 40,
        network: NetworkAttachment::Bridge("br0".into()),
        ssh_keys: Some(if windows {
            vec![]
        } else {
            vec![ED25519.trim().into()]
        }),
        username: Some(if windows { "ops" } else { "alice" }.into()),
        locale: None,
        timezone: None,
        image_transfer: None,
        product_key: None,
    }
}

fn catalog() -> Catalog {
    Catalog::builtin().expect("built-ins are valid")
}

fn refused(r: &DeploymentRequest) -> InvalidInput {
    r.check(&catalog()).expect_err("refused")
}

#[test]
fn a_valid_request_is_checked() {
    let d = request("ubuntu-24.04").check(&catalog()).expect("valid");
    assert_eq!(d.name.as_str(), "web-01");
    assert_eq!(d.hostname, "web-01");
    assert_eq!(d.fqdn, None);
    assert_eq!(d.locale.posix(), "en_US.UTF-8");
    assert_eq!(d.timezone, "UTC");
    assert_eq!(d.ssh_keys, [ED25519.trim()]);
}

#[test]
fn hostnames_follow_the_name() {
    let mut r = request("debian-12");
    r.name = "Web_01.Example.org".into();
    let d = r.check(&catalog()).expect("valid");
    assert_eq!(d.hostname, "web-01");
    assert_eq!(d.fqdn.as_deref(), Some("web-01.example.org"));

    let mut r = request("windows-server-2022");
    r.name = "sql-server-production-01".into();
    let d = r.check(&catalog()).expect("valid");
    assert_eq!(d.hostname, "sql-server-prod");
}

/// One change to a valid request.
type Change = Box<dyn Fn(&mut DeploymentRequest)>;

#[test]
fn hostile_input_is_refused_naming_the_field() {
    let key_with_newline = format!("{}\nssh-ed25519 AAAA evil", ED25519.trim());
    let cases: Vec<(&str, Change)> = vec![
        (
            "profile",
            Box::new(|r| r.profile = "../../etc/passwd".into()),
        ),
        ("name", Box::new(|r| r.name = "web;reboot".into())),
        ("name", Box::new(|r| r.name = "$(id)".into())),
        ("name", Box::new(|r| r.name = "<domain>".into())),
        ("name", Box::new(|r| r.name = "-rf".into())),
        ("name", Box::new(|r| r.name = "web_".into())),
        ("name", Box::new(|r| r.name = "a..b".into())),
        ("name", Box::new(|r| r.name = "x".repeat(65))),
        ("vcpus", Box::new(|r| r.vcpus = 0)),
        ("memory_mib", Box::new(|r| r.memory_mib = 512)),
        ("disk_gib", Box::new(|r| r.disk_gib = u64::MAX)),
        (
            "network.bridge",
            Box::new(|r| r.network = NetworkAttachment::Bridge("br0; reboot".into())),
        ),
        (
            "network.bridge",
            Box::new(|r| r.network = NetworkAttachment::Bridge("a-very-long-bridge".into())),
        ),
        (
            "network.network",
            Box::new(|r| r.network = NetworkAttachment::Network("-x".into())),
        ),
        (
            "ssh_keys[0]",
            Box::new(move |r| r.ssh_keys = Some(vec![key_with_newline.clone()])),
        ),
        (
            "ssh_keys[1]",
            Box::new(|r| {
                r.ssh_keys
                    .get_or_insert_default()
                    .push("ssh-ed25519 notbase64".into())
            }),
        ),
        (
            "ssh_keys[0]",
            Box::new(|r| r.ssh_keys = Some(vec![format!("command=\"reboot\" {}", ED25519.trim())])),
        ),
        (
            "ssh_keys[0]",
            Box::new(|r| r.ssh_keys = Some(vec![RSA1024.trim().into()])),
        ),
        (
            "ssh_keys[0]",
            Box::new(|r| r.ssh_keys = Some(vec![DSA.trim().into()])),
        ),
        (
            "ssh_keys[0]",
            Box::new(|r| r.ssh_keys = Some(vec!["".into()])),
        ),
        (
            "ssh_keys[0]",
            Box::new(|r| r.ssh_keys = Some(vec![format!("{} a\u{2028}b", ED25519.trim())])),
        ),
        (
            "ssh_keys",
            Box::new(|r| r.ssh_keys = Some(vec![ED25519.trim().into(); 33])),
        ),
        ("username", Box::new(|r| r.username = Some("root".into()))),
        ("username", Box::new(|r| r.username = Some("Alice".into()))),
        ("username", Box::new(|r| r.username = Some("al ice".into()))),
        (
            "username",
            Box::new(|r| r.username = Some("alice\n".into())),
        ),
        ("username", Box::new(|r| r.username = Some("-alice".into()))),
        ("username", Box::new(|r| r.username = Some("a".repeat(33)))),
        ("locale", Box::new(|r| r.locale = Some("english".into()))),
        ("locale", Box::new(|r| r.locale = Some("en-us".into()))),
        (
            "timezone",
            Box::new(|r| r.timezone = Some("../../etc/shadow".into())),
        ),
        (
            "timezone",
            Box::new(|r| r.timezone = Some("Europe/Berlin; reboot".into())),
        ),
    ];
    for (field, change) in cases {
        let mut r = request("ubuntu-24.04");
        change(&mut r);
        let err = refused(&r);
        assert_eq!(err.field, field, "{r:?}: {err}");
    }
}

#[test]
fn keys_are_re_encoded() {
    let mut r = request("ubuntu-24.04");
    r.ssh_keys = Some(vec![format!("  {}  ", ED25519.trim()), ECDSA.trim().into()]);
    let d = r.check(&catalog()).expect("valid");
    assert_eq!(d.ssh_keys[0], ED25519.trim());
    assert!(d.ssh_keys[1].starts_with("ecdsa-sha2-nistp256 AAAA"));
}

#[test]
fn windows_rules() {
    let ok = request("windows-server-2022");
    let d = ok.check(&catalog()).expect("valid");
    assert_eq!(d.hostname, "web-01");
    let mut r = ok.clone();
    r.ssh_keys = Some(vec![ED25519.trim().into()]);
    assert_eq!(refused(&r).field, "ssh_keys");
    let mut r = ok.clone();
    r.username = Some("Guest".into());
    assert_eq!(refused(&r).field, "username");
    let mut r = ok.clone();
    r.username = Some("a<b".into());
    assert_eq!(refused(&r).field, "username");
    let mut r = ok.clone();
    r.timezone = Some("W. Europe Standard Time".into());
    r.check(&catalog()).expect("Windows time zone id");
    r.timezone = Some("UTC\"/>".into());
    assert_eq!(refused(&r).field, "timezone");
    let mut r = ok.clone();
    r.name = "12345".into();
    assert_eq!(refused(&r).field, "name");
    let mut r = ok.clone();
    r.memory_mib = 1024;
    assert_eq!(refused(&r).field, "memory_mib");
    // A product key: checked, upper-cased; refused naming the field, never
    // repeating it; and only for Windows.
    let mut r = ok;
    r.product_key = Some(RequestSecret::new("vdyby-n7kwh-9gxr3-xbqx3-cvhd8"));
    let d = r.check(&catalog()).expect("a product key");
    let key = d.product_key.expect("kept");
    assert_eq!(key.expose(), "VDYBY-N7KWH-9GXR3-XBQX3-CVHD8");
    assert!(!format!("{r:?}").contains("VDYBY") && !format!("{r:?}").contains("vdyby"));
    r.product_key = Some(RequestSecret::new("VDYBY-N7KWH-9GXR3-XBQX3-CV<D8"));
    let e = refused(&r);
    assert_eq!(e.field, "product_key");
    assert!(!e.message.contains("VDYBY"), "{e:?}");
    let mut linux = request("debian-12");
    linux.product_key = Some(RequestSecret::new("VDYBY-N7KWH-9GXR3-XBQX3-CVHD8"));
    let e = refused(&linux);
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("product_key", "is only for Windows profiles")
    );
}

#[test]
fn requests_refuse_unknown_fields() {
    let json = r#"{"profile":"ubuntu-24.04","name":"a","vcpus":1,"memory_mib":1024,
        "disk_gib":10,"network":{"bridge":"br0"},"username":"a","password":"x"}"#;
    assert!(serde_json::from_str::<DeploymentRequest>(json).is_err());
    let ok = json.replace(r#","password":"x""#, "");
    let r: DeploymentRequest = serde_json::from_str(&ok).expect("valid JSON");
    assert_eq!(r.network, NetworkAttachment::Bridge("br0".into()));
}

#[test]
fn left_out_account_fields_come_from_the_account() {
    let mut r = request("debian-12");
    r.username = None;
    r.ssh_keys = None;
    let filled = r.with_account_defaults(&catalog(), "ada.lovelace", vec![ED25519.trim().into()]);
    assert_eq!(filled.username.as_deref(), Some("ada-lovelace"));
    assert_eq!(filled.ssh_keys, Some(vec![ED25519.trim().to_owned()]));
    let d = filled.check(&catalog()).expect("valid");
    assert_eq!((d.username.as_str(), d.ssh_keys.len()), ("ada-lovelace", 1));
    // What the request says stays, `[]` included.
    let mut given = request("debian-12");
    given.ssh_keys = Some(vec![]);
    let filled = given.with_account_defaults(&catalog(), "ada", vec![ED25519.trim().into()]);
    assert_eq!(
        (filled.username.as_deref(), filled.ssh_keys),
        (Some("alice"), Some(vec![]))
    );
    // Windows takes no keys: the account's are not offered.
    let mut win = request("windows-server-2022");
    win.ssh_keys = None;
    win.username = None;
    let filled = win.with_account_defaults(&catalog(), "ada", vec![ED25519.trim().into()]);
    assert_eq!(
        (filled.username.as_deref(), &filled.ssh_keys),
        (Some("ada"), &None)
    );
    filled.check(&catalog()).expect("valid");
    // An account name that is no valid guest user: the field must be given.
    r.username = None;
    let filled = r.with_account_defaults(&catalog(), "root", vec![]);
    assert_eq!(filled.username, None);
    assert_eq!(refused(&filled).field, "username");
}

#[test]
fn default_user_names_fit_the_guest() {
    use crate::request::default_username;
    assert_eq!(
        default_username("alice", OsFamily::Linux).as_deref(),
        Some("alice")
    );
    assert_eq!(
        default_username("a.b_c-9", OsFamily::Linux).as_deref(),
        Some("a-b_c-9")
    );
    assert_eq!(
        default_username(&"x".repeat(64), OsFamily::Linux),
        Some("x".repeat(32))
    );
    assert_eq!(
        default_username(&"x".repeat(64), OsFamily::Windows),
        Some("x".repeat(20))
    );
    assert_eq!(
        default_username("a.b", OsFamily::Windows).as_deref(),
        Some("a.b")
    );
    for system in ["root", "nobody", "systemd-x", "www-data"] {
        assert_eq!(default_username(system, OsFamily::Linux), None, "{system}");
    }
    assert_eq!(default_username("guest", OsFamily::Windows), None);
}

#[test]
fn the_image_transfer_is_the_requests_or_the_profiles() {
    let cat = catalog();
    let ubuntu = cat.get("ubuntu-24.04").expect("built in");
    let mut r = request("ubuntu-24.04");
    assert_eq!(r.check_transfer(ubuntu), Ok(Some(ImageTransfer::Host)));
    r.image_transfer = Some(ImageTransfer::Stream);
    assert_eq!(r.check_transfer(ubuntu), Ok(Some(ImageTransfer::Stream)));
    r.check(&cat).expect("a stream is valid");
    // An installer's ISO is on the host: nothing to transfer.
    let mut w = request("windows-server-2022");
    w.image_transfer = Some(ImageTransfer::Host);
    assert_eq!(refused(&w).field, "image_transfer");
}
