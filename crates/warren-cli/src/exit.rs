//! Exit statuses scripts can rely on, and how errors are reported.

/// Success.
pub const OK: i32 = 0;
/// An error none of the other statuses describes.
pub const GENERIC: i32 = 1;
/// Bad flags or arguments (clap uses 2 as well).
pub const USAGE: i32 = 2;
/// No such sandbox, template, key or file (HTTP 404).
pub const NOT_FOUND: i32 = 3;
/// The sandbox is not in a state that allows it (HTTP 409).
pub const CONFLICT: i32 = 4;
/// Missing, wrong or revoked API key (HTTP 401).
pub const AUTH: i32 = 5;
/// A limit or the host's capacity is reached (HTTP 429, 503, and 507:
/// the host's disk is full).
pub const LIMIT: i32 = 6;
/// The service does not implement it (HTTP 501).
pub const NOT_IMPLEMENTED: i32 = 7;
/// No service could be reached or found.
pub const UNREACHABLE: i32 = 8;
/// warren could not run the command (`exec`, `shell`, `run`).
pub use crate::run::EXIT_WARREN_FAILED as WARREN_FAILED;

/// The table printed by `warren --help`.
pub const HELP: &str = "\
Exit status:
  0    success
  1    error not covered below (e.g. a refused value such as --memory 0)
  2    usage error (unknown flag, missing argument)
  3    not found: no such sandbox, template, key or file (HTTP 404)
  4    conflict: the sandbox's state does not allow it, e.g. it is stopped (HTTP 409)
  5    authentication failed: missing, wrong or revoked API key (HTTP 401)
  6    limit or capacity: too many sandboxes, or the host is out of memory or
       disk space (HTTP 429/503/507)
  7    not implemented by this service (HTTP 501)
  8    no warren service reachable (not running, or a wrong WARREN_URL)
  125  warren could not run the command (exec, shell, run)
  exec, shell and run otherwise exit with the command's own status:
       124 timed out, 126 cannot execute, 127 command not found, 128+N killed by signal N

Finding the service: WARREN_URL and WARREN_API_KEY; else url and api_key in
~/.config/warren/config.toml; else the local `warren up` (service.json and
admin.key in $WARREN_HOME, default /var/lib/warren for root).";

/// The exit status for a client error.
pub fn for_client_error(error: &warren_client::Error) -> i32 {
    match error {
        warren_client::Error::Api(api) => match api.status {
            401 | 403 => AUTH,
            404 => NOT_FOUND,
            409 => CONFLICT,
            429 | 503 | 507 => LIMIT,
            501 => NOT_IMPLEMENTED,
            _ => GENERIC,
        },
        warren_client::Error::Unreachable { .. } | warren_client::Error::NotConfigured(_) => {
            UNREACHABLE
        }
        _ => GENERIC,
    }
}

/// The exit status for an error of a command: the client error's if there
/// is one in the chain, else `default`.
pub fn for_error(error: &anyhow::Error, default: i32) -> i32 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<warren_client::Error>())
        .map_or(default, for_client_error)
}

/// Prints `warren: <what failed>`, each cause once on its own
/// `  caused by:` line, and, when there is one, the hint on its own line, to
/// stderr.
pub fn report(error: &anyhow::Error) {
    eprint!("{}", render(error.as_ref(), "warren: ", "\n"));
}

