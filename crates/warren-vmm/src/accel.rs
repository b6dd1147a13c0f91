//! Choosing between hardware virtualisation (KVM) and software emulation.
//!
//! `/dev/kvm` existing is not enough: on hosts that are themselves VMs with
//! paravirtual nesting, a real-mode guest runs but a Linux kernel hangs or
//! hits emulation failures. The rule that holds up: use KVM only when
//! `/dev/kvm` opens read-write AND the CPU advertises `vmx` or `svm`.

use std::fs::OpenOptions;
use std::str::FromStr;

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's Tiny Code Generator: software emulation, works anywhere.
    Tcg,
}

impl Accel {
    /// Lowercase name as used on QEMU's command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when usable (see the module docs), TCG otherwise.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG even where KVM works.
    Tcg,
}

/// A `--accel` / `WARREN_ACCEL` value that names no accelerator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator {0:?}; use auto, kvm or tcg")]
pub struct UnknownAccel(pub String);

impl FromStr for AccelChoice {
    type Err = UnknownAccel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(UnknownAccel(other.to_owned())),
        }
    }
}

/// Why KVM cannot be used; returned when KVM was forced.
#[derive(Debug, thiserror::Error)]
pub enum KvmUnavailable {
    /// /dev/kvm could not be opened read-write.
    #[error(
        "/dev/kvm cannot be opened read-write; load the kvm module and check permissions, or use --accel tcg"
    )]
    NoDevice(#[source] std::io::Error),
    /// The CPU does not advertise hardware virtualisation.
    #[error(
        "the CPU advertises neither vmx nor svm (nested or paravirtual KVM cannot boot Linux guests reliably); use --accel tcg"
    )]
    NoCpuSupport,
}

/// Checks whether KVM is usable on this host.
pub fn kvm_usable() -> Result<(), KvmUnavailable> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(KvmUnavailable::NoDevice)?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpu_flags_have_virtualisation(&cpuinfo) {
        Ok(())
    } else {
        Err(KvmUnavailable::NoCpuSupport)
    }
}

fn cpu_flags_have_virtualisation(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

/// Resolves a choice to a concrete accelerator.
pub fn resolve(choice: AccelChoice) -> Result<Accel, KvmUnavailable> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm => kvm_usable().map(|()| Accel::Kvm),
        AccelChoice::Auto => Ok(if kvm_usable().is_ok() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!("KVM".parse::<AccelChoice>(), Ok(AccelChoice::Kvm));
        assert_eq!("".parse::<AccelChoice>(), Ok(AccelChoice::Auto));
        let error = "xen".parse::<AccelChoice>().unwrap_err();
        assert_eq!(error, UnknownAccel("xen".into()));
        assert!(error.to_string().contains("auto, kvm or tcg"), "{error}");
    }

    #[test]
    fn finds_virtualisation_flags() {
        assert!(cpu_flags_have_virtualisation(
            "flags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpu_flags_have_virtualisation(
            "flags\t\t: fpu vme sse\nmodel: vmx\n"
        ));
    }

    #[test]
    fn tcg_is_always_available() {
        assert_eq!(resolve(AccelChoice::Tcg).ok(), Some(Accel::Tcg));
    }
}
