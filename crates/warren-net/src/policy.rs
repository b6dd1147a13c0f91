//! Egress policy: what a sandbox may reach, as the user wrote it, checked
//! once here so that every enforcer (the namespace's nftables rules, the
//! resolver, the SNI/Host proxy) reads the same validated rules.
//!
//! Precedence, as in E2B: an `allow_out` match wins over a `deny_out`
//! match, and both win over the default (`internet`). So
//! `deny_out: ["0.0.0.0/0"], allow_out: ["pypi.org"]` reaches pypi.org and
//! nothing else, and `internet: false` is the same as denying everything:
//! `allow_out` still opens what it names. What is always blocked (the host,
//! link-local and metadata addresses, other sandboxes) is not part of a
//! policy at all: see [`crate::layout::always_blocked`].

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The most rules one list may hold: enough for real allow lists, small
/// enough that a rule update stays one quick nftables transaction.
pub const MAX_RULES: usize = 512;

/// The longest domain name DNS allows (RFC 1035), without the final dot.
const MAX_DOMAIN_LEN: usize = 253;

/// A sandbox's egress policy, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// The default for destinations no rule names: reachable (`true`) or not.
    pub internet: bool,
    /// Destinations reachable whatever `deny_out` and `internet` say.
    pub allow_out: Vec<EgressRule>,
    /// Destinations blocked unless `allow_out` names them.
    pub deny_out: Vec<EgressRule>,
}

impl Default for NetworkPolicy {
    /// Internet on, no rules: what a sandbox gets when its creator says nothing.
    fn default() -> Self {
        NetworkPolicy {
            internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

/// Why a policy was refused; each says which entry and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// One entry of `allow_out` or `deny_out` is not a rule.
    #[error("{list}[{index}]")]
    Rule {
        /// `allow_out` or `deny_out`.
        list: &'static str,
        /// The entry's position in its list.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: RuleError,
    },
    /// A list is longer than [`MAX_RULES`].
    #[error(
        "{list} has {len} rules; at most {MAX_RULES} are allowed (use a CIDR or a *.domain pattern to cover many)"
    )]
    TooManyRules {
        /// `allow_out` or `deny_out`.
        list: &'static str,
        /// How many it had.
        len: usize,
    },
}

impl NetworkPolicy {
    /// Parses and validates the rule strings of a create or update request.
    pub fn parse(
        internet: bool,
        allow_out: &[String],
        deny_out: &[String],
    ) -> Result<Self, PolicyError> {
        Ok(NetworkPolicy {
            internet,
            allow_out: parse_list("allow_out", allow_out)?,
            deny_out: parse_list("deny_out", deny_out)?,
        })
    }

    /// Whether any rule names a domain: only then must TLS and HTTP
    /// connections pass the name-checking proxy.
    pub fn has_domain_rules(&self) -> bool {
        self.allow_out
            .iter()
            .chain(&self.deny_out)
            .any(|r| matches!(r, EgressRule::Domain(_)))
    }

