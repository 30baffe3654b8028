//! What the agent's tests share: a guest (a scratch root with the files
//! `useradd` needs, an identity, the control plane's key), the payload,
//! and what applying it must and must not have left.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use overvisor_provision::payload::{File, User};
use overvisor_provision::{
    DeploymentNonce, GuestIdentity, GuestPublicKey, Payload, ProvisioningKey, SealedPayload, seal,
};
use uuid::Uuid;

const HASH: &str = "$6$Yx3d9Fv0$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ./abcdefghijklmnopqrstu";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv3lYxk0Ff2oA test@overvisor";

pub struct Guest {
    pub dir: tempfile::TempDir,
    pub cp: ProvisioningKey,
    pub identity: GuestIdentity,
}

impl Guest {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        for (file, text) in [
            ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("group", "root:x:0:\nusers:x:100:\n"),
            ("shadow", "root:*:19000:0:99999:7:::\n"),
            ("gshadow", "root:*::\n"),
            ("hosts", "127.0.0.1\tlocalhost\n127.0.1.1\told-name\n"),
        ] {
            std::fs::write(root.join("etc").join(file), text).unwrap();
        }
        let cp = ProvisioningKey::from_seed(&[42; 32]);
        let identity = GuestIdentity::new(Uuid::new_v4(), DeploymentNonce::generate(), cp.public());
        std::fs::write(dir.path().join("identity.json"), identity.to_json()).unwrap();
        Self { dir, cp, identity }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The agent on `channel`, its identity from the file.
    pub fn agent(&self, channel: &[&str]) -> Child {
        let identity = self.dir.path().join("identity.json");
        let mut args: Vec<&str> = channel.to_vec();
        args.extend(["--identity", identity.to_str().unwrap()]);
        self.agent_with(&args)
    }

    /// The agent with `args`, its state and root in this guest's scratch.
    pub fn agent_with(&self, args: &[&str]) -> Child {
        let d = self.dir.path();
        Command::new(env!("CARGO_BIN_EXE_overvisor-guest"))
            .args(args)
            .arg("--trusted-key")
            .arg(d.join("no-baked-key"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--root")
            .arg(self.root())
            .args(["--hello-every", "1", "--give-up", "120"])
            .spawn()
            .unwrap()
    }

    pub fn payload() -> Payload {
        Payload {
            hostname: "web-01".into(),
            users: vec![User {
                name: "olga".into(),
                password_hash: Some(HASH.into()),
                authorized_keys: vec![KEY.into()],
                sudo: true,
            }],
            files: vec![
                File {
                    path: "/etc/app/token".into(),
                    mode: 0o600,
                    content: b"t0ken".to_vec(),
                },
                // Large enough to need several KVP items.
                File {
                    path: "/etc/app/blob".into(),
                    mode: 0o644,
                    content: vec![b'z'; 2500],
                },
            ],
            network: None,
        }
    }

    pub fn seal_for(&self, cp: &ProvisioningKey, uuid: Uuid, to: &GuestPublicKey) -> SealedPayload {
        seal::seal(cp, uuid, self.identity.nonce, to, &Self::payload()).unwrap()
    }

    /// Every message a refused payload could have left: none.
    pub fn assert_nothing_applied(&self) {
        let root = self.root();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(!passwd.contains("olga"), "{passwd}");
        assert!(!root.join("etc/app/token").exists());
        assert!(!root.join("etc/hostname").exists());
    }

    pub fn assert_applied(&self) {
        let root = self.root();
        let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
        assert!(shadow.contains(&format!("olga:{HASH}:")), "{shadow}");
        let keys = root.join("home/olga/.ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("{KEY}\n"));
        assert_eq!(mode(&keys), 0o600);
        assert_eq!(mode(&root.join("home/olga/.ssh")), 0o700);
        let token = root.join("etc/app/token");
        assert_eq!(std::fs::read(&token).unwrap(), b"t0ken");
        assert_eq!(mode(&token), 0o600);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "web-01\n"
        );
        let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(
            hosts.contains("127.0.1.1\tweb-01") && !hosts.contains("old-name"),
            "{hosts}"
        );
        let sudo = root.join("etc/sudoers.d/90-overvisor-olga");
        assert_eq!(mode(&sudo), 0o440);
    }
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

pub fn assert_root() {
    assert!(
        is_root(),
        "the agent tests need root (useradd --root), as the suite runs"
    );
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

pub fn exited(child: &mut Child) -> i32 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < until, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}
