//! `warren port` (the URL of a sandbox's port, and whether it is public)
//! and `warren port-forward` (a local TCP port joined to a sandbox's port,
//! like `kubectl port-forward`).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use warren_client::{Client, Sandbox};

use crate::output::{JsonFlag, print_json};

/// Options of `warren port`.
#[derive(Debug, clap::Args)]
pub struct PortArgs {
    /// Sandbox id.
    pub id: String,
    /// TCP port a server in the sandbox listens on (none: list the ports
    /// something listens on, with their URLs).
    pub port: Option<u16>,
    /// Make the port public first: anyone may open it, with no key or
    /// token.
    #[arg(long, conflicts_with = "private", requires = "port")]
    pub public: bool,
    /// Make the port private again (a key or the access token opens it).
    #[arg(long, requires = "port")]
    pub private: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// `warren port ID PORT`: prints the URL a browser opens the port at;
/// `warren port ID`: the ports something listens on.
pub async fn port(client: &Client, args: PortArgs) -> Result<i32> {
    let mut sandbox = client
        .get_sandbox(&args.id)
        .await
        .with_context(|| format!("getting sandbox {}", args.id))?;
    let Some(port) = args.port else {
        return list(client, &sandbox, args.out.json).await;
    };
    if port == 0 {
        bail!("0 is not a port (use 1 to 65535)");
    }
    if args.public || args.private {
        let mut ports = sandbox.public_ports.clone();
        ports.retain(|p| *p != port);
        if args.public {
            ports.push(port);
        }
        sandbox = client
            .set_public_ports(&args.id, &ports)
            .await
            .with_context(|| format!("changing the public ports of sandbox {}", args.id))?;
    }
    let url = port_url(client, &sandbox, port)?;
    let public = sandbox.public_ports.contains(&port);
    if args.out.json {
        print_json(&serde_json::json!({
            "sandbox_id": sandbox.id,
            "port": port,
            "url": url,
            "public": public,
        }))?;
    } else {
        println!("{url}");
    }
    Ok(0)
}

/// The host-form URL of a port, or what to use instead.
fn port_url(client: &Client, sandbox: &Sandbox, port: u16) -> Result<String> {
    client.port_url(sandbox, port).with_context(|| {
        format!(
            "the service does not serve ports by host name; use {}/v1/sandboxes/{}/ports/{port}/ with an API key",
            client.base_url().trim_end_matches('/'),
            sandbox.id,
        )
    })
}

/// `warren port ID`: a table of the listening ports (or the API's JSON).
async fn list(client: &Client, sandbox: &Sandbox, json: bool) -> Result<i32> {
    let listening = client
        .listening_ports(&sandbox.id)
        .await
        .with_context(|| format!("listing the ports of sandbox {}", sandbox.id))?;
    if json {
        print_json(&listening)?;
        return Ok(0);
    }
    if listening.ports.is_empty() {
        eprintln!(
            "nothing in sandbox {} listens on a TCP port (start a server on 0.0.0.0)",
            sandbox.id
        );
        return Ok(0);
    }
    let mut table = crate::output::Table::default();
    table.row(vec!["PORT".into(), "ACCESS".into(), "URL".into()]);
    for entry in &listening.ports {
        let (access, url) = if entry.loopback_only {
            (
                "-".to_string(),
                "listens on 127.0.0.1 only: unreachable (listen on 0.0.0.0)".to_string(),
            )
        } else {
            let access = if entry.public { "public" } else { "token" };
            (access.to_string(), port_url(client, sandbox, entry.port)?)
        };
        table.row(vec![entry.port.to_string(), access, url]);
    }
    table.print();
    Ok(0)
}

/// Options of `warren port-forward`.
#[derive(Debug, clap::Args)]
pub struct PortForwardArgs {
    /// Sandbox id.
    pub id: String,
    /// `PORT` (the same local port) or `PORT:LOCAL` (LOCAL 0: any free
    /// port, printed).
    #[arg(value_name = "PORT[:LOCAL]")]
    pub ports: String,
    /// Local address to listen on (default loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
}

/// `PORT` or `PORT:LOCAL` as (sandbox port, local port).
fn parse_ports(text: &str) -> Result<(u16, u16)> {
    let bad = || {
        anyhow::anyhow!(
            "{text:?} is not PORT or PORT:LOCAL (sandbox port 1 to 65535, local port 0 to 65535)"
        )
    };
    let (remote, local) = match text.split_once(':') {
        Some((remote, local)) => (remote, local),
        None => (text, text),
    };
    let remote: u16 = remote.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let local: u16 = local.parse().map_err(|_| bad())?;
    Ok((remote, local))
}

/// `warren port-forward ID PORT[:LOCAL]`: every connection to the local
/// port is joined to the sandbox's port through the service, until Ctrl-C.
pub async fn port_forward(client: &Client, args: PortForwardArgs) -> Result<i32> {
    let (remote, local) = parse_ports(&args.ports)?;
    // Fail now, not at the first connection, for a wrong id or a sandbox
    // that is not running.
    client
        .get_sandbox(&args.id)
        .await
        .with_context(|| format!("getting sandbox {}", args.id))?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.address, local))
        .await
        .with_context(|| {
            format!(
                "listening on {}:{local} (is the port in use? pick another with {remote}:LOCAL)",
                args.address
            )
        })?;
    let bound = listener.local_addr()?;
    eprintln!(
        "Forwarding {bound} -> {}:{remote} (Ctrl-C to stop)",
        args.id
    );
    // The bound address on stdout for scripts (LOCAL 0 picks one).
    println!("{bound}");
    loop {
        let (connection, peer) = tokio::select! {
            accepted = listener.accept() => accepted.context("accepting a local connection")?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let client = client.clone();
        let id = args.id.clone();
        tokio::spawn(async move {
            let joined = match client.tunnel(&id, remote).await {
                Ok(tunnel) => tunnel.join(connection).await.map(|_| ()),
                Err(e) => Err(e),
            };
            // The local client only sees its connection close; say why here.
            if let Err(e) = joined {
                crate::exit::report_std(&e, &format!("warren: connection from {peer}: "), "\n");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_parse_and_refuse_what_is_not_a_port() {
        assert_eq!(parse_ports("8000").unwrap(), (8000, 8000));
        assert_eq!(parse_ports("8000:9000").unwrap(), (8000, 9000));
        assert_eq!(parse_ports("8000:0").unwrap(), (8000, 0));
        for bad in ["", "0", "0:80", "x", "80:x", "70000", "80:70000", ":80"] {
            assert!(parse_ports(bad).is_err(), "{bad:?}");
        }
    }
}