    /// The verdict for a connection to `ip` whose name (TLS SNI or HTTP
    /// Host) is `name`, when the name is known. Connections without a name
    /// are judged by the kernel rules, which also hold the addresses the
    /// sandbox's resolver handed out for named rules; a named connection
    /// is judged by its name and explicit address rules only, so a denied
    /// name behind a shared CDN address stays denied and an allowed one
    /// works there.
    pub fn decide(&self, ip: Ipv4Addr, name: Option<&str>) -> Verdict {
        let name = name.map(normalize_name);
        let matches = |rules: &[EgressRule]| {
            rules.iter().any(|r| match r {
                EgressRule::Net(net) => net.contains(&ip),
                EgressRule::Domain(d) => name.as_deref().is_some_and(|n| d.matches(n)),
            })
        };
        if matches(&self.allow_out) {
            Verdict::Allow
        } else if matches(&self.deny_out) {
            Verdict::Deny
        } else if self.internet {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// The verdict for a connection to `ip` with no name, where `resolved`
    /// is what the sandbox's resolver learned about `ip` (the verdict of a
    /// named rule for a name that resolved to it): the same order as the
    /// kernel's forward chain.
    pub fn decide_unnamed(&self, ip: Ipv4Addr, resolved: Option<Verdict>) -> Verdict {
        let in_nets = |list| self.nets(list).any(|n| n.contains(&ip));
        if in_nets(RuleList::Allow) || resolved == Some(Verdict::Allow) {
            Verdict::Allow
        } else if in_nets(RuleList::Deny) || resolved == Some(Verdict::Deny) {
            Verdict::Deny
        } else if self.internet {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// Which named rule a resolved `name` falls under, so the resolver can
    /// put the addresses it returns into the kernel's allow or deny set.
    /// `None` when no domain rule names it (its addresses then follow the
    /// address rules and the default).
    pub fn domain_verdict(&self, name: &str) -> Option<Verdict> {
        let name = normalize_name(name);
        let named = |rules: &[EgressRule]| {
            rules
                .iter()
                .any(|r| matches!(r, EgressRule::Domain(d) if d.matches(&name)))
        };
        if named(&self.allow_out) {
            Some(Verdict::Allow)
        } else if named(&self.deny_out) {
            Some(Verdict::Deny)
        } else {
            None
        }
    }

    /// The address rules of one list, for the kernel's interval sets.
    pub fn nets(&self, list: RuleList) -> impl Iterator<Item = Ipv4Net> + '_ {
        let rules = match list {
            RuleList::Allow => &self.allow_out,
            RuleList::Deny => &self.deny_out,
        };
        rules.iter().filter_map(|r| match r {
            EgressRule::Net(n) => Some(*n),
            EgressRule::Domain(_) => None,
        })
    }
}

/// Which of a policy's two lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleList {
    /// `allow_out`.
    Allow,
    /// `deny_out`.
    Deny,
}

/// What a policy says about one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The connection may go out.
    Allow,
    /// The connection is refused.
    Deny,
}

fn parse_list(list: &'static str, rules: &[String]) -> Result<Vec<EgressRule>, PolicyError> {
    if rules.len() > MAX_RULES {
        return Err(PolicyError::TooManyRules {
            list,
            len: rules.len(),
        });
    }
    rules
        .iter()
        .enumerate()
        .map(|(index, r)| {
            r.parse().map_err(|source| PolicyError::Rule {
                list,
                index,
                source,
            })
        })
        .collect()
}

/// One entry of `allow_out` or `deny_out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EgressRule {
    /// An IPv4 address (as a /32) or CIDR block.
    Net(Ipv4Net),
    /// A domain name or `*.suffix` pattern.
    Domain(DomainPattern),
}

/// Why one rule string is not a rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// Empty or blank.
    #[error(
        "the rule is empty; give an IPv4 address, a CIDR such as 10.0.0.0/8, or a domain such as pypi.org"
    )]
    Empty,
    /// Looks like an address or CIDR but is not a valid IPv4 one.
    #[error("{0:?} is not a valid IPv4 address or CIDR (such as 203.0.113.7 or 10.0.0.0/8)")]
    BadNet(String),
    /// An IPv6 address or block: sandboxes have IPv4 only.
    #[error("{0:?} is IPv6; sandboxes have IPv4 networking only, so IPv6 rules would never match")]
    Ipv6(String),
    /// Not a valid domain name or pattern.
    #[error(
        "{rule:?} is not a domain name or pattern: {why}; write pypi.org, or *.github.com for its subdomains"
    )]
    BadDomain {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl FromStr for EgressRule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RuleError::Empty);
        }
        if s.contains(':') {
            return Err(RuleError::Ipv6(s.to_owned()));
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let looks_numeric = addr.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if looks_numeric || prefix.is_some() {
            let ip: Ipv4Addr = addr.parse().map_err(|_| RuleError::BadNet(s.to_owned()))?;
            let len = match prefix {
                None => 32,
                Some(p) => Some(p)
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u8>().ok())
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| RuleError::BadNet(s.to_owned()))?,
            };
            let net = Ipv4Net::new(ip, len).map_err(|_| RuleError::BadNet(s.to_owned()))?;
            // Host bits set (10.1.2.3/8) mean the block that holds them.
            return Ok(EgressRule::Net(net.trunc()));
        }
        DomainPattern::parse(s).map(EgressRule::Domain)
    }
}

