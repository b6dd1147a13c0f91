//! The `warren.*` parameters of the kernel command line.
//!
//! The host passes per-sandbox settings this way because the kernel command
//! line is the one channel that exists before any device is up.

/// Settings of the init stage, from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Block device holding the root file system (`warren.root=`).
    pub root: String,
    /// Its file system type (`warren.rootfstype=`).
    pub rootfstype: String,
    /// Host name of the sandbox (`warren.hostname=`).
    pub hostname: String,
    /// Verbose logging to the console (`warren.debug=1`).
    pub debug: bool,
    /// The network of `eth0` (`warren.net=ADDR/PREFIX,GATEWAY,DNS`), when
    /// the sandbox has one: given by the host, the same in every sandbox,
    /// so no DHCP wait and nothing to change after a resume or clone.
    pub net: Option<GuestNet>,
}

/// `eth0`'s static configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNet {
    /// The guest's address.
    pub address: std::net::Ipv4Addr,
    /// Its prefix length (1..=30).
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: std::net::Ipv4Addr,
    /// The resolver `/etc/resolv.conf` names.
    pub dns: std::net::Ipv4Addr,
}

impl GuestNet {
    /// Parses `ADDR/PREFIX,GATEWAY,DNS`; `None` for anything else.
    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(',');
        let (addr, prefix) = parts.next()?.split_once('/')?;
        let net = GuestNet {
            address: addr.parse().ok()?,
            prefix_len: prefix.parse().ok().filter(|p| (1..=30).contains(p))?,
            gateway: parts.next()?.parse().ok()?,
            dns: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(net)
    }
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            root: "/dev/vda".into(),
            rootfstype: "ext4".into(),
            hostname: "warren".into(),
            debug: false,
            net: None,
        }
    }
}

/// Splits a kernel command line into words the way the kernel does:
/// whitespace separates, double quotes group (and are removed).
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    out.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        out.push(current);
    }
    out
}

/// Parses the command line; unknown and malformed parameters are ignored
/// (the defaults apply), because failing to boot over a typo helps nobody.
pub fn parse(cmdline: &str) -> BootConfig {
    let mut config = BootConfig::default();
    for word in words(cmdline) {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "warren.root" if !value.is_empty() => config.root = value.to_string(),
            "warren.rootfstype" if !value.is_empty() => config.rootfstype = value.to_string(),
            "warren.hostname" if valid_hostname(value) => config.hostname = value.to_string(),
            "warren.debug" => config.debug = matches!(value, "1" | "true" | "yes" | "on"),
            "warren.net" => config.net = GuestNet::parse(value),
            _ => {}
        }
    }
    config
}

/// A host name the kernel accepts (1 to 64 bytes) and that is safe to show
/// in prompts: letters, digits, `-` and `.`.
pub(crate) fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_parameters() {
        assert_eq!(
            parse("console=ttyS0 quiet panic=-1\n"),
            BootConfig::default()
        );
    }

    #[test]
    fn reads_warren_parameters() {
        let config = parse(
            "console=ttyS0 warren.root=/dev/vdb warren.rootfstype=ext2 warren.hostname=box-1 warren.debug=1\n",
        );
        assert_eq!(
            config,
            BootConfig {
                root: "/dev/vdb".into(),
                rootfstype: "ext2".into(),
                hostname: "box-1".into(),
                debug: true,
                net: None,
            }
        );
    }

    #[test]
    fn reads_the_network() {
        let config = parse("warren.net=169.254.0.21/30,169.254.0.22,169.254.0.22");
        assert_eq!(
            config.net,
            Some(GuestNet {
                address: "169.254.0.21".parse().unwrap(),
                prefix_len: 30,
                gateway: "169.254.0.22".parse().unwrap(),
                dns: "169.254.0.22".parse().unwrap(),
            })
        );
        for bad in [
            "warren.net=169.254.0.21,169.254.0.22,169.254.0.22",
            "warren.net=169.254.0.21/31,169.254.0.22,169.254.0.22",
            "warren.net=169.254.0.21/30,169.254.0.22",
            "warren.net=169.254.0.21/30,169.254.0.22,1.1.1.1,x",
            "warren.net=x/30,169.254.0.22,169.254.0.22",
        ] {
            assert_eq!(parse(bad).net, None, "{bad}");
        }
    }

    #[test]
    fn handles_quotes_and_bad_values() {
        let config = parse("a=\"x y\" warren.hostname=\"bad name\" warren.debug=0 warren.root=");
        assert_eq!(config.hostname, "warren");
        assert!(!config.debug);
        assert_eq!(config.root, "/dev/vda");
        assert_eq!(words("a=\"x y\"  b"), ["a=x y", "b"]);
        assert_eq!(words("  "), Vec::<String>::new());
    }
}
