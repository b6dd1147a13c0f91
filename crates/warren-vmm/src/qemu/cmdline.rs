//! The QEMU command line for a warren VM.
//!
//! Kept apart from process handling so it can be unit-tested and reused by
//! the benchmark that boots "plain QEMU" with exactly the same arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::accel::Accel;
use crate::config::{VmConfig, files};

/// Firmware that boots a `-kernel` faster than SeaBIOS, when installed.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// TCG translation cache cap (MiB); the default (1 GiB) costs host memory
/// for nothing on small sandboxes.
const TCG_TB_SIZE_MIB: u32 = 256;

/// Kernel parameters every warren guest gets, before the VM's own.
pub fn base_kernel_args(config: &VmConfig) -> Vec<String> {
    vec![
        "console=ttyS0".into(),
        "quiet".into(),
        "loglevel=4".into(),
        "panic=-1".into(),
        "rdinit=/init".into(),
        // Debian's kernel zeroes every page it allocates (hardening against
        // leaks between kernel users). Inside a sandbox there is one tenant
        // and the host hands the VM zeroed memory anyway, so the zeroing
        // only costs: under software emulation it was a fifth of an
        // upload's guest CPU (page-cache pages zeroed, then overwritten).
        "init_on_alloc=0".into(),
        "warren.root=/dev/vda".into(),
        format!("warren.hostname={}", config.id),
    ]
}

/// Builds the argument vector (without the program name).
pub fn build_args(config: &VmConfig) -> Vec<OsString> {
    let dir = &config.dir;
    let path = |name: &str| dir.join(name).into_os_string();
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["-name", &crate::process::vm_marker(&config.id)]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);

    match config.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&[
            "-accel",
            &format!("tcg,thread=multi,tb-size={TCG_TB_SIZE_MIB}"),
            "-cpu",
            // Without "enhanced rep movsb" the guest kernel and libc copy and
            // clear memory with wide moves instead of `rep movsb`, which TCG
            // emulates a byte at a time: guest memcpy and page clearing run
            // 4-7x faster (a 64 MiB download went from 32 to 112 MiB/s).
            "max,-erms,-fsrm",
        ]),
    }
    if Path::new(QBOOT).exists() {
        push(&["-bios", QBOOT]);
    }

    // Guest RAM lives in a shared file from the first boot: a snapshot can
    // then save device state only, and the RAM file is the memory image.
    let memory = format!("{}M", config.memory_mib);
    push(&["-machine", "pc,memory-backend=ram0", "-m", &memory]);
    push(&["-smp", &config.vcpus.to_string()]);
    args.push("-object".into());
    let mut ram = OsString::from(format!(
        "memory-backend-file,id=ram0,size={memory},share=on,mem-path="
    ));
    let memory_file = config
        .memory_file
        .clone()
        .map(PathBuf::into_os_string)
        .unwrap_or_else(|| path(files::MEMORY));
    ram.push(escape_commas(memory_file.as_os_str()));
    args.push(ram);
    if config.incoming {
        // Stay stopped after the device state is loaded: the caller decides
        // when the guest runs again.
        args.extend(["-S", "-incoming", "defer"].map(OsString::from));
    }

    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["-kernel"]);
    args.push(config.kernel.clone().into_os_string());
    args.push("-initrd".into());
    args.push(config.initramfs.clone().into_os_string());
    let mut cmdline = base_kernel_args(config);
    cmdline.extend(config.kernel_args.iter().cloned());
    args.push("-append".into());
    args.push(cmdline.join(" ").into());

    // Root disk.
    args.push("-drive".into());
    let mut drive =
        OsString::from("if=none,id=root,cache=writeback,aio=threads,discard=unmap,file=");
    drive.push(escape_commas(config.root_disk.path.as_os_str()));
    drive.push(format!(",format={}", config.root_disk.format.as_str()));
    if config.root_disk.read_only {
        drive.push(",readonly=on");
    }
    args.push(drive);
    args.push("-device".into());
    args.push("virtio-blk-pci,drive=root,id=rootdisk".into());

    // Agent channel: virtio-serial port backed by a unix socket we connect to.
    args.push("-device".into());
    args.push("virtio-serial-pci,id=vser0".into());
    args.push("-chardev".into());
    let mut agent = OsString::from("socket,id=agent,server=on,wait=off,path=");
    agent.push(escape_commas(path(files::AGENT_SOCKET).as_os_str()));
    args.push(agent);
    args.push("-device".into());
    args.push(
        format!(
            "virtserialport,bus=vser0.0,chardev=agent,name={}",
            AGENT_PORT
        )
        .into(),
    );

    // Network: virtio-net on the TAP warren opened in the sandbox's
    // namespace. No option ROM (nothing network-boots), no vhost (not
    // present on every host, and TCG gains nothing from it).
    if let Some(nic) = &config.nic {
        args.push("-netdev".into());
        args.push(format!("tap,id=net0,fd={},vhost=off", nic.tap_fd()).into());
        args.push("-device".into());
        args.push(format!("virtio-net-pci,netdev=net0,mac={},romfile=", nic.mac).into());
    }

    // Entropy, so the guest's RNG is ready at once.
    args.push("-device".into());
    args.push("virtio-rng-pci".into());

    // Serial console into a file.
    args.push("-chardev".into());
    let mut console = OsString::from("file,id=console,path=");
    console.push(escape_commas(path(files::CONSOLE_LOG).as_os_str()));
    if config.incoming {
        // A resumed guest continues the log of the run it was paused in.
        console.push(",append=on");
    }
    args.push(console);
    args.push("-serial".into());
    args.push("chardev:console".into());

    // Control socket.
    args.push("-qmp".into());
    let mut qmp = OsString::from("unix:");
    qmp.push(escape_commas(path(files::QMP_SOCKET).as_os_str()));
    qmp.push(",server=on,wait=off");
    args.push(qmp);
    args
}

