//! Where the service is and which key to use: the environment, then a
//! config file, then what a local `warren up` advertises in its data
//! directory. Separate from the client so it can be tested without a
//! service, and so tools can show where their settings came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Error};

/// Environment variable with the service's base URL.
pub const URL_ENV: &str = "WARREN_URL";
/// Environment variable with the API key.
pub const API_KEY_ENV: &str = "WARREN_API_KEY";
/// Environment variable naming a config file (instead of
/// `~/.config/warren/config.toml`).
pub const CONFIG_ENV: &str = "WARREN_CONFIG";
/// File in the data directory where `warren up` advertises its URL.
pub const SERVICE_FILE: &str = "service.json";
/// File in the data directory holding the admin key (mode 0600).
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Where a setting came from (to explain failures: a refused key from the
/// environment is fixed differently from a stale local file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Given directly to [`crate::Client::new`].
    Explicit,
    /// `WARREN_URL` or `WARREN_API_KEY`.
    Env(&'static str),
    /// The config file.
    ConfigFile(PathBuf),
    /// `$WARREN_HOME/service.json` or `$WARREN_HOME/admin.key`.
    LocalFile(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Explicit => f.write_str("given by the caller"),
            Origin::Env(name) => write!(f, "${name}"),
            Origin::ConfigFile(path) | Origin::LocalFile(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A service URL and key, and where each came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, e.g. `http://127.0.0.1:7700`.
    pub url: String,
    /// API key.
    pub api_key: String,
    /// Where the URL came from.
    pub url_origin: Origin,
    /// Where the key came from.
    pub key_origin: Origin,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key itself.
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .field("url_origin", &self.url_origin)
            .field("key_origin", &self.key_origin)
            .finish()
    }
}

/// Everything discovery looks at. [`Discovery::from_env`] fills it from
/// the process; tests fill it by hand.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// `WARREN_URL`.
    pub env_url: Option<String>,
    /// `WARREN_API_KEY`.
    pub env_api_key: Option<String>,
    /// The config file to read if it exists.
    pub config_file: Option<PathBuf>,
    /// The local data directory (`$WARREN_HOME`).
    pub data_dir: PathBuf,
}

impl Discovery {
    /// Reads the environment: `WARREN_URL`, `WARREN_API_KEY`,
    /// `WARREN_CONFIG` (else `$XDG_CONFIG_HOME/warren/config.toml` or
    /// `~/.config/warren/config.toml`), and the data directory
    /// (`$WARREN_HOME`, default `/var/lib/warren` for root, else
    /// `~/.local/share/warren`, as `warren up` uses).
    pub fn from_env() -> Self {
        Self::from_env_with_data_dir(warren_api::local::default_data_dir())
    }

    /// [`Discovery::from_env`] with another data directory (a `--data-dir`
    /// flag).
    pub fn from_env_with_data_dir(data_dir: PathBuf) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let config_file = var(CONFIG_ENV).map(PathBuf::from).or_else(|| {
            let xdg = var("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute());
            xdg.or_else(|| var("HOME").map(|home| Path::new(&home).join(".config")))
                .map(|dir| dir.join("warren").join("config.toml"))
        });
        Self {
            env_url: var(URL_ENV),
            env_api_key: var(API_KEY_ENV),
            config_file,
            data_dir,
        }
    }

    /// Decides the URL and key. The local admin key is only ever paired
    /// with a local service URL, so a remote `WARREN_URL` never receives
    /// it.
    pub fn resolve(&self) -> Result<Endpoint, Error> {
        let config = match &self.config_file {
            Some(path) => read_config(path)?,
            None => None,
        };
        let service_file = self.data_dir.join(SERVICE_FILE);
        let key_file = self.data_dir.join(ADMIN_KEY_FILE);

        let (url, url_origin) = if let Some(url) = &self.env_url {
            (url.trim().to_string(), Origin::Env(URL_ENV))
        } else if let Some((url, path)) = config
            .as_ref()
            .and_then(|c| c.url.clone().map(|u| (u, c.path.clone())))
        {
            (url, Origin::ConfigFile(path))
        } else {
            match read_service_file(&service_file)? {
                Some(url) => (url, Origin::LocalFile(service_file.clone())),
                None => {
                    return Err(Error::NotConfigured(format!(
                        "no warren service found: {} does not exist (no local `warren up` is running); start the service with `warren up`, or set {URL_ENV} and {API_KEY_ENV} to use another one{}",
                        service_file.display(),
                        self.config_hint()
                    )));
                }
            }
        };

        let (api_key, key_origin) = if let Some(key) = &self.env_api_key {
            (key.trim().to_string(), Origin::Env(API_KEY_ENV))
        } else if let Some((key, path)) = config
            .as_ref()
            .and_then(|c| c.api_key.clone().map(|k| (k, c.path.clone())))
        {
            (key, Origin::ConfigFile(path))
        } else if matches!(url_origin, Origin::LocalFile(_)) || is_loopback_url(&url) {
            match std::fs::read_to_string(&key_file) {
                Ok(key) if !key.trim().is_empty() => {
                    (key.trim().to_string(), Origin::LocalFile(key_file))
                }
                Ok(_) => {
                    return Err(Error::NotConfigured(format!(
                        "the admin key file {} is empty; set {API_KEY_ENV} to a key (create one with `warren keys create NAME` using a working key)",
                        key_file.display()
                    )));
                }
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(Error::NotConfigured(format!(
                        "cannot read the admin key {}: permission denied; run as root (or the user that runs `warren up`), or set {API_KEY_ENV}",
                        key_file.display()
                    )));
                }
                Err(error) => {
                    return Err(Error::NotConfigured(format!(
                        "no API key for {url}: {API_KEY_ENV} is not set and the local admin key {} cannot be read ({error}); set {API_KEY_ENV}, or start `warren up` with this data directory",
                        key_file.display()
                    )));
                }
            }
        } else {
            return Err(Error::NotConfigured(format!(
                "no API key for {url} (from {url_origin}): set {API_KEY_ENV}{}",
                self.config_hint()
            )));
        };
        Ok(Endpoint {
            url,
            api_key,
            url_origin,
            key_origin,
        })
    }

    fn config_hint(&self) -> String {
        match &self.config_file {
            Some(path) => format!(
                " (or put url = \"...\" and api_key = \"...\" in {})",
                path.display()
            ),
            None => String::new(),
        }
    }
}