impl TryFrom<String> for EgressRule {
    type Error = RuleError;
    fn try_from(s: String) -> Result<Self, RuleError> {
        s.parse()
    }
}

impl From<EgressRule> for String {
    fn from(r: EgressRule) -> String {
        r.to_string()
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressRule::Net(n) if n.prefix_len() == 32 => write!(f, "{}", n.addr()),
            EgressRule::Net(n) => write!(f, "{n}"),
            EgressRule::Domain(d) => write!(f, "{d}"),
        }
    }
}

/// A domain name (`pypi.org`, matching that name only) or a wildcard
/// (`*.github.com`, matching every name under github.com but not
/// github.com itself, as in TLS certificates and E2B). Lower case, no
/// final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// The name, or for a wildcard the suffix after `*.`.
    name: String,
    /// Whether this is `*.name`.
    wildcard: bool,
}

impl DomainPattern {
    fn parse(s: &str) -> Result<Self, RuleError> {
        let bad = |why| RuleError::BadDomain {
            rule: s.to_owned(),
            why,
        };
        let lower = normalize_name(s);
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        if name.contains('*') {
            return Err(bad("a * may only stand first, as *.example.com"));
        }
        if name.is_empty() {
            return Err(bad("there is no name after *."));
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(bad("it is longer than 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad(
                    "it has an empty label (two dots in a row, or a leading dot)",
                ));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "it has a character other than letters, digits, '-' and '_' (write internationalised names in their xn-- form)",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label starts or ends with '-'"));
            }
        }
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad("a name of digits only is an address; write it as one"));
        }
        Ok(DomainPattern { name, wildcard })
    }

    /// Whether `name` (already lower case, no final dot) falls under this pattern.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.name.len() + 1
                && name.ends_with(self.name.as_str())
                && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
        } else {
            name == self.name
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Lower case without a final dot: the form names are compared in (DNS
/// names are case-insensitive, and `pypi.org.` is `pypi.org`).
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        NetworkPolicy::parse(internet, &v(allow), &v(deny)).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_to_addresses_blocks_and_domains() {
        assert_eq!(
            "203.0.113.7".parse::<EgressRule>().unwrap().to_string(),
            "203.0.113.7"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<EgressRule>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            " PyPI.org. ".parse::<EgressRule>().unwrap().to_string(),
            "pypi.org"
        );
        assert_eq!(
            "*.GitHub.com".parse::<EgressRule>().unwrap().to_string(),
            "*.github.com"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<EgressRule>().unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |s: &str| s.parse::<EgressRule>().unwrap_err();
        assert_eq!(err(""), RuleError::Empty);
        assert!(matches!(err("10.0.0.0/33"), RuleError::BadNet(_)));
        assert!(matches!(err("10.0.0/8"), RuleError::BadNet(_)));
        assert!(matches!(err("300.1.1.1"), RuleError::BadNet(_)));
        assert!(matches!(err("10.0.0.0/+8"), RuleError::BadNet(_)));
        assert!(matches!(err("2001:db8::/32"), RuleError::Ipv6(_)));
        for bad in [
            "a..b", ".a.b", "*", "*.", "a.*.b", "x*.b", "-a.b", "a b", "ü.de", "*.*.a",
        ] {
            assert!(
                matches!(err(bad), RuleError::BadDomain { .. }),
                "{bad}: {:?}",
                err(bad)
            );
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(err(&long).to_string().contains("63"), "{}", err(&long));
        let e = NetworkPolicy::parse(true, &["ok.com".into(), "bad..com".into()], &[]).unwrap_err();
        assert!(matches!(
            e,
            PolicyError::Rule {
                list: "allow_out",
                index: 1,
                ..
            }
        ));
        assert_eq!(e.to_string(), "allow_out[1]");
        let many = vec!["1.1.1.1".to_string(); MAX_RULES + 1];
        assert!(matches!(
            NetworkPolicy::parse(true, &[], &many).unwrap_err(),
            PolicyError::TooManyRules {
                list: "deny_out",
                ..
            }
        ));
    }

    #[test]
    fn a_wildcard_covers_subdomains_only() {
        let EgressRule::Domain(d) = "*.github.com".parse().unwrap() else {
            panic!()
        };
        assert!(d.matches("api.github.com"));
        assert!(d.matches("a.b.github.com"));
        assert!(!d.matches("github.com"));
        assert!(!d.matches("evilgithub.com"));
        assert!(!d.matches("github.com.evil"));
    }

    #[test]
    fn allow_beats_deny_beats_the_default() {
        let p = policy(true, &["pypi.org"], &["0.0.0.0/0"]);
        assert_eq!(
            p.decide(ip("198.51.100.9"), Some("PyPI.org")),
            Verdict::Allow
        );
        assert_eq!(
            p.decide(ip("198.51.100.9"), Some("evil.com")),
            Verdict::Deny
        );
        assert_eq!(p.decide(ip("198.51.100.9"), None), Verdict::Deny);

        let p = policy(true, &["198.51.100.0/24"], &["*.example.com"]);
        assert_eq!(
            p.decide(ip("198.51.100.9"), Some("a.example.com")),
            Verdict::Allow
        );
        assert_eq!(
            p.decide(ip("203.0.113.1"), Some("a.example.com")),
            Verdict::Deny
        );
        assert_eq!(
            p.decide(ip("203.0.113.1"), Some("example.com")),
            Verdict::Allow
        );

        let off = policy(false, &["pypi.org", "203.0.113.0/24"], &[]);
        assert_eq!(off.decide(ip("198.51.100.9"), None), Verdict::Deny);
        assert_eq!(
            off.decide(ip("198.51.100.9"), Some("pypi.org")),
            Verdict::Allow
        );
        assert_eq!(off.decide(ip("203.0.113.200"), None), Verdict::Allow);
        assert_eq!(
            NetworkPolicy::default().decide(ip("198.51.100.9"), None),
            Verdict::Allow
        );
    }

    #[test]
    fn unnamed_connections_follow_addresses_then_what_the_resolver_learned() {
        let p = policy(true, &["pypi.org", "203.0.113.0/24"], &["0.0.0.0/0"]);
        let cdn = ip("198.51.100.9");
        assert_eq!(p.decide_unnamed(cdn, None), Verdict::Deny);
        assert_eq!(p.decide_unnamed(cdn, Some(Verdict::Allow)), Verdict::Allow);
        assert_eq!(
            p.decide_unnamed(ip("203.0.113.5"), Some(Verdict::Deny)),
            Verdict::Allow
        );
        let open = policy(true, &[], &["evil.com"]);
        assert_eq!(open.decide_unnamed(cdn, Some(Verdict::Deny)), Verdict::Deny);
        assert_eq!(open.decide_unnamed(cdn, None), Verdict::Allow);
    }

    #[test]
    fn domain_verdicts_feed_the_resolver_sets() {
        let p = policy(true, &["*.pypi.org"], &["evil.com", "x.pypi.org"]);
        assert_eq!(p.domain_verdict("files.PYPI.org."), Some(Verdict::Allow));
        assert_eq!(p.domain_verdict("x.pypi.org"), Some(Verdict::Allow));
        assert_eq!(p.domain_verdict("evil.com"), Some(Verdict::Deny));
        assert_eq!(p.domain_verdict("other.com"), None);
        assert!(p.has_domain_rules());
        assert!(!policy(true, &["1.2.3.4"], &[]).has_domain_rules());
        assert_eq!(p.nets(RuleList::Allow).count(), 0);
    }

    #[test]
    fn policies_round_trip_as_json_strings() {
        let p = policy(false, &["pypi.org", "10.0.0.0/8"], &["*.x.com", "1.2.3.4"]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"internet":false,"allow_out":["pypi.org","10.0.0.0/8"],"deny_out":["*.x.com","1.2.3.4"]}"#
        );
        assert_eq!(serde_json::from_str::<NetworkPolicy>(&json).unwrap(), p);
        assert!(
            serde_json::from_str::<NetworkPolicy>(
                r#"{"internet":true,"allow_out":["a..b"],"deny_out":[]}"#
            )
            .is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn any_parsed_rule_reparses_to_itself(s in "[a-z0-9.*/-]{0,40}") {
            if let Ok(rule) = s.parse::<EgressRule>() {
                let again: EgressRule = rule.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again, rule);
            }
        }
    }
}