/// Name of the agent's virtio-serial port (see warren-proto).
pub const AGENT_PORT: &str = "warren.agent";

/// QEMU option values use ',' as a separator; a literal comma is doubled.
fn escape_commas(value: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(value.len());
    for &byte in value.as_bytes() {
        out.push(byte);
        if byte == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, DiskFormat};
    use std::path::PathBuf;

    fn config(accel: Accel) -> VmConfig {
        VmConfig {
            id: "sb-test".into(),
            dir: PathBuf::from("/data/sb,1"),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/img/vmlinuz".into(),
            initramfs: "/img/initramfs.cpio".into(),
            kernel_args: vec!["warren.debug=1".into()],
            root_disk: DiskConfig {
                path: "/data/sb,1/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
            },
            accel,
            die_with_parent: true,
            memory_file: None,
            incoming: false,
            nic: None,
        }
    }

    #[test]
    fn a_nic_is_the_inherited_tap_and_no_nic_means_no_network_device() {
        let line = joined(&build_args(&config(Accel::Tcg)));
        assert!(!line.contains("netdev"), "{line}");
        let tap: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let mut with = config(Accel::Tcg);
        with.nic = Some(crate::config::NicConfig {
            tap: std::sync::Arc::new(tap),
            mac: "02:77:72:6e:00:15".into(),
        });
        let fd = with.nic.as_ref().unwrap().tap_fd();
        let line = joined(&build_args(&with));
        assert!(
            line.contains(&format!("-netdev tap,id=net0,fd={fd},vhost=off")),
            "{line}"
        );
        assert!(line.contains("virtio-net-pci,netdev=net0,mac=02:77:72:6e:00:15,romfile="));
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_command_line_has_file_backed_ram_and_channels() {
        let line = joined(&build_args(&config(Accel::Tcg)));
        assert!(line.contains("-accel tcg,thread=multi"));
        assert!(line.contains("-cpu max,-erms,-fsrm"));
        assert!(line.contains("init_on_alloc=0"));
        assert!(line.contains(
            "memory-backend-file,id=ram0,size=512M,share=on,mem-path=/data/sb,,1/memory"
        ));
        assert!(line.contains("-m 512M"));
        assert!(line.contains("-smp 2"));
        assert!(line.contains("file=/data/sb,,1/disk.qcow2,format=qcow2"));
        assert!(line.contains("name=warren.agent"));
        assert!(line.contains("warren.hostname=sb-test"));
        assert!(line.contains("warren.debug=1"));
        assert!(line.contains("-no-reboot"));
    }

    #[test]
    fn a_restore_starts_paused_with_the_given_memory_file() {
        let mut config = config(Accel::Tcg);
        config.memory_file = Some("/data/sb,1/memfs/memory".into());
        config.incoming = true;
        let line = joined(&build_args(&config));
        assert!(line.contains("mem-path=/data/sb,,1/memfs/memory"));
        assert!(line.contains("-S -incoming defer"));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let line = joined(&build_args(&config(Accel::Kvm)));
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(!line.contains("tcg"));
    }
}
