//! `warren cp`: files between the host and a sandbox, streamed both ways.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warren_client::{Client, FileKind, UploadOptions};

use crate::exit;
use crate::output::{JsonFlag, print_json};
use crate::remote::UsageError;

/// Options of `warren cp`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  warren cp ./data.csv sb-k3xq7m2vnd8a:/tmp/data.csv
  warren cp sb-k3xq7m2vnd8a:/var/log/app.log .
  tar c src | warren cp - sb-k3xq7m2vnd8a:/tmp/src.tar
  warren cp sb-k3xq7m2vnd8a:/etc/os-release - | head -1")]
pub struct CpArgs {
    /// Source: a host path, `-` for stdin, or ID:/absolute/path.
    pub src: String,
    /// Destination: a host path, `-` for stdout, or ID:/absolute/path. An
    /// existing directory (or a path ending in `/`) receives the file
    /// under the source's name.
    pub dst: String,
    /// Create missing parent directories in the sandbox.
    #[arg(long, short = 'p')]
    pub parents: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A host file or directory.
    Host(PathBuf),
    /// stdin or stdout (`-`).
    Stdio,
    /// A path in a sandbox.
    Sandbox {
        /// Sandbox id.
        id: String,
        /// Absolute path inside it.
        path: String,
    },
}

/// Parses `ID:/abs/path`, `-`, or a host path. A host path with a colon
/// in its first component can be written `./name:with:colons`.
pub fn parse_location(text: &str) -> Result<Location, UsageError> {
    if text == "-" {
        return Ok(Location::Stdio);
    }
    if let Some((id, path)) = text.split_once(':')
        && !id.is_empty()
        && !id.contains('/')
        && id != "."
        && id != ".."
    {
        if !path.starts_with('/') {
            return Err(UsageError(format!(
                "{text:?}: paths in a sandbox must be absolute, as in {id}:/{path} (write ./{text} for a host file)"
            )));
        }
        return Ok(Location::Sandbox {
            id: id.to_string(),
            path: path.to_string(),
        });
    }
    if text.is_empty() {
        return Err(UsageError("empty path".into()));
    }
    Ok(Location::Host(PathBuf::from(text)))
}

fn basename(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
}

fn progress_bar(quiet: bool, total: Option<u64>, label: String) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("valid template"),
            ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(label);
    bar
}

/// `warren cp`.
pub async fn cp(client: &Client, args: CpArgs) -> Result<i32> {
    let src = parse_location(&args.src)?;
    let dst = parse_location(&args.dst)?;
    match (src, dst) {
        (Location::Sandbox { .. }, Location::Sandbox { .. }) => Err(UsageError(
            "both sides are in sandboxes; copy through the host (warren cp ID:/a - | warren cp - ID2:/b)".into(),
        )
        .into()),
        (Location::Sandbox { id, path }, local) => download(client, &args, &id, &path, local).await,
        (local, Location::Sandbox { id, path }) => upload(client, &args, local, &id, &path).await,
        _ => Err(UsageError(
            "one side must be in a sandbox, written ID:/absolute/path".into(),
        )
        .into()),
    }
}

async fn upload(
    client: &Client,
    args: &CpArgs,
    src: Location,
    id: &str,
    path: &str,
) -> Result<i32> {
    let (reader, size, mode, name): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, _, _, _) =
        match &src {
            Location::Host(host) => {
                let meta = std::fs::metadata(host)
                    .with_context(|| format!("reading {}", host.display()))?;
                if meta.is_dir() {
                    bail!(UsageError(format!(
                        "{} is a directory; copy directories as a tar stream: tar c -C {} . | warren exec {id} -- tar x -C {path}",
                        host.display(),
                        host.display()
                    )));
                }
                let file = tokio::fs::File::open(host)
                    .await
                    .with_context(|| format!("opening {}", host.display()))?;
                (
                    Box::new(file),
                    meta.is_file().then_some(meta.len()),
                    Some(meta.permissions().mode() & 0o777),
                    host.file_name().map(|n| n.to_string_lossy().into_owned()),
                )
            }
            Location::Stdio => (Box::new(tokio::io::stdin()), None, None, None),
            Location::Sandbox { .. } => unreachable!("checked by the caller"),
        };

    // An existing directory (or a trailing slash) receives the file under
    // the source's name.
    let mut target = path.to_string();
    let is_dir = if path.ends_with('/') {
        true
    } else {
        match client.stat(id, path).await {
            Ok(info) => info.kind == FileKind::Dir,
            Err(error) if error.status() == Some(404) && error.code() == Some("not_found") => false,
            Err(error) => {
                return Err(error).with_context(|| format!("checking {id}:{path}"));
            }
        }
    };
    if is_dir {
        let Some(name) = name else {
            bail!(UsageError(format!(
                "{id}:{path} is a directory; name the file to write, e.g. {id}:{}/data",
                path.trim_end_matches('/')
            )));
        };
        target = format!("{}/{name}", path.trim_end_matches('/'));
    }

    let bar = progress_bar(args.quiet, size, format!("{id}:{target}"));
    let options = UploadOptions {
        create_parents: args.parents,
        user: None,
        mode,
    };
    let progress_bar = bar.clone();
    let result = client
        .upload(id, &target, reader, &options, move |sent| {
            progress_bar.set_position(sent)
        })
        .await;
    bar.finish_and_clear();
    let info = result.with_context(|| format!("copying to {id}:{target}"))?;
    if args.out.json {
        print_json(&info)?;
    }
    Ok(exit::OK)
}

