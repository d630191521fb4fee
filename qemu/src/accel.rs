//! Choosing the accelerator: KVM where it really runs guests, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough. A nested paravirtual KVM (`kvm_pvm`)
//! runs only PVM-aware guests: a plain guest hangs at its first x87/SSE
//! instruction. So `auto` rules KVM out when it can tell from the loaded
//! modules, and otherwise proves it with a short probe boot of the image.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(Error::Usage(format!(
                "--accel: expected kvm, tcg or auto, got `{other}`"
            ))),
        }
    }
}

/// The accelerator a VM runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU arguments selecting this accelerator and a matching CPU model.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            // arch-capabilities is masked because some hosts advertise it but
            // reject the MSR writes a guest then makes.
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// What this host offers, as far as files tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmHost {
    /// `/dev/kvm` exists and opens for reading and writing.
    pub device_usable: bool,
    /// Why `/dev/kvm` cannot be used, when it cannot.
    pub device_problem: Option<String>,
    /// Names of loaded kernel modules whose name starts with `kvm`.
    pub kvm_modules: Vec<String>,
}

/// Verdict on KVM from [`KvmHost`] alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmVerdict {
    /// KVM cannot run this image; the reason is for the user.
    Unusable(String),
    /// KVM may work: boot a probe to find out.
    NeedsProbe,
}

/// Judges KVM from the device and the loaded modules (pure).
pub fn assess_kvm(host: &KvmHost) -> KvmVerdict {
    if !host.device_usable {
        return KvmVerdict::Unusable(
            host.device_problem
                .clone()
                .unwrap_or_else(|| "/dev/kvm is not usable".into()),
        );
    }
    if host.kvm_modules.iter().any(|m| m == "kvm_pvm") {
        return KvmVerdict::Unusable(
            "/dev/kvm is kvm-pvm, a nested paravirtual KVM that runs only PVM-aware guests".into(),
        );
    }
    KvmVerdict::NeedsProbe
}

/// Reads [`KvmHost`] from `/dev/kvm` and `/sys/module`.
pub fn detect_kvm_host() -> KvmHost {
    let (device_usable, device_problem) = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => (true, None),
        Err(e) => (false, Some(format!("/dev/kvm: {e}"))),
    };
    let mut kvm_modules = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/module") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("kvm") {
                kvm_modules.push(name);
            }
        }
    }
    kvm_modules.sort();
    KvmHost {
        device_usable,
        device_problem,
        kvm_modules,
    }
}

/// How long the probe boot may take before KVM is declared unusable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves the user's choice to an accelerator, with a sentence saying why.
///
/// `Auto` boots `image` once under KVM (no devices, up to [`PROBE_TIMEOUT`])
/// unless KVM is ruled out beforehand.
pub fn resolve(choice: AccelChoice, image: &Path) -> (Accel, String) {
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, "KVM (asked for with --accel kvm)".into()),
        AccelChoice::Tcg => (Accel::Tcg, "TCG (asked for with --accel tcg)".into()),
        AccelChoice::Auto => match assess_kvm(&detect_kvm_host()) {
            KvmVerdict::Unusable(why) => (Accel::Tcg, format!("TCG: {why}")),
            KvmVerdict::NeedsProbe => {
                match crate::node::probe_boot(image, Accel::Kvm, PROBE_TIMEOUT) {
                    Ok(()) => (Accel::Kvm, "KVM (a probe boot reached ready)".into()),
                    Err(e) => (
                        Accel::Tcg,
                        format!(
                            "TCG: a probe boot under KVM failed: {}",
                            first_line(&e.to_string())
                        ),
                    ),
                }
            }
        },
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(usable: bool, modules: &[&str]) -> KvmHost {
        KvmHost {
            device_usable: usable,
            device_problem: (!usable).then(|| "/dev/kvm: No such file or directory".into()),
            kvm_modules: modules.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn nested_paravirtual_kvm_is_ruled_out_without_a_probe() {
        match assess_kvm(&host(true, &["kvm", "kvm_pvm"])) {
            KvmVerdict::Unusable(why) => assert!(why.contains("kvm-pvm")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_device_is_ruled_out_and_says_why() {
        assert_eq!(
            assess_kvm(&host(false, &["kvm", "kvm_intel"])),
            KvmVerdict::Unusable("/dev/kvm: No such file or directory".into())
        );
    }

    #[test]
    fn hardware_kvm_is_still_probed() {
        assert_eq!(
            assess_kvm(&host(true, &["kvm", "kvm_amd"])),
            KvmVerdict::NeedsProbe
        );
        assert_eq!(
            assess_kvm(&host(true, &["kvm", "kvm_intel"])),
            KvmVerdict::NeedsProbe
        );
        assert_eq!(assess_kvm(&host(true, &[])), KvmVerdict::NeedsProbe);
    }

    #[test]
    fn choices_parse_and_map_to_qemu_arguments() {
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Kvm);
        assert_eq!("tcg".parse::<AccelChoice>().unwrap(), AccelChoice::Tcg);
        assert!("hvf".parse::<AccelChoice>().is_err());
        assert_eq!(
            Accel::Kvm.qemu_args(),
            ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
        );
        assert_eq!(Accel::Tcg.qemu_args(), ["-accel", "tcg", "-cpu", "max"]);
    }

    #[test]
    fn forced_choices_need_no_probe() {
        let image = Path::new("/nonexistent");
        assert_eq!(resolve(AccelChoice::Tcg, image).0, Accel::Tcg);
        assert_eq!(resolve(AccelChoice::Kvm, image).0, Accel::Kvm);
    }
}
