//! PID 1: brings the guest up from the initramfs into the root disk, then
//! supervises the agent and powers off on request.
//!
//! Everything here runs single-threaded and before any async runtime: the
//! agent is forked from this process, and forking a multi-threaded process
//! is unsound.

pub mod cmdline;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod pid1;

use std::time::Duration;

use nix::errno::Errno;

use crate::logging::{self, console, console_debug};

/// Environment variable that replaces `/proc/cmdline`, so the init can be
/// exercised as PID 1 of a container (PID, mount, UTS and network
/// namespaces) on a normal host. Harmless in a VM: nobody sets it.
const CMDLINE_ENV: &str = "WARREN_INIT_CMDLINE";
/// How long to wait for the root disk's device node.
const ROOT_DEVICE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the network card may take to appear after its module loads.
const NIC_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a step of the init stage failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A system call failed.
    #[error("{what} failed: {errno} ({})", errno.desc())]
    Sys {
        /// What was being done.
        what: String,
        /// The error number.
        errno: Errno,
    },
    /// The root device did not appear.
    #[error(
        "the root disk {device} did not appear within {timeout:?}; check that the VM has a virtio disk and that virtio_blk is in the initramfs module list"
    )]
    DeviceTimeout {
        /// The device path.
        device: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Prints why the guest cannot boot and powers off, so the host sees QEMU
/// exit (with the reason in the console log) instead of a hung VM.
fn fatal(message: &str) -> ! {
    console(&format!("FATAL: {message}"));
    console("powering off");
    pid1::power_off()
}

/// The init stage, then the supervisor loop. Never returns: PID 1 exiting
/// would panic the kernel.
pub fn run() -> ! {
    pid1::install_panic_hook();
    if let Err(error) = mounts::mount_early() {
        fatal(&error.to_string());
    }
    let cmdline = std::env::var(CMDLINE_ENV)
        .or_else(|_| std::fs::read_to_string("/proc/cmdline"))
        .unwrap_or_default();
    let config = cmdline::parse(&cmdline);
    logging::set_debug(config.debug);
    console_debug(&format!(
        "warren-guest {} starting: {config:?}",
        env!("CARGO_PKG_VERSION")
    ));

    let failed = modules::load_all();
    if failed > 0 {
        console(&format!("{failed} kernel module(s) failed to load"));
    }

    if let Err(error) = mounts::wait_for_block_device(&config.root, ROOT_DEVICE_TIMEOUT) {
        fatal(&error.to_string());
    }
    if let Err(error) = mounts::mount_root(&config.root, &config.rootfstype) {
        fatal(&format!(
            "{error}; is {} a {} file system?",
            config.root, config.rootfstype
        ));
    }
    if let Err(error) = mounts::switch_root() {
        fatal(&error.to_string());
    }
    console_debug("switched to the root disk");

    mounts::mount_runtime();
    if let Err(errno) = nix::unistd::sethostname(&config.hostname) {
        console(&format!(
            "setting the hostname to {}: {errno}",
            config.hostname
        ));
    }
    if let Err(error) = net::bring_up_loopback() {
        console(&format!("bringing up the loopback interface: {error}"));
    }
    if let Some(guest_net) = &config.net {
        match net::configure_eth0(guest_net, NIC_TIMEOUT) {
            Ok(()) => console_debug(&format!("eth0 is {guest_net:?}")),
            Err(error) => console(&format!("configuring eth0: {error}")),
        }
    }
    // One line in every console log, so a person reading it can tell the
    // guest came up (and how long the kernel and init took).
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    console(&format!(
        "{} is up after {uptime} s; starting the agent",
        config.hostname
    ));
    pid1::supervise(config.debug)
}