async fn download(
    client: &Client,
    args: &CpArgs,
    id: &str,
    path: &str,
    dst: Location,
) -> Result<i32> {
    match dst {
        Location::Stdio => {
            if args.out.json {
                bail!(UsageError(
                    "--json prints to stdout, which is the destination here; drop one of them"
                        .into()
                ));
            }
            let mut stdout = tokio::io::stdout();
            let bar = progress_bar(args.quiet, None, format!("{id}:{path}"));
            let result = client
                .download(id, path, &mut stdout, |done, total| {
                    if let Some(total) = total {
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                })
                .await;
            bar.finish_and_clear();
            match result {
                Ok(_) => Ok(exit::OK),
                Err(warren_client::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    // The reader (e.g. `head`) has what it wanted.
                    Ok(exit::OK)
                }
                Err(error) => Err(error).with_context(|| format!("copying {id}:{path}")),
            }
        }
        Location::Host(host) => {
            let mut target = host.clone();
            if host.is_dir() || args.dst.ends_with('/') {
                let Some(name) = basename(path) else {
                    bail!(UsageError(format!("{id}:{path} names no file")));
                };
                target = host.join(name);
            }
            let bytes = download_to_file(client, args, id, path, &target).await?;
            if args.out.json {
                let info = client
                    .stat(id, path)
                    .await
                    .with_context(|| format!("checking {id}:{path}"))?;
                print_json(&serde_json::json!({
                    "source": info,
                    "destination": target,
                    "bytes": bytes,
                }))?;
            }
            Ok(exit::OK)
        }
        Location::Sandbox { .. } => unreachable!("checked by the caller"),
    }
}

/// Downloads into a temporary file next to `target` and renames it into
/// place when complete, so a failed copy never leaves a truncated file.
async fn download_to_file(
    client: &Client,
    args: &CpArgs,
    id: &str,
    path: &str,
    target: &Path,
) -> Result<u64> {
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let temp = dir.join(format!(".{name}.warren-{}.part", std::process::id()));
    let mut file = tokio::fs::File::create(&temp)
        .await
        .with_context(|| format!("creating {}", temp.display()))?;
    let bar = progress_bar(args.quiet, None, format!("{id}:{path}"));
    let result = client
        .download(id, path, &mut file, |done, total| {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let outcome = match result {
        Ok(bytes) => file
            .sync_all()
            .await
            .and_then(|()| std::fs::rename(&temp, target))
            .map(|()| bytes)
            .with_context(|| format!("writing {}", target.display())),
        Err(error) => Err(anyhow::Error::new(error).context(format!("copying {id}:{path}"))),
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(parse_location("-").unwrap(), Location::Stdio);
        assert_eq!(
            parse_location("sb-abc:/tmp/x").unwrap(),
            Location::Sandbox {
                id: "sb-abc".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            parse_location("./a:b").unwrap(),
            Location::Host("./a:b".into())
        );
        assert_eq!(
            parse_location("/abs/a:b").unwrap(),
            Location::Host("/abs/a:b".into())
        );
        assert_eq!(
            parse_location("data.csv").unwrap(),
            Location::Host("data.csv".into())
        );
        let error = parse_location("sb-abc:tmp/x").unwrap_err().to_string();
        assert!(error.contains("sb-abc:/tmp/x"), "{error}");
        assert!(parse_location("").is_err());
    }

    #[test]
    fn basenames() {
        assert_eq!(basename("/tmp/x.bin"), Some("x.bin"));
        assert_eq!(basename("/tmp/dir/"), Some("dir"));
        assert_eq!(basename("/"), None);
    }
}
