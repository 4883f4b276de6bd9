//! Configuration: `graph-relay.toml` plus `GRAPH_RELAY_<SECTION>__<KEY>` environment overrides,
//! turned into a validated [`Config`] before anything binds. One file per section, so keys can be
//! added side by side; `config/graph-relay.toml` documents every key.

mod auth;
mod graph;
mod http;
mod log;
mod queue;
mod smtp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use auth::{
    AssertionAlgorithm, AuthConfig, ClientCredentials, Cloud, Credential, ProfileConfig,
    read_secret_file, select_profile,
};
pub use graph::GraphConfig;
pub use graph::{
    LargeMessages, MAX_REQUEST_BYTES, SINGLE_REQUEST_RAW_LIMIT, SenderKind, SenderOverride,
};
pub use http::HttpConfig;
pub use log::{LogConfig, LogFormat};
pub use queue::{AckMode, QueueConfig, SyncMode};
pub use smtp::SmtpConfig;
pub use smtp::{
    ClientSpec, Domain, ListenerConfig, ListenerMode, MAIN_LISTENER, Network, SenderPattern,
    SenderRule, SmtpAuthConfig, TlsConfig,
};

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_PATH_VAR: &str = "GRAPH_RELAY_CONFIG";
/// Prefix of the per-key environment overrides.
const ENV_PREFIX: &str = "GRAPH_RELAY";

/// The whole, validated configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub graph: GraphConfig,
    pub queue: QueueConfig,
    pub log: LogConfig,
}

/// A configuration problem, reported as `key: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same problem, found in profile `name`: `auth.x` becomes `auth.profiles.NAME.x`.
    pub fn within_profile(self, name: &str) -> Self {
        let prefixed = |text: &str| text.replace("auth.", &format!("auth.profiles.{name}."));
        Self {
            key: if self.key == "auth" {
                format!("auth.profiles.{name}")
            } else {
                prefixed(&self.key)
            },
            problem: prefixed(&self.problem),
        }
    }
}

/// Where the configuration comes from. `env` is the process environment in production and an
/// explicit map in tests, so tests never mutate the environment.
pub struct Sources<'a> {
    /// `--config PATH`; falls back to `$GRAPH_RELAY_CONFIG`, else built-in defaults only.
    pub file: Option<&'a Path>,
    pub env: &'a HashMap<String, String>,
    /// `serve --dry-run DIR`: the spool defaults to `DIR/.queue`.
    pub dry_run: Option<&'a Path>,
}

impl Config {
    /// Loads, overrides and validates the configuration.
    ///
    /// # Errors
    /// Any unreadable file, unknown key or invalid value, as `key: what is wrong`.
    pub fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        let file = sources
            .file
            .map(Path::to_path_buf)
            .or_else(|| sources.env.get(CONFIG_PATH_VAR).map(PathBuf::from));
        let mut builder = config::Config::builder();
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                ConfigError::new("--config", format!("cannot read {}: {err}", path.display()))
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // GRAPH_RELAY_CONFIG names the file; it is not a key.
        let overrides: HashMap<String, String> = sources
            .env
            .iter()
            .filter(|(name, _)| name.starts_with("GRAPH_RELAY_") && *name != CONFIG_PATH_VAR)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let merged = builder.build().map_err(from_config_error)?;
        let mut config: Config = merged.try_deserialize().map_err(from_config_error)?;
        config.resolve(sources)?;
        config.validate()?;
        Ok(config)
    }

    /// Fills in what depends on the environment and makes paths absolute.
    fn resolve(&mut self, sources: &Sources<'_>) -> Result<(), ConfigError> {
        let dir = match (&self.queue.dir, sources.dry_run) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dry_run)) => dry_run.join(".queue"),
            (None, None) => match sources.env.get("STATE_DIRECTORY") {
                // systemd may pass several directories separated by ':'; the first is ours.
                Some(state) if !state.is_empty() => {
                    PathBuf::from(state.split(':').next().unwrap_or(state))
                }
                _ => PathBuf::from(queue::DEFAULT_DIR),
            },
        };
        self.queue.dir = Some(absolute("queue.dir", &dir)?);
        self.graph.resolve(sources.env)?;
        self.auth.resolve(&mut self.graph.endpoint)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.smtp.validate()?;
        self.auth.validate(&self.graph.endpoint)?;
        self.graph.validate()?;
        if let Some(name) = self.graph.user_senders.keys().next()
            && self.smtp.auth.users_file.is_none()
        {
            return Err(ConfigError::new(
                format!("graph.user_senders.{name}"),
                "needs smtp.auth.users_file: only an authenticated SMTP user has a name",
            ));
        }
        self.queue.validate()
    }

    /// The effective configuration as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot print: {err}\n"))
    }
}

fn absolute(key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|err| {
        ConfigError::new(
            key,
            format!("cannot make {} absolute: {err}", path.display()),
        )
    })
}

/// Maps the `config` crate's errors onto `key: what is wrong`.
fn from_config_error(err: config::ConfigError) -> ConfigError {
    match err {
        config::ConfigError::Type {
            key,
            unexpected,
            expected,
            ..
        } => ConfigError::new(
            key.unwrap_or_else(|| "configuration".into()),
            format!("expected {expected}, found {unexpected}"),
        ),
        config::ConfigError::At { error, key, .. } => {
            let inner = from_config_error(*error);
            match key {
                Some(key) if inner.key == "configuration" => ConfigError::new(key, inner.problem),
                _ => inner,
            }
        }
        config::ConfigError::FileParse { cause, .. } => {
            ConfigError::new("--config", format!("not valid TOML: {cause}"))
        }
        other => {
            // serde reports unknown keys as "unknown field `x`, expected one of ..."
            ConfigError::new("configuration", other.to_string())
        }
    }
}

/// Whether a URL may use plain `http://`: only towards this machine (tests, emulators).
pub(crate) fn check_endpoint(key: &str, url: &url::Url) -> Result<(), ConfigError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(url) => Ok(()),
        "http" => Err(ConfigError::new(
            key,
            format!("{url} uses plain http to a non-loopback host; use https://"),
        )),
        other => Err(ConfigError::new(
            key,
            format!("{url}: scheme {other} is not supported; use https://"),
        )),
    }
}

/// The address a client on this machine uses to reach a listen address: a wildcard listen
/// address (`0.0.0.0`, `[::]`) is reached through loopback.
pub fn connectable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests;
