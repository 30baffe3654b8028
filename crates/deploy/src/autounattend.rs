//! `Autounattend.xml` for Windows deployments, from typed structs: Windows
//! Setup finds it at the root of the seed ISO and installs without a
//! question.
//!
//! The disk is laid out for UEFI/GPT as Microsoft documents it: EFI system
//! partition (100 MiB, FAT32), MSR (16 MiB), Windows (the rest, NTFS, C:).
//! The image is chosen by name from `install.wim`. The Administrator gets
//! the deployment's generated password (Windows has no hashed form, so the
//! seed ISO holds it in plain text: the job deletes the ISO after
//! installation). With a virtio-win ISO, its storage and network drivers
//! are loaded during Setup and added to the installed system, with the
//! virtio-serial driver and the QEMU guest agent from the same ISO: the
//! agent answering is how the deployment sees Setup finish.

use serde::Serialize;

use crate::GenerateError;
use crate::profile::{DiskBus, NicModel};
use crate::request::Deployment;
use crate::secret::GeneratedPassword;
use crate::xml::{Text, to_document};

/// The file name Windows Setup looks for on removable media.
pub const FILE_NAME: &str = "Autounattend.xml";
/// The seed ISO's volume id (any works; this one says what it is).
pub const VOLUME_ID: &str = "AUTOUNATTEND";
/// The language of Setup's own screens; it must be one the installer
/// media has, and every Microsoft ISO has English.
const SETUP_LANGUAGE: &str = "en-US";
/// Where WinPE may have mounted the virtio-win ISO: the installer, the seed
/// and the drivers take three CD-ROM letters in an order Setup decides.
/// Paths on drives without the drivers are skipped.
const CDROM_LETTERS: [char; 3] = ['D', 'E', 'F'];
/// The QEMU guest agent's installer on the virtio-win ISO.
const GUEST_AGENT_MSI: &str = "guest-agent\\qemu-ga-x86_64.msi";
/// In the specialize pass the installed Windows has given the CD-ROMs
/// letters of its own, after C: and whatever else it found.
const SPECIALIZE_LETTERS: &str = "D E F G H I J K";

#[derive(Serialize)]
#[serde(rename = "unattend")]
struct Unattend {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "@xmlns:wcm")]
    xmlns_wcm: &'static str,
    settings: Vec<Settings>,
}

#[derive(Serialize)]
struct Settings {
    #[serde(rename = "@pass")]
    pass: &'static str,
    component: Vec<Component>,
}

/// One `<component>`. Each Windows component takes different settings; one
/// struct with optional parts keeps the shared attributes in one place.
#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Component {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@processorArchitecture")]
    architecture: &'static str,
    #[serde(rename = "@publicKeyToken")]
    public_key_token: &'static str,
    #[serde(rename = "@language")]
    language: &'static str,
    #[serde(rename = "@versionScope")]
    version_scope: &'static str,

    #[serde(rename = "SetupUILanguage", skip_serializing_if = "Option::is_none")]
    setup_ui_language: Option<SetupUiLanguage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_locale: Option<Text<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_locale: Option<Text<String>>,
    #[serde(rename = "UILanguage", skip_serializing_if = "Option::is_none")]
    ui_language: Option<Text<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_locale: Option<Text<String>>,

    #[serde(skip_serializing_if = "Option::is_none")]
    driver_paths: Option<DriverPaths>,

    #[serde(skip_serializing_if = "Option::is_none")]
    disk_configuration: Option<DiskConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_install: Option<ImageInstall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<UserData>,

    #[serde(skip_serializing_if = "Option::is_none")]
    run_synchronous: Option<RunSynchronous>,

    #[serde(skip_serializing_if = "Option::is_none")]
    computer_name: Option<Text<String>>,
    /// Shell-Setup's, in specialize: the key Windows activates with.
    #[serde(skip_serializing_if = "Option::is_none")]
    product_key: Option<Text<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_zone: Option<Text<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_accounts: Option<UserAccounts>,
    #[serde(rename = "OOBE", skip_serializing_if = "Option::is_none")]
    oobe: Option<Oobe>,
}

