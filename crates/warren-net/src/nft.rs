//! The nftables rules, as scripts for `nft -f`: one table on the host
//! (shared by every sandbox and every warren on the machine, the same text
//! each time) and one table in each sandbox's namespace (its policy).
//! A script replaces its table in one transaction, so a policy update
//! never leaves a moment with no rules or half of them.

use std::fmt::Write;

use ipnet::Ipv4Net;

use crate::layout::{HOST_IFACE_PREFIX, HostRange, always_blocked, device, guest};
use crate::policy::{NetworkPolicy, RuleList};

/// The sandbox table's name (family inet) in each namespace.
pub const SANDBOX_TABLE: &str = "warren";
/// The host table's name (family inet).
pub const HOST_TABLE: &str = "warren_host";
/// The set the resolver fills with addresses of names `allow_out` names.
pub const RESOLVED_ALLOW_SET: &str = "resolved_allow";
/// The set the resolver fills with addresses of names `deny_out` names.
pub const RESOLVED_DENY_SET: &str = "resolved_deny";
/// Port of the resolver on the gateway address, in the namespace.
pub const RESOLVER_PORT: u16 = 53;
/// Port of the name-checking proxy on the gateway address, in the namespace.
pub const PROXY_PORT: u16 = 15001;

/// The host's table: the guest never reaches the host (every address of
/// it: input from any sandbox veth is dropped), sandboxes never reach each
/// other, and what leaves for elsewhere is masqueraded. It names devices
/// by prefix, so it is the same for every slot and every range and
/// applying it again changes nothing.
pub fn host_script() -> String {
    let p = HOST_IFACE_PREFIX;
    format!(
        "table inet {HOST_TABLE} {{}}\n\
         delete table inet {HOST_TABLE}\n\
         table inet {HOST_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tiifname \"{p}*\" counter drop comment \"a sandbox never reaches the host\"\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tiifname \"{p}*\" oifname \"{p}*\" counter drop comment \"nor another sandbox\"\n\
         \t\tiifname \"{p}*\" ip daddr 169.254.0.0/16 counter drop comment \"nor link-local or metadata addresses\"\n\
         \t\tiifname \"{p}*\" meta nfproto ipv6 counter drop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tiifname \"{p}*\" oifname != \"{p}*\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

fn set(out: &mut String, name: &str, flags: &str, elements: impl IntoIterator<Item = Ipv4Net>) {
    let elements: Vec<String> = elements.into_iter().map(|n| n.to_string()).collect();
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype ipv4_addr; flags {flags};");
    if !elements.is_empty() {
        // auto-merge lets overlapping blocks (10.0.0.0/8 and 10.1.0.0/16) in one list.
        let _ = writeln!(
            out,
            "\t\tauto-merge;\n\t\telements = {{ {} }}",
            elements.join(", ")
        );
    }
    out.push_str("\t}\n");
}

/// The namespace's table for `policy`. Order of the forward chain is the
/// policy's precedence: always-blocked, then `allow_out` (addresses and
/// resolved names), then `deny_out`, then the default. TCP to ports 80 and
/// 443 goes to the name-checking proxy when the policy has domain rules
/// (it judges by SNI/Host with [`NetworkPolicy::decide`]); DNS from the
/// guest, to any server, goes to warren's resolver.
pub fn sandbox_script(policy: &NetworkPolicy, range: &HostRange) -> String {
    let tap = device::TAP;
    let veth = device::VETH;
    let gw = guest::GATEWAY;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "table inet {SANDBOX_TABLE} {{}}\ndelete table inet {SANDBOX_TABLE}\ntable inet {SANDBOX_TABLE} {{"
    );
    set(&mut out, "blocked", "interval", always_blocked(range));
    set(
        &mut out,
        "allow_net",
        "interval",
        policy.nets(RuleList::Allow),
    );
    set(
        &mut out,
        "deny_net",
        "interval",
        policy.nets(RuleList::Deny),
    );
    set(&mut out, RESOLVED_ALLOW_SET, "timeout", []);
    set(&mut out, RESOLVED_DENY_SET, "timeout", []);
    let proxy = if policy.has_domain_rules() {
        format!(
            "\t\tiifname \"{tap}\" tcp dport {{ 80, 443 }} ip daddr != @blocked redirect to :{PROXY_PORT}\n"
        )
    } else {
        String::new()
    };
    let default = if policy.internet {
        "accept"
    } else {
        "counter drop"
    };
    let _ = write!(
        out,
        "\tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"{tap}\" meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {gw}:{RESOLVER_PORT}\n\
         {proxy}\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tiifname \"lo\" accept\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{tap}\" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport {RESOLVER_PORT} accept\n\
         \t\tiifname \"{tap}\" ip daddr {gw} tcp dport {PROXY_PORT} accept\n\
         \t\tiifname \"{tap}\" ip daddr {gw} icmp type echo-request accept\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tmeta nfproto ipv6 drop\n\
         \t\tct state established,related accept\n\
         \t\tiifname != \"{tap}\" counter drop comment \"nothing from outside opens a connection to the guest\"\n\
         \t\toifname != \"{veth}\" counter drop\n\
         \t\tip daddr @blocked counter drop comment \"the host, link-local, other sandboxes\"\n\
         \t\tip daddr @allow_net accept\n\
         \t\tip daddr @{RESOLVED_ALLOW_SET} accept\n\
         \t\tip daddr @deny_net counter drop\n\
         \t\tip daddr @{RESOLVED_DENY_SET} counter drop\n\
         \t\t{default} comment \"the default: internet\"\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{veth}\" ip daddr @blocked counter drop comment \"the proxy cannot reach what the guest cannot\"\n\
         \t\toifname \"{veth}\" meta nfproto ipv6 drop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{veth}\" masquerade\n\
         \t}}\n\
         }}\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        NetworkPolicy::parse(internet, &v(allow), &v(deny)).unwrap()
    }

    #[test]
    fn the_script_orders_rules_by_precedence() {
        let s = sandbox_script(
            &policy(false, &["198.51.100.0/24", "pypi.org"], &["203.0.113.9"]),
            &HostRange::default(),
        );
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in\n{s}"));
        assert!(at("ip daddr @blocked counter drop") < at("ip daddr @allow_net accept"));
        assert!(at("ip daddr @allow_net accept") < at("ip daddr @deny_net"));
        assert!(at("@resolved_allow accept") < at("@resolved_deny counter drop"));
        assert!(at("@resolved_deny counter drop") < at("counter drop comment \"the default"));
        assert!(s.contains("elements = { 198.51.100.0/24 }"));
        assert!(s.contains("elements = { 203.0.113.9/32 }"));
        assert!(s.contains("10.231.0.0/16"), "the sandbox range is blocked");
        assert!(
            s.contains("redirect to :15001"),
            "domain rules go through the proxy"
        );
        let plain = sandbox_script(&NetworkPolicy::default(), &HostRange::default());
        assert!(!plain.contains("redirect"));
        assert!(plain.contains("accept comment \"the default"));
    }
}
