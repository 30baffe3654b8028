//! The PowerShell scripts the Hyper-V driver runs, and how one becomes a
//! command line.
//!
//! Scripts are files compiled into the binary, each tagged with its
//! operation and version (`# overvisor-op: vm.list v1`) so the host side (and
//! the lab's stand-in) knows exactly what it runs. Parameters never become
//! script text: they travel as base64 of one JSON document in a fixed
//! variable assignment, and the whole script goes as `-EncodedCommand`
//! (base64 of UTF-16LE), so no shell on the way, cmd or POSIX, sees a quote,
//! a space or a name.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::driver::{HvError, HvResult};
use crate::quote::CommandLine;

/// Shared head of every script: error preference, envelope, VM lookup.
const PRELUDE: &str = include_str!("scripts/prelude.ps1");

/// Windows caps a process command line at 32,767 UTF-16 units; the prefix
/// (`powershell.exe -NoProfile …`) and sshd's `cmd /c` take a little.
pub const MAX_COMMAND_LINE: usize = 32_000;

/// One embedded script: its operation, version and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    pub op: &'static str,
    pub version: u32,
    body: &'static str,
}

macro_rules! script {
    ($name:ident, $op:literal, $version:literal, $file:literal) => {
        pub const $name: Script = Script {
            op: $op,
            version: $version,
            body: include_str!(concat!("scripts/", $file)),
        };
    };
}

script!(HOST_FACTS, "host.facts", 1, "host_facts.ps1");
script!(VM_LIST, "vm.list", 1, "vm_list.ps1");
script!(VM_INFO, "vm.info", 1, "vm_info.ps1");
script!(VM_STATE, "vm.state", 1, "vm_state.ps1");
script!(VM_ACTION, "vm.action", 1, "vm_action.ps1");
script!(VM_DELETE, "vm.delete", 1, "vm_delete.ps1");
script!(VM_EVENTS, "vm.events", 1, "vm_events.ps1");
script!(VM_KVP, "vm.kvp", 1, "kvp.ps1");
script!(HOST_USAGE, "host.usage", 1, "host_usage.ps1");
script!(VM_ADDRESSES, "vm.addresses", 1, "vm_addresses.ps1");

/// Every script, for the tests that check their tags and rules.
pub const ALL: [Script; 10] = [
    HOST_FACTS,
    VM_LIST,
    VM_INFO,
    VM_STATE,
    VM_ACTION,
    VM_DELETE,
    VM_EVENTS,
    VM_KVP,
    HOST_USAGE,
    VM_ADDRESSES,
];

impl Script {
    /// The tag line the script must carry.
    pub fn tag(&self) -> String {
        format!("# overvisor-op: {} v{}", self.op, self.version)
    }

    /// The full text sent: the parameters line, the prelude, the body.
    pub fn text(&self, params: &serde_json::Value) -> String {
        let b64 = STANDARD.encode(params.to_string());
        // Base64 has no quote, so a single-quoted literal cannot be left.
        format!("$OvParamsB64 = '{b64}'\n{PRELUDE}\n{}", self.body)
    }

    /// Whether the command with `params` stays within Windows' limit.
    pub fn fits(&self, params: &serde_json::Value) -> bool {
        encode_command(&self.text(params)).len() <= MAX_COMMAND_LINE
    }

    /// `powershell.exe -NoProfile -NonInteractive -EncodedCommand <…>`.
    pub fn command(&self, params: &serde_json::Value) -> HvResult<CommandLine> {
        let encoded = encode_command(&self.text(params));
        if encoded.len() > MAX_COMMAND_LINE {
            return Err(HvError::Host(format!(
                "{} command line would be {} characters, over Windows' limit",
                self.op,
                encoded.len()
            )));
        }
        Ok(CommandLine::new("powershell.exe")
            .args(["-NoProfile", "-NonInteractive", "-EncodedCommand"])
            .arg(encoded))
    }
}

/// What `-EncodedCommand` takes: base64 of the script in UTF-16LE.
pub fn encode_command(script: &str) -> String {
    let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_tagged_and_strict() {
        for s in ALL {
            assert!(s.body.starts_with(&s.tag()), "{} lacks its tag", s.op);
            let text = s.text(&serde_json::json!({}));
            assert!(text.contains("$ErrorActionPreference = 'Stop'"));
            assert!(text.contains("$ProgressPreference = 'SilentlyContinue'"));
            // Hyper-V cmdlets are always module-qualified.
            for cmdlet in ["Get-VM ", "Start-VM", "Stop-VM", "Remove-VM", "Save-VM"] {
                for (i, _) in text.match_indices(cmdlet) {
                    assert!(text[..i].ends_with("Hyper-V\\"), "{}: bare {cmdlet}", s.op);
                }
            }
        }
    }

    #[test]
    fn parameters_never_reach_the_script_text() {
        let hostile = "x'; Remove-Item C:\\ -Recurse; '";
        let text = VM_ACTION.text(&serde_json::json!({ "vm": hostile }));
        assert!(!text.contains(hostile));
        let line = VM_ACTION
            .command(&serde_json::json!({ "vm": hostile }))
            .expect("short");
        // Only safe characters: the rendered line needs no quoting anywhere.
        assert_eq!(line.render().matches('\'').count(), 0);
        assert!(
            line.render()
                .starts_with("powershell.exe -NoProfile -NonInteractive -EncodedCommand ")
        );
    }

    #[test]
    fn encoding_is_utf16le_base64() {
        assert_eq!(encode_command("ab"), "YQBiAA==");
        assert_eq!(encode_command("ü"), "/AA=");
    }

    #[test]
    fn over_long_commands_are_refused() {
        let big = "x".repeat(MAX_COMMAND_LINE);
        assert!(matches!(
            VM_KVP.command(&serde_json::json!({ "v": big })),
            Err(HvError::Host(_))
        ));
        let line = VM_LIST.command(&serde_json::json!({})).expect("fits");
        assert!(line.render().len() < MAX_COMMAND_LINE);
    }
}