impl Component {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            architecture: "amd64",
            public_key_token: "31bf3856ad364e35",
            language: "neutral",
            version_scope: "nonSxS",
            ..Self::default()
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SetupUiLanguage {
    #[serde(rename = "UILanguage")]
    ui_language: Text<&'static str>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct DriverPaths {
    path_and_credentials: Vec<PathAndCredentials>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct PathAndCredentials {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    #[serde(rename = "@wcm:keyValue")]
    key: String,
    path: Text<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunSynchronous {
    run_synchronous_command: Vec<RunSynchronousCommand>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunSynchronousCommand {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    order: Text<u32>,
    description: Text<&'static str>,
    path: Text<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DiskConfiguration {
    disk: Disk,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Disk {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    create_partitions: CreatePartitions,
    modify_partitions: ModifyPartitions,
    #[serde(rename = "DiskID")]
    disk_id: Text<u32>,
    will_wipe_disk: Text<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreatePartitions {
    create_partition: Vec<CreatePartition>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreatePartition {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    order: Text<u32>,
    #[serde(rename = "Type")]
    partition_type: Text<&'static str>,
    /// MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<Text<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extend: Option<Text<bool>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ModifyPartitions {
    modify_partition: Vec<ModifyPartition>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ModifyPartition {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    order: Text<u32>,
    #[serde(rename = "PartitionID")]
    partition_id: Text<u32>,
    label: Text<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    letter: Option<Text<char>>,
    format: Text<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImageInstall {
    #[serde(rename = "OSImage")]
    os_image: OsImage,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OsImage {
    install_from: InstallFrom,
    install_to: InstallTo,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InstallFrom {
    meta_data: MetaData,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetaData {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    key: Text<&'static str>,
    value: Text<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InstallTo {
    #[serde(rename = "DiskID")]
    disk_id: Text<u32>,
    #[serde(rename = "PartitionID")]
    partition_id: Text<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct UserData {
    accept_eula: Text<bool>,
    full_name: Text<&'static str>,
    organization: Text<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_key: Option<SetupProductKey>,
}

/// The key Setup installs with (it picks the edition from it on retail
/// and volume media); Setup asks only if it is refused.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SetupProductKey {
    key: Text<String>,
    #[serde(rename = "WillShowUI")]
    will_show_ui: Text<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct UserAccounts {
    administrator_password: Password,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_accounts: Option<LocalAccounts>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Password {
    value: Text<String>,
    plain_text: Text<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LocalAccounts {
    local_account: LocalAccount,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LocalAccount {
    #[serde(rename = "@wcm:action")]
    action: &'static str,
    name: Text<String>,
    group: Text<&'static str>,
    password: Password,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Oobe {
    #[serde(rename = "HideEULAPage")]
    hide_eula_page: Text<bool>,
    hide_local_account_screen: Text<bool>,
    #[serde(rename = "HideOEMRegistrationScreen")]
    hide_oem_registration_screen: Text<bool>,
    hide_online_account_screens: Text<bool>,
    #[serde(rename = "HideWirelessSetupInOOBE")]
    hide_wireless_setup_in_oobe: Text<bool>,
    /// 3: no automatic updates or telemetry choices asked.
    #[serde(rename = "ProtectYourPC")]
    protect_your_pc: Text<u32>,
}

fn text<T: Serialize>(text: T) -> Text<T> {
    Text { text }
}

/// The Windows partitions, in `CreatePartition` order.
const PARTITIONS: [(&str, Option<u32>); 3] =
    [("EFI", Some(100)), ("MSR", Some(16)), ("Primary", None)];
/// `PartitionID` of the Windows partition.
const WINDOWS_PARTITION: u32 = 3;

fn disk_configuration() -> DiskConfiguration {
    DiskConfiguration {
        disk: Disk {
            action: "add",
            create_partitions: CreatePartitions {
                create_partition: (1..)
                    .zip(PARTITIONS)
                    .map(|(order, (kind, size))| CreatePartition {
                        action: "add",
                        order: text(order),
                        partition_type: text(kind),
                        size: size.map(text),
                        extend: size.is_none().then_some(text(true)),
                    })
                    .collect(),
            },
            // The MSR is left as created: it has no file system.
            modify_partitions: ModifyPartitions {
                modify_partition: vec![
                    ModifyPartition {
                        action: "add",
                        order: text(1),
                        partition_id: text(1),
                        label: text("System"),
                        letter: None,
                        format: text("FAT32"),
                    },
                    ModifyPartition {
                        action: "add",
                        order: text(2),
                        partition_id: text(WINDOWS_PARTITION),
                        label: text("Windows"),
                        letter: Some(text('C')),
                        format: text("NTFS"),
                    },
                ],
            },
            disk_id: text(0),
            will_wipe_disk: text(true),
        },
    }
}

/// The virtio-win drivers Setup loads (WinPE): those of the profile's
/// virtio buses.
fn setup_drivers(deployment: &Deployment) -> Vec<&'static str> {
    let profile = &deployment.profile;
    let storage = match profile.disk_bus {
        DiskBus::Virtio => Some("viostor"),
        DiskBus::Scsi => Some("vioscsi"),
        DiskBus::Sata => None,
    };
    let network = (profile.nic_model == NicModel::Virtio).then_some("NetKVM");
    [storage, network].into_iter().flatten().collect()
}

/// The drivers added to the installed Windows: Setup's, and the
/// virtio-serial port the guest agent talks through.
fn system_drivers(deployment: &Deployment) -> Vec<&'static str> {
    let mut drivers = setup_drivers(deployment);
    drivers.push("vioserial");
    drivers
}

fn virtio_win(deployment: &Deployment) -> Option<&crate::profile::VirtioWin> {
    deployment.profile.windows.as_ref()?.virtio_win.as_ref()
}

/// `drivers`' directories on the virtio-win ISO, on every drive letter it
/// may have; `None` without virtio-win or drivers.
fn driver_paths(deployment: &Deployment, drivers: &[&str]) -> Option<DriverPaths> {
    let virtio_win = virtio_win(deployment)?;
    let paths: Vec<_> = CDROM_LETTERS
        .iter()
        .flat_map(|letter| {
            drivers
                .iter()
                .map(move |driver| format!("{letter}:\\{driver}\\{}\\amd64", virtio_win.os_dir))
        })
        .collect();
    (!paths.is_empty()).then(|| DriverPaths {
        path_and_credentials: (1..)
            .zip(paths)
            .map(|(key, path)| PathAndCredentials {
                action: "add",
                key: key.to_string(),
                path: text(path),
            })
            .collect(),
    })
}

/// Installs the QEMU guest agent from the virtio-win ISO, wherever
/// Windows put it, as SYSTEM while Setup specializes the installed system;
/// the agent starts with Windows and answers from the next boot on.
/// `None` without virtio-win.
fn guest_agent_install(deployment: &Deployment) -> Option<RunSynchronous> {
    virtio_win(deployment)?;
    let msi = GUEST_AGENT_MSI;
    Some(RunSynchronous {
        run_synchronous_command: vec![RunSynchronousCommand {
            action: "add",
            order: text(1),
            description: text("QEMU guest agent from virtio-win"),
            path: text(format!(
                "cmd.exe /c for %d in ({SPECIALIZE_LETTERS}) do \
                 if exist %d:\\{msi} msiexec /i %d:\\{msi} /qn /norestart"
            )),
        }],
    })
}

fn password(password: &GeneratedPassword) -> Password {
    Password {
        value: text(password.expose().to_owned()),
        plain_text: text(true),
    }
}

/// `Autounattend.xml` for `deployment`.
pub fn autounattend_xml(
    deployment: &Deployment,
    administrator: &GeneratedPassword,
) -> Result<String, GenerateError> {
    let windows = deployment
        .profile
        .windows
        .as_ref()
        .ok_or(GenerateError::Missing("the profile's [windows] section"))?;
    let locale = deployment.locale.tag();
    let locales = |mut c: Component| {
        c.input_locale = Some(text(locale.clone()));
        c.system_locale = Some(text(locale.clone()));
        c.ui_language = Some(text(SETUP_LANGUAGE));
        c.user_locale = Some(text(locale.clone()));
        c
    };
    let with_drivers = |name, paths: Option<DriverPaths>| {
        paths.map(|p| Component {
            driver_paths: Some(p),
            ..Component::new(name)
        })
    };

    let mut pe = vec![locales(Component {
        setup_ui_language: Some(SetupUiLanguage {
            ui_language: text(SETUP_LANGUAGE),
        }),
        ..Component::new("Microsoft-Windows-International-Core-WinPE")
    })];
    pe.extend(with_drivers(
        "Microsoft-Windows-PnpCustomizationsWinPE",
        driver_paths(deployment, &setup_drivers(deployment)),
    ));
    pe.push(Component {
        disk_configuration: Some(disk_configuration()),
        image_install: Some(ImageInstall {
            os_image: OsImage {
                install_from: InstallFrom {
                    meta_data: MetaData {
                        action: "add",
                        key: text("/IMAGE/NAME"),
                        value: text(windows.image_name.clone()),
                    },
                },
                install_to: InstallTo {
                    disk_id: text(0),
                    partition_id: text(WINDOWS_PARTITION),
                },
            },
        }),
        user_data: Some(UserData {
            accept_eula: text(true),
            full_name: text("Overvisor"),
            organization: text("Overvisor"),
            product_key: deployment.product_key.as_ref().map(|key| SetupProductKey {
                key: text(key.expose().to_owned()),
                will_show_ui: text("OnError"),
            }),
        }),
        ..Component::new("Microsoft-Windows-Setup")
    });

    let mut settings = vec![Settings {
        pass: "windowsPE",
        component: pe,
    }];
    // Drivers loaded in WinPE serve Setup; these are added to the
    // installed Windows too (the network driver matters only there).
    if let Some(c) = with_drivers(
        "Microsoft-Windows-PnpCustomizationsNonWinPE",
        driver_paths(deployment, &system_drivers(deployment)),
    ) {
        settings.push(Settings {
            pass: "offlineServicing",
            component: vec![c],
        });
    }
    let mut specialize = vec![Component {
        computer_name: Some(text(deployment.hostname.to_ascii_uppercase())),
        product_key: deployment
            .product_key
            .as_ref()
            .map(|key| text(key.expose().to_owned())),
        time_zone: Some(text(deployment.timezone.clone())),
        ..Component::new("Microsoft-Windows-Shell-Setup")
    }];
    specialize.extend(guest_agent_install(deployment).map(|run| Component {
        run_synchronous: Some(run),
        ..Component::new("Microsoft-Windows-Deployment")
    }));
    settings.push(Settings {
        pass: "specialize",
        component: specialize,
    });
    let extra_admin = !deployment.username.eq_ignore_ascii_case("administrator");
    settings.push(Settings {
        pass: "oobeSystem",
        component: vec![
            locales(Component::new("Microsoft-Windows-International-Core")),
            Component {
                user_accounts: Some(UserAccounts {
                    administrator_password: password(administrator),
                    local_accounts: extra_admin.then(|| LocalAccounts {
                        local_account: LocalAccount {
                            action: "add",
                            name: text(deployment.username.clone()),
                            group: text("Administrators"),
                            password: password(administrator),
                        },
                    }),
                }),
                oobe: Some(Oobe {
                    hide_eula_page: text(true),
                    hide_local_account_screen: text(true),
                    hide_oem_registration_screen: text(true),
                    hide_online_account_screens: text(true),
                    hide_wireless_setup_in_oobe: text(true),
                    protect_your_pc: text(3),
                }),
                ..Component::new("Microsoft-Windows-Shell-Setup")
            },
        ],
    });
    to_document(
        &Unattend {
            xmlns: "urn:schemas-microsoft-com:unattend",
            xmlns_wcm: WCM,
            settings,
        },
        true,
    )
}

const WCM: &str = "http://schemas.microsoft.com/WMIConfig/2002/State";

/// The seed ISO with `Autounattend.xml` at its root.
pub fn autounattend_iso(xml: &str) -> Result<Vec<u8>, GenerateError> {
    crate::iso::build(VOLUME_ID, &[(FILE_NAME, xml.as_bytes())])
}

#[cfg(test)]
mod tests;