/// [`report`] for an error that is not an `anyhow::Error` (the local
/// commands' library errors), its first line led by `lead` (`"warren: "`,
/// `"warren: warning: "`) and every line ended by `newline` (`"\r\n"`
/// while the terminal is raw).
pub fn report_std(error: &(dyn std::error::Error + 'static), lead: &str, newline: &str) {
    eprint!("{}", render(error, lead, newline));
}

/// The whole report [`report`] prints, each line ended by `newline`.
fn render(error: &(dyn std::error::Error + 'static), lead: &str, newline: &str) -> String {
    let (parts, hint) = describe_chain(error);
    let mut text = String::new();
    for (i, part) in parts.iter().enumerate() {
        text.push_str(if i == 0 { lead } else { "  caused by: " });
        text.push_str(part);
        text.push_str(newline);
    }
    if let Some(hint) = hint {
        text.push_str("hint: ");
        text.push_str(&hint);
        text.push_str(newline);
    }
    text
}

/// The message (context and causes, one line each) and the hint of an
/// error.
#[cfg(test)]
fn describe(error: &anyhow::Error) -> (String, Option<String>) {
    let (parts, hint) = describe_chain(error.as_ref());
    (parts.join("\n  caused by: "), hint)
}

/// Each error of the chain once, outermost first, and the hint of the
/// service's answer if the chain holds one. An API error ends the chain:
/// its message already carries the service's causes.
fn describe_chain(error: &(dyn std::error::Error + 'static)) -> (Vec<String>, Option<String>) {
    let mut parts: Vec<String> = Vec::new();
    let mut hint = None;
    for cause in anyhow::Chain::new(error) {
        if let Some(api) = cause
            .downcast_ref::<warren_client::Error>()
            .and_then(warren_client::Error::api)
        {
            parts.push(api.message.clone());
            hint = api.hint.as_deref().map(cli_hint);
            break;
        }
        parts.push(cause.to_string());
    }
    (parts, hint)
}

/// The service's hints name API calls; at the command line, name the
/// command that does the same.
fn cli_hint(hint: &str) -> String {
    const SAME: [(&str, &str); 4] = [
        (
            "GET /v1/sandboxes/{id}/files/list",
            "`warren exec ID -- ls`",
        ),
        ("GET /v1/sandboxes", "`warren ls`"),
        ("GET /v1/templates", "`warren templates`"),
        ("GET /v1/snapshots", "`warren snapshots`"),
    ];
    let mut text = hint.to_string();
    for (api, command) in SAME {
        if text.ends_with(api) {
            text = format!("{}{command}", &text[..text.len() - api.len()]);
        }
    }
    if let Some(rest) = text.strip_prefix("resume it with POST /v1/sandboxes/")
        && let Some(id) = rest.strip_suffix("/resume")
    {
        text = format!("resume it with `warren resume {id}`");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn api(status: u16, code: &str) -> warren_client::Error {
        warren_client::Error::Api(warren_client::ApiError {
            status,
            code: code.into(),
            message: format!("{code} happened"),
            hint: Some("do something".into()),
        })
    }

    #[test]
    fn statuses_map_to_documented_codes() {
        for (status, code, expected) in [
            (404, "not_found", NOT_FOUND),
            (409, "conflict", CONFLICT),
            (401, "unauthorized", AUTH),
            (429, "limit_exceeded", LIMIT),
            (503, "capacity", LIMIT),
            (507, "disk_full", LIMIT),
            (501, "not_implemented", NOT_IMPLEMENTED),
            (422, "invalid", GENERIC),
            (500, "internal", GENERIC),
        ] {
            assert_eq!(for_client_error(&api(status, code)), expected, "{status}");
        }
        let unreachable = warren_client::Error::NotConfigured("x".into());
        assert_eq!(for_client_error(&unreachable), UNREACHABLE);
    }

    #[test]
    fn hints_name_commands() {
        assert_eq!(
            cli_hint("list your sandboxes with GET /v1/sandboxes"),
            "list your sandboxes with `warren ls`"
        );
        assert_eq!(
            cli_hint("list templates with GET /v1/templates"),
            "list templates with `warren templates`"
        );
        assert_eq!(
            cli_hint("resume it with POST /v1/sandboxes/sb-1/resume"),
            "resume it with `warren resume sb-1`"
        );
        assert_eq!(
            cli_hint("list snapshots with GET /v1/snapshots"),
            "list snapshots with `warren snapshots`"
        );
        assert_eq!(cli_hint("create a new sandbox"), "create a new sandbox");
    }

    #[test]
    fn context_keeps_the_code_and_the_hint_is_separate() {
        let error = Err::<(), _>(api(404, "not_found"))
            .context("getting sb-x")
            .unwrap_err();
        assert_eq!(for_error(&error, GENERIC), NOT_FOUND);
        let (message, hint) = describe(&error);
        assert_eq!(message, "getting sb-x\n  caused by: not_found happened");
        assert_eq!(hint.as_deref(), Some("do something"));
        let plain = anyhow::anyhow!("boom");
        assert_eq!(for_error(&plain, 125), 125);
        assert_eq!(describe(&plain), ("boom".to_string(), None));
    }

    #[test]
    fn the_report_prints_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("pausing sb-1 failed")]
        struct Pause(#[source] std::io::Error);
        let error =
            anyhow::Error::new(Pause(std::io::Error::other("disk full"))).context("warren pause");
        assert_eq!(
            render(error.as_ref(), "warren: ", "\n"),
            "warren: warren pause\n  caused by: pausing sb-1 failed\n  caused by: disk full\n"
        );
        let api = anyhow::Error::new(api(404, "not_found"));
        assert_eq!(
            render(api.as_ref(), "warren: ", "\r\n"),
            "warren: not_found happened\r\nhint: do something\r\n"
        );
    }
}