/// Whether a URL points at this machine (where the local admin key may
/// be sent).
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads `service.json`. `None` when there is none, or when the pid it
/// names is gone (a service that died without cleaning up).
fn read_service_file(path: &Path) -> Result<Option<String>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(Error::Config {
                path: path.to_path_buf(),
                source: ConfigError::Read(error),
            });
        }
    };
    #[derive(serde::Deserialize)]
    struct ServiceFile {
        url: String,
        #[serde(default)]
        pid: Option<u32>,
    }
    let parsed: ServiceFile = serde_json::from_str(&text).map_err(|error| Error::Config {
        path: path.to_path_buf(),
        source: ConfigError::ServiceFile(error),
    })?;
    if let Some(pid) = parsed.pid
        && !Path::new(&format!("/proc/{pid}")).exists()
        && Path::new("/proc/self").exists()
    {
        return Err(Error::NotConfigured(format!(
            "{} names a warren service (pid {pid}) that is not running anymore; start it again with `warren up`, or set {URL_ENV} and {API_KEY_ENV}",
            path.display()
        )));
    }
    Ok(Some(parsed.url))
}

/// The settings of a config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// Its path.
    pub path: PathBuf,
    /// `url`.
    pub url: Option<String>,
    /// `api_key`.
    pub api_key: Option<String>,
}

