//! The host form of a sandbox port: `{port}-{id}.{domain}`, the name under
//! which an app that must sit at `/` is served from warren's own listener,
//! and the parts of a request (query, cookie) that carry warren's
//! credentials and must not reach that app.
//!
//! Written by hand: the grammar is one label in front of a configured
//! domain, smaller than any URL or cookie crate's surface, and every input
//! here is untrusted (the `Host` header and query of any client).

use std::fmt;
use std::str::FromStr;

/// The query parameter and cookie a browser presents a sandbox's access
/// token in (the header is `X-Warren-Access-Token`).
pub const ACCESS_TOKEN_PARAM: &str = "warren_token";

/// The query parameter an API key may be sent in (for WebSockets).
pub const API_KEY_PARAM: &str = "api_key";

/// The domain under which sandbox ports are served by host name, with the
/// port clients reach warren's listener on when it is not the scheme's
/// default (`localhost:7700`, or `sandboxes.example.com` behind a proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDomain {
    name: String,
    port: Option<u16>,
}

/// Why a `--domain` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a domain such as localhost:7700 or sandboxes.example.com (letters, digits, '-' and '.', an optional :PORT)"
)]
pub struct BadDomain(pub String);

impl FromStr for PortDomain {
    type Err = BadDomain;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadDomain(text.to_owned());
        let (name, port) = match text.rsplit_once(':') {
            Some((name, port)) => (
                name,
                Some(
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(bad)?,
                ),
            ),
            None => (text, None),
        };
        let labels_ok = !name.is_empty()
            && name.len() <= 200
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return Err(bad());
        }
        Ok(PortDomain {
            name: name.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for PortDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A request's host that names a sandbox port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHost {
    /// The TCP port in the sandbox.
    pub port: u16,
    /// The sandbox id as written (checked against the records later).
    pub sandbox_id: String,
}

impl PortDomain {
    /// The domain as clients reach a listener on `port`: `localhost:<port>`.
    pub fn localhost(port: u16) -> Self {
        PortDomain {
            name: "localhost".into(),
            port: Some(port),
        }
    }

    /// The sandbox port a `Host` header names, if it is
    /// `{port}-{id}.{domain}` (any port after it, any case); `None` for
    /// every other host, which the API and the console serve.
    pub fn port_host(&self, host: &str) -> Option<PortHost> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let split = name.len().checked_sub(self.name.len() + 1)? + 1;
        if split < 2 || !name.is_char_boundary(split) {
            return None;
        }
        let (label, domain) = name.split_at(split);
        if !domain.eq_ignore_ascii_case(&self.name) {
            return None;
        }
        let label = label.strip_suffix('.')?;
        let (port, id) = label.split_once('-')?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0 && !port.starts_with('0'))?;
        if id.is_empty() || id.contains('.') {
            return None;
        }
        Some(PortHost {
            port,
            sandbox_id: id.to_ascii_lowercase(),
        })
    }

    /// The host name of `port` of sandbox `id` (what `get_host` returns).
    pub fn host_of(&self, id: &str, port: u16) -> String {
        format!("{port}-{id}.{self}")
    }
}

/// A query string (without `?`) with warren's credential parameters
/// removed, as the app in the sandbox should see it; `None` if nothing is
/// left.
pub fn query_without_credentials(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !pair.is_empty() && name != ACCESS_TOKEN_PARAM && name != API_KEY_PARAM
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The value of a query parameter (percent-decoded).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

/// A `Cookie` header without cookie `name`; `None` if nothing is left.
pub fn cookie_header_without(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(text: &str) -> PortDomain {
        text.parse().unwrap()
    }

    #[test]
    fn domains_parse_with_or_without_a_port_and_refuse_the_rest() {
        assert_eq!(domain("localhost:7700").to_string(), "localhost:7700");
        assert_eq!(
            domain("Sandboxes.Example.COM").to_string(),
            "sandboxes.example.com"
        );
        for bad in [
            "",
            ":7700",
            "localhost:0",
            "localhost:99999",
            "a..b",
            "-a.com",
            "a_b.com",
            "http://x",
            "x/y",
        ] {
            assert!(bad.parse::<PortDomain>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_port_host_is_port_dash_id_under_the_domain_only() {
        let local = domain("localhost:7700");
        let want = |port, id: &str| {
            Some(PortHost {
                port,
                sandbox_id: id.into(),
            })
        };
        assert_eq!(
            local.port_host("8000-sb-abc123.localhost:7700"),
            want(8000, "sb-abc123")
        );
        // Any case, no port, a trailing dot.
        assert_eq!(
            local.port_host("8000-SB-ABC123.LocalHost"),
            want(8000, "sb-abc123")
        );
        assert_eq!(local.port_host("80-sb-x.localhost."), want(80, "sb-x"));
        for other in [
            "localhost:7700",
            "localhost",
            "127.0.0.1:7700",
            "sb-abc.localhost",
            "8000.localhost",
            "8000-.localhost",
            "0-sb-x.localhost",
            "08000-sb-x.localhost",
            "70000-sb-x.localhost",
            "8000-sb-x.evil.localhost",
            "8000-sb-x.notlocalhost",
            "8000-sb-x.localhost.evil.com",
            "xlocalhost",
            "",
            ":",
            "\u{e9}.localhost",
            "8000-sb-\u{e9}localhost",
            "ab\u{e9}ocalhost",
        ] {
            assert_eq!(local.port_host(other), None, "{other:?}");
        }
        let public = domain("sandboxes.example.com");
        assert_eq!(
            public.port_host("3000-sb-q.sandboxes.example.com"),
            want(3000, "sb-q")
        );
        assert_eq!(
            public.host_of("sb-q", 3000),
            "3000-sb-q.sandboxes.example.com"
        );
        assert_eq!(local.host_of("sb-q", 3000), "3000-sb-q.localhost:7700");
    }

    #[test]
    fn credentials_leave_the_query_and_the_cookies() {
        assert_eq!(
            query_without_credentials("a=1&warren_token=t&api_key=k&b=2"),
            Some("a=1&b=2".into())
        );
        assert_eq!(query_without_credentials("warren_token=t"), None);
        assert_eq!(
            query_without_credentials("warren_tokenx=1"),
            Some("warren_tokenx=1".into())
        );
        assert_eq!(
            query_param("a=1&warren_token=t%2Bu", ACCESS_TOKEN_PARAM),
            Some("t+u".into())
        );
        let header = "theme=dark; warren_token=wat_x; session=abc";
        assert_eq!(cookie(header, ACCESS_TOKEN_PARAM), Some("wat_x".into()));
        assert_eq!(cookie("a=b", ACCESS_TOKEN_PARAM), None);
        assert_eq!(
            cookie_header_without(header, ACCESS_TOKEN_PARAM),
            Some("theme=dark; session=abc".into())
        );
        assert_eq!(
            cookie_header_without("warren_token=x", ACCESS_TOKEN_PARAM),
            None
        );
    }
}
