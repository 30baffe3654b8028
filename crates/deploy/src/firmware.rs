//! Which UEFI firmware (OVMF) a VM boots with. Distributions install OVMF
//! under different names, so the deployment asks the host which of the
//! known builds it has ([`all_paths`]) and picks one here ([`choose`]):
//! with Secure Boot, a build compiled for it (it needs SMM) with a variable
//! store that has Microsoft's keys enrolled; without, the plain build.

/// One OVMF build: the read-only code and the template every VM's own
/// variable store is copied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ovmf {
    pub code: &'static str,
    pub vars: &'static str,
    pub secure_boot: bool,
}

/// The builds Overvisor knows, preferred first: Debian and Ubuntu
/// (package `ovmf`, 4 MiB flash), then Fedora, RHEL and their kin
/// (`edk2-ovmf`).
pub const KNOWN: [Ovmf; 4] = [
    Ovmf {
        code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        secure_boot: true,
    },
    Ovmf {
        code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
        vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
        secure_boot: false,
    },
    Ovmf {
        code: "/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd",
        vars: "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd",
        secure_boot: true,
    },
    Ovmf {
        code: "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        vars: "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        secure_boot: false,
    },
];

/// What libvirt's emulated TPM runs: `swtpm`, and `swtpm_setup` (package
/// swtpm-tools) which creates its state on first start.
pub const SWTPM: [&str; 2] = ["/usr/bin/swtpm", "/usr/bin/swtpm_setup"];

/// Every file of [`KNOWN`], to ask a host which it has.
pub fn all_paths() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().flat_map(|o| [o.code, o.vars])
}

/// The first known build with `secure_boot` whose two files the host has.
pub fn choose(secure_boot: bool, has: impl Fn(&str) -> bool) -> Option<Ovmf> {
    KNOWN
        .iter()
        .find(|o| o.secure_boot == secure_boot && has(o.code) && has(o.vars))
        .copied()
}

/// Why a host cannot boot a VM: what to install, for the operator.
pub fn missing(secure_boot: bool) -> String {
    let kind = if secure_boot {
        "UEFI firmware with Secure Boot (OVMF_CODE_4M.secboot.fd and OVMF_VARS_4M.ms.fd)"
    } else {
        "UEFI firmware (OVMF_CODE_4M.fd and OVMF_VARS_4M.fd)"
    };
    format!("has no {kind}: install the ovmf package (edk2-ovmf on Fedora and RHEL)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_build_the_profile_needs_from_what_the_host_has() {
        let debian = |p: &str| p.starts_with("/usr/share/OVMF/");
        let secure = choose(true, debian).expect("secure build");
        assert!(secure.code.ends_with("secboot.fd") && secure.vars.ends_with(".ms.fd"));
        let plain = choose(false, debian).expect("plain build");
        assert_eq!(plain.code, "/usr/share/OVMF/OVMF_CODE_4M.fd");
        // Fedora's names are found too.
        let fedora = |p: &str| p.starts_with("/usr/share/edk2/");
        assert_eq!(choose(true, fedora).map(|o| o.secure_boot), Some(true));
        // Code without its variable store is no build at all.
        let half = |p: &str| p == "/usr/share/OVMF/OVMF_CODE_4M.fd";
        assert_eq!(choose(false, half), None);
        assert_eq!(choose(true, |_| false), None);
        assert_eq!(all_paths().count(), 2 * KNOWN.len());
        assert!(missing(true).contains("Secure Boot"));
    }
}