/// Reads a config file; `None` if it does not exist.
pub fn read_config(path: &Path) -> Result<Option<ConfigFile>, Error> {
    let failed = |source| Error::Config {
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(failed(ConfigError::Read(error))),
    };
    let values = parse_config(&text).map_err(failed)?;
    let pick = |name: &str| {
        values
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Ok(Some(ConfigFile {
        path: path.to_path_buf(),
        url: pick("url"),
        api_key: pick("api_key"),
    }))
}

/// Parses a client config (TOML): every setting is a top-level string.
/// Settings this client does not use are kept (a newer client's file still
/// works), but a table or a value of another type is an error that names
/// the key, rather than a silently ignored setting.
pub fn parse_config(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let table: toml::Table = text.parse().map_err(ConfigError::Syntax)?;
    table
        .into_iter()
        .map(|(key, value)| match value {
            toml::Value::String(value) => Ok((key, value)),
            toml::Value::Table(_) => Err(ConfigError::Table { key }),
            _ => Err(ConfigError::NotAString { key }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn discovery(dir: &Path) -> Discovery {
        Discovery {
            env_url: None,
            env_api_key: None,
            config_file: Some(dir.join("config.toml")),
            data_dir: dir.join("home"),
        }
    }

    #[test]
    fn parses_toml_strings() {
        let values = parse_config(
            "# warren\n\nurl = \"http://h:7700\" # remote\napi_key='wrn_a\\b'\n\"quoted\" = \"a\\\"b\\u00e9\\n\"\n",
        )
        .unwrap();
        assert_eq!(values["url"], "http://h:7700");
        assert_eq!(values["api_key"], "wrn_a\\b");
        assert_eq!(values["quoted"], "a\"b\u{e9}\n");
    }

    #[test]
    fn config_errors_say_what_is_wrong() {
        for text in [
            "url = http://x",
            "url = \"x",
            "url = \"x\" y",
            "url = \"a\"\nurl = \"b\"",
            "just words",
            "k = \"\\q\"",
        ] {
            let error = parse_config(text).unwrap_err();
            assert!(
                matches!(error, ConfigError::Syntax(_)),
                "{text:?}: {error:?}"
            );
            // toml's message, the source, names where the problem is.
            let source = std::error::Error::source(&error).expect("toml's error");
            assert!(source.to_string().contains("line"), "{text:?}: {source}");
        }
        assert!(matches!(
            parse_config("\n[server]\nurl = \"x\""),
            Err(ConfigError::Table { key }) if key == "server"
        ));
        assert!(matches!(
            parse_config("url = 7700"),
            Err(ConfigError::NotAString { key }) if key == "url"
        ));
    }

    #[test]
    fn environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "config.toml",
            "url = \"http://cfg:1\"\napi_key = \"wrn_cfg\"\n",
        );
        let mut d = discovery(dir.path());
        d.env_url = Some("http://env:2".into());
        d.env_api_key = Some("wrn_env".into());
        let endpoint = d.resolve().unwrap();
        assert_eq!(endpoint.url, "http://env:2");
        assert_eq!(endpoint.api_key, "wrn_env");
        assert_eq!(endpoint.key_origin, Origin::Env(API_KEY_ENV));
        assert!(!format!("{endpoint:?}").contains("wrn_env"));
    }

    #[test]
    fn config_file_comes_next() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "config.toml",
            "url = \"http://cfg:1\"\napi_key = \"wrn_cfg\"\n",
        );
        let endpoint = discovery(dir.path()).resolve().unwrap();
        assert_eq!(endpoint.url, "http://cfg:1");
        assert_eq!(endpoint.api_key, "wrn_cfg");
        assert_eq!(endpoint.url_origin, Origin::ConfigFile(config));
        // The environment overrides one field, the file gives the other.
        let mut d = discovery(dir.path());
        d.env_api_key = Some("wrn_env".into());
        let endpoint = d.resolve().unwrap();
        assert_eq!(
            (endpoint.url.as_str(), endpoint.api_key.as_str()),
            ("http://cfg:1", "wrn_env")
        );
    }

    #[test]
    fn local_discovery_reads_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        write(
            &home,
            SERVICE_FILE,
            &format!(
                "{{\"url\":\"http://127.0.0.1:7777\",\"pid\":{}}}",
                std::process::id()
            ),
        );
        write(&home, ADMIN_KEY_FILE, "wrn_admin\n");
        let endpoint = discovery(dir.path()).resolve().unwrap();
        assert_eq!(endpoint.url, "http://127.0.0.1:7777");
        assert_eq!(endpoint.api_key, "wrn_admin");
        assert_eq!(
            endpoint.key_origin,
            Origin::LocalFile(home.join(ADMIN_KEY_FILE))
        );
    }

    #[test]
    fn the_admin_key_never_goes_to_a_remote_url() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        write(&home, ADMIN_KEY_FILE, "wrn_admin\n");
        let mut d = discovery(dir.path());
        d.env_url = Some("http://warren.example:7700".into());
        let error = d.resolve().unwrap_err().to_string();
        assert!(error.contains("no API key"), "{error}");
        assert!(error.contains(API_KEY_ENV), "{error}");
        // A loopback URL may use it.
        d.env_url = Some("http://localhost:7700".into());
        assert_eq!(d.resolve().unwrap().api_key, "wrn_admin");
        d.env_url = Some("http://[::1]:7700".into());
        assert_eq!(d.resolve().unwrap().api_key, "wrn_admin");
    }

    #[test]
    fn nothing_found_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = discovery(dir.path()).resolve().unwrap_err();
        assert!(error.is_unreachable());
        let text = error.to_string();
        assert!(text.contains("warren up"), "{text}");
        assert!(
            text.contains(URL_ENV) && text.contains(API_KEY_ENV),
            "{text}"
        );
    }

    #[test]
    fn a_stale_service_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        // Pids are below 2^22 on Linux.
        write(
            &home,
            SERVICE_FILE,
            "{\"url\":\"http://127.0.0.1:7777\",\"pid\":4999999}",
        );
        let error = discovery(dir.path()).resolve().unwrap_err().to_string();
        assert!(error.contains("not running anymore"), "{error}");
    }

    #[test]
    fn a_broken_config_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.toml", "url = nope\n");
        let error = discovery(dir.path()).resolve().unwrap_err();
        assert!(matches!(error, Error::Config { .. }), "{error}");
    }

    #[test]
    fn missing_admin_key_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        write(&home, SERVICE_FILE, "{\"url\":\"http://127.0.0.1:7777\"}");
        let error = discovery(dir.path()).resolve().unwrap_err().to_string();
        assert!(error.contains("admin.key"), "{error}");
        assert!(error.contains(API_KEY_ENV), "{error}");
    }
}
