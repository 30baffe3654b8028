//! `overvisor guest-key list|add|rm`: the caller's guest SSH keys, which a
//! deployment that names no keys (`vm deploy` without `--ssh-key`) injects.

use std::path::PathBuf;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::client::Client;
use super::error::{Error, Result};
use super::output::{self, Format};

const PATH: [&str; 3] = ["users", "me", "guest-keys"];

#[derive(Subcommand)]
pub enum GuestKeyCommand {
    /// Your guest SSH keys.
    List,
    /// Adds a public key (a `.pub` file holding one key).
    Add {
        /// The OpenSSH public key file, e.g. ~/.ssh/id_ed25519.pub.
        file: PathBuf,
        /// A name to tell keys apart (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Removes a key (guests deployed with it keep it).
    Rm {
        /// The key's id (`guest-key list`).
        id: String,
    },
}

pub async fn run(client: &Client, format: Format, cmd: GuestKeyCommand) -> Result<()> {
    match cmd {
        GuestKeyCommand::List => {
            let keys = client.get(&PATH, &[]).await?;
            output::list(
                format,
                &keys,
                &["ID", "NAME", "FINGERPRINT", "ADDED"],
                None,
                |k| {
                    vec![
                        output::text(&k["id"]),
                        output::text(&k["name"]),
                        output::text(&k["fingerprint"]),
                        output::relative(&k["created_at"]),
                    ]
                },
            );
            Ok(())
        }
        GuestKeyCommand::Add { file, name } => {
            let public_key =
                std::fs::read_to_string(&file).map_err(|e| Error::io(file.display(), e))?;
            let name = name.unwrap_or_else(|| {
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let key = client
                .post(&PATH, &json!({"name": name, "public_key": public_key}))
                .await?;
            show(format, &key);
            Ok(())
        }
        GuestKeyCommand::Rm { id } => {
            let mut segments = PATH.to_vec();
            segments.push(&id);
            let key = client
                .call(Method::DELETE, client.url(&segments), None)
                .await?;
            show(format, &key);
            Ok(())
        }
    }
}

fn show(format: Format, key: &serde_json::Value) {
    match format {
        Format::Table => output::fields(&[
            ("id", output::text(&key["id"])),
            ("name", output::text(&key["name"])),
            ("fingerprint", output::text(&key["fingerprint"])),
        ]),
        _ => output::print_data(format, key),
    }
}
