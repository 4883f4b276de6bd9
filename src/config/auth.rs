//! `[auth]`: the Entra app registration whose client-credentials token sends the mail, the
//! national cloud it lives in, and how the app proves its identity (secret, certificate, or a
//! federated assertion file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use super::{ConfigError, check_endpoint};

/// Tenants that are not one organisation: Entra refuses client credentials on them (AADSTS9001023)
/// or their meaning for this flow is unconfirmed.
const MULTI_TENANT_NAMES: [&str; 3] = ["common", "consumers", "organizations"];

/// Microsoft's national clouds: each has its own Entra host and Graph root, and their tokens are
/// not interchangeable (microsoft-graph.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Worldwide, including GCC.
    #[default]
    Global,
    /// US Government GCC High.
    Usgov,
    /// US Government DoD.
    Dod,
    /// China, operated by 21Vianet.
    China,
}

impl Cloud {
    /// Entra host of the cloud.
    pub fn authority_host(self) -> &'static str {
        match self {
            Self::Global => "https://login.microsoftonline.com",
            Self::Usgov | Self::Dod => "https://login.microsoftonline.us",
            Self::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// Graph root of the cloud, without the API version.
    pub fn graph_root(self) -> &'static str {
        match self {
            Self::Global => "https://graph.microsoft.com",
            Self::Usgov => "https://graph.microsoft.us",
            Self::Dod => "https://dod-graph.microsoft.us",
            Self::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    pub fn scope(self) -> String {
        format!("{}/.default", self.graph_root())
    }

    pub fn graph_endpoint(self) -> String {
        format!("{}/v1.0", self.graph_root())
    }

    const ALL: [Cloud; 4] = [Self::Global, Self::Usgov, Self::Dod, Self::China];

    /// The clouds a Microsoft host belongs to; empty for any other host (an emulator, a test).
    /// GCC High and DoD share their Entra host.
    pub fn of_host(host: &str) -> Vec<Cloud> {
        let host = host.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .filter(|cloud| {
                let hosts = [cloud.authority_host(), cloud.graph_root()];
                let china_alias = *cloud == Self::China && host == "login.chinacloudapi.cn";
                china_alias
                    || hosts
                        .iter()
                        .any(|url| url.strip_prefix("https://") == Some(host.as_str()))
            })
            .collect()
    }
}

/// Signature algorithm of the certificate client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, header `x5t#S256` (Microsoft's current documentation).
    #[default]
    PS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, header `x5t` (SHA-1 thumbprint; older documentation).
    RS256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Directory (tenant) ID: a GUID or a domain such as `contoso.onmicrosoft.com`.
    pub tenant_id: Option<String>,
    /// Application (client) ID of the app registration.
    pub client_id: Option<String>,
    /// The client secret **value** (not its ID). Prefer `client_secret_file`.
    #[serde(serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    /// File holding the client secret value (trailing newline ignored); re-read on every token
    /// fetch, so a rotated secret is used without a restart.
    pub client_secret_file: Option<PathBuf>,
    /// `YYYY-MM-DD` on which the client secret expires: a warning is logged from 30 days before.
    pub client_secret_expires: Option<String>,
    /// PEM certificate uploaded to the app registration; with `private_key_file`, used instead of
    /// a client secret.
    pub certificate_file: Option<PathBuf>,
    /// PEM private key (PKCS#8 or PKCS#1 RSA) of `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// Signature of the certificate assertion: `PS256` (with `x5t#S256`) or `RS256` (with `x5t`).
    pub assertion_algorithm: AssertionAlgorithm,
    /// File holding a federated client assertion (e.g. Kubernetes workload identity's token),
    /// read on every token fetch.
    pub client_assertion_file: Option<PathBuf>,
    /// National cloud: fills in `authority_host`, `scope` and `graph.endpoint` when they are left
    /// at their defaults.
    pub cloud: Cloud,
    /// Entra host, e.g. `https://login.microsoftonline.com`.
    pub authority_host: url::Url,
    /// Resource scope of the token; must end in `/.default`.
    pub scope: String,
    /// Sending is granted through Exchange RBAC for Applications only, so tokens carry no
    /// `Mail.Send` role: `test-auth` then passes and says to confirm with `test-mail`.
    pub rbac_only: bool,
    /// Further app registrations as `[auth.profiles.NAME]`, each chosen by sender mailbox or
    /// domain; `[auth]` itself is the default profile.
    pub profiles: BTreeMap<String, ProfileConfig>,
}

/// `[auth.profiles.NAME]`: another app registration (same cloud and endpoints as `[auth]`), with
/// its own token cache, used for the senders it lists.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Sender mailboxes (`billing@fabrikam.com`) and domains (`fabrikam.com`), comma-separated.
    /// A mailbox listed anywhere wins over a domain.
    pub senders: String,
    /// As `auth.tenant_id`.
    pub tenant_id: Option<String>,
    /// As `auth.client_id`.
    pub client_id: Option<String>,
    /// As `auth.client_secret`.
    #[serde(serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    /// As `auth.client_secret_file`.
    pub client_secret_file: Option<PathBuf>,
    /// As `auth.certificate_file`.
    pub certificate_file: Option<PathBuf>,
    /// As `auth.private_key_file`.
    pub private_key_file: Option<PathBuf>,
    /// As `auth.assertion_algorithm`.
    pub assertion_algorithm: AssertionAlgorithm,
    /// As `auth.client_assertion_file`.
    pub client_assertion_file: Option<PathBuf>,
}

impl ProfileConfig {
    /// The listed senders, trimmed and lower-cased.
    pub fn sender_list(&self) -> Vec<String> {
        self.senders
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// A profile's name (`None`: the default `[auth]`), the senders it serves, its credentials.
pub type ProfileCredentials = (Option<String>, Vec<String>, ClientCredentials);

/// Which profile sends as `sender`: a profile listing the mailbox itself, else one listing its
/// domain, else the default (`None`). `profiles` are (name, listed senders).
pub fn select_profile<'a>(profiles: &'a [(String, Vec<String>)], sender: &str) -> Option<&'a str> {
    let sender = sender.to_ascii_lowercase();
    let domain = sender
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_string());
    let listing = |wanted: &str| {
        profiles
            .iter()
            .find(|(_, senders)| senders.iter().any(|s| s == wanted))
            .map(|(name, _)| name.as_str())
    };
    listing(&sender).or_else(|| domain.as_deref().and_then(listing))
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            client_secret_expires: None,
            certificate_file: None,
            private_key_file: None,
            assertion_algorithm: AssertionAlgorithm::default(),
            client_assertion_file: None,
            cloud: Cloud::Global,
            authority_host: url::Url::parse(Cloud::Global.authority_host()).expect("static URL"),
            scope: Cloud::Global.scope(),
            rbac_only: false,
            profiles: BTreeMap::new(),
        }
    }
}

/// What the token endpoint needs, once the configuration says it all.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCredentials {
    pub tenant_id: String,
    pub client_id: String,
    pub credential: Credential,
}

impl ClientCredentials {
    /// Credentials with a client secret value.
    pub fn with_secret(tenant_id: &str, client_id: &str, secret: &str) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            credential: Credential::Secret {
                value: SecretString::from(secret),
                file: None,
            },
        }
    }
}

/// How the app authenticates. Files are named, not read: the token provider reads them on every
/// fetch, so rotated secrets, certificates and federated tokens take effect without a restart.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client secret, given as a value or read from `file`.
    Secret {
        value: SecretString,
        file: Option<PathBuf>,
    },
    /// A certificate-signed JWT assertion.
    Certificate {
        certificate_file: PathBuf,
        private_key_file: PathBuf,
        algorithm: AssertionAlgorithm,
    },
    /// An assertion minted elsewhere (workload identity federation), read from this file.
    AssertionFile(PathBuf),
}

impl PartialEq for Credential {
    /// Secrets compare by value: a reload that changes the secret must be noticed.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Secret { value: a, file: fa }, Self::Secret { value: b, file: fb }) => {
                a.expose_secret() == b.expose_secret() && fa == fb
            }
            (
                Self::Certificate {
                    certificate_file: ca,
                    private_key_file: ka,
                    algorithm: aa,
                },
                Self::Certificate {
                    certificate_file: cb,
                    private_key_file: kb,
                    algorithm: ab,
                },
            ) => ca == cb && ka == kb && aa == ab,
            (Self::AssertionFile(a), Self::AssertionFile(b)) => a == b,
            _ => false,
        }
    }
}

/// Reads a client secret file: one line, trailing newline ignored, not empty.
///
/// # Errors
/// `auth.client_secret_file: …` when unreadable or empty.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(
            "auth.client_secret_file",
            format!("cannot read {}: {err}", path.display()),
        )
    })?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(ConfigError::new(
            "auth.client_secret_file",
            format!(
                "{} is empty; put the client secret value in it",
                path.display()
            ),
        ));
    }
    Ok(SecretString::from(value))
}

impl AuthConfig {
    /// Reads `client_secret_file` into `client_secret`.
    pub(super) fn load_secret_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.client_secret_file else {
            return Ok(());
        };
        if self.client_secret.is_some() {
            return Err(ConfigError::new(
                "auth.client_secret_file",
                "set either auth.client_secret or auth.client_secret_file, not both",
            ));
        }
        self.client_secret = Some(read_secret_file(path)?);
        Ok(())
    }

    /// Makes the credential file paths absolute and reads the secret file.
    fn resolve_files(&mut self) -> Result<(), ConfigError> {
        for (key, file) in [
            ("auth.client_secret_file", &mut self.client_secret_file),
            ("auth.certificate_file", &mut self.certificate_file),
            ("auth.private_key_file", &mut self.private_key_file),
            (
                "auth.client_assertion_file",
                &mut self.client_assertion_file,
            ),
        ] {
            if let Some(path) = file {
                *path = super::absolute(key, path)?;
            }
        }
        self.load_secret_file()
    }

    /// Makes file paths absolute and fills cloud-specific defaults in.
    pub(super) fn resolve(&mut self, graph_endpoint: &mut url::Url) -> Result<(), ConfigError> {
        self.resolve_files()?;
        // A value left at the worldwide default follows the chosen cloud; anything set stays.
        let global = Cloud::Global;
        let parse = |text: &str| url::Url::parse(text).expect("static URL");
        if self.authority_host == parse(global.authority_host()) {
            self.authority_host = parse(self.cloud.authority_host());
        }
        if self.scope == global.scope() {
            self.scope = self.cloud.scope();
        }
        if *graph_endpoint == parse(&global.graph_endpoint()) {
            *graph_endpoint = parse(&self.cloud.graph_endpoint());
        }
        let names: Vec<String> = self.profiles.keys().cloned().collect();
        for name in names {
            let mut derived = self.profile(&name).expect("listed profile");
            derived
                .resolve_files()
                .map_err(|err| err.within_profile(&name))?;
            let profile = self.profiles.get_mut(&name).expect("listed profile");
            profile.client_secret = derived.client_secret;
            profile.client_secret_file = derived.client_secret_file;
            profile.certificate_file = derived.certificate_file;
            profile.private_key_file = derived.private_key_file;
            profile.client_assertion_file = derived.client_assertion_file;
        }
        Ok(())
    }

    /// The `[auth]` settings with profile `name`'s app and credential in place of the default's.
    pub fn profile(&self, name: &str) -> Option<AuthConfig> {
        let profile = self.profiles.get(name)?;
        Some(AuthConfig {
            tenant_id: profile.tenant_id.clone(),
            client_id: profile.client_id.clone(),
            client_secret: profile.client_secret.clone(),
            client_secret_file: profile.client_secret_file.clone(),
            client_secret_expires: None,
            certificate_file: profile.certificate_file.clone(),
            private_key_file: profile.private_key_file.clone(),
            assertion_algorithm: profile.assertion_algorithm,
            client_assertion_file: profile.client_assertion_file.clone(),
            profiles: BTreeMap::new(),
            ..self.clone()
        })
    }

    /// Credentials of every profile, the default (`None`) first, with the senders each serves.
    ///
    /// # Errors
    /// A profile lacks or mixes credentials, as `auth.profiles.NAME.key: …`.
    pub fn all_credentials(&self) -> Result<Vec<ProfileCredentials>, ConfigError> {
        let mut all = vec![(None, Vec::new(), self.credentials()?)];
        for (name, profile) in &self.profiles {
            let derived = self.profile(name).expect("listed profile");
            let credentials = derived
                .credentials()
                .map_err(|err| err.within_profile(name))?;
            all.push((Some(name.clone()), profile.sender_list(), credentials));
        }
        Ok(all)
    }

    pub(super) fn validate(&self, graph_endpoint: &url::Url) -> Result<(), ConfigError> {
        check_endpoint("auth.authority_host", &self.authority_host)?;
        if !self.scope.ends_with("/.default") {
            return Err(ConfigError::new(
                "auth.scope",
                format!(
                    "{:?} must be a resource followed by /.default, e.g. https://graph.microsoft.com/.default",
                    self.scope
                ),
            ));
        }
        check_cloud_mix(&self.authority_host, &self.scope, graph_endpoint)?;
        if let Some(tenant) = &self.tenant_id {
            if tenant.is_empty()
                || !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(ConfigError::new(
                    "auth.tenant_id",
                    format!("{tenant:?} is not a tenant GUID or domain name"),
                ));
            }
            if MULTI_TENANT_NAMES
                .iter()
                .any(|name| tenant.eq_ignore_ascii_case(name))
            {
                return Err(ConfigError::new(
                    "auth.tenant_id",
                    format!(
                        "{tenant:?} is not one organisation; client credentials need your tenant's ID or domain"
                    ),
                ));
            }
        }
        if let Some(date) = &self.client_secret_expires {
            parse_date(date).ok_or_else(|| {
                ConfigError::new(
                    "auth.client_secret_expires",
                    format!("{date:?} is not a date written YYYY-MM-DD"),
                )
            })?;
        }
        for name in self.profiles.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::new(
                    format!("auth.profiles.{name}"),
                    "profile names are letters, digits and _ (they appear in environment variable names)",
                ));
            }
            let profile = self.profile(name).expect("listed profile");
            profile
                .validate(graph_endpoint)
                .map_err(|err| err.within_profile(name))?;
            if self.profiles[name].sender_list().is_empty() {
                return Err(ConfigError::new(
                    format!("auth.profiles.{name}.senders"),
                    "list the sender mailboxes or domains this profile sends for",
                ));
            }
        }
        if self.certificate_file.is_some() != self.private_key_file.is_some() {
            return Err(ConfigError::new(
                "auth.private_key_file",
                "auth.certificate_file and auth.private_key_file go together: set both or neither",
            ));
        }
        Ok(())
    }

    /// The credentials `serve`, `test-auth` and `test-mail` need.
    ///
    /// # Errors
    /// Names every key that is missing, or the credentials set together.
    pub fn credentials(&self) -> Result<ClientCredentials, ConfigError> {
        let kinds = [
            self.client_secret.is_some(),
            self.certificate_file.is_some(),
            self.client_assertion_file.is_some(),
        ];
        if kinds.iter().filter(|set| **set).count() > 1 {
            return Err(ConfigError::new(
                "auth",
                "set one credential: auth.client_secret(_file), auth.certificate_file with auth.private_key_file, or auth.client_assertion_file",
            ));
        }
        let credential = match (
            &self.client_secret,
            &self.certificate_file,
            &self.private_key_file,
            &self.client_assertion_file,
        ) {
            (Some(value), ..) if !value.expose_secret().is_empty() => Some(Credential::Secret {
                value: value.clone(),
                file: self.client_secret_file.clone(),
            }),
            (_, Some(certificate), Some(key), _) => Some(Credential::Certificate {
                certificate_file: certificate.clone(),
                private_key_file: key.clone(),
                algorithm: self.assertion_algorithm,
            }),
            (.., Some(file)) => Some(Credential::AssertionFile(file.clone())),
            _ => None,
        };
        let missing: Vec<&str> = [
            ("auth.tenant_id", self.tenant_id.is_none()),
            ("auth.client_id", self.client_id.is_none()),
            (
                "auth.client_secret (or auth.client_secret_file, auth.certificate_file, auth.client_assertion_file)",
                credential.is_none(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, absent)| absent.then_some(key))
        .collect();
        match (&self.tenant_id, &self.client_id, credential) {
            (Some(tenant_id), Some(client_id), Some(credential)) => Ok(ClientCredentials {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                credential,
            }),
            _ => Err(ConfigError::new(
                "auth",
                format!(
                    "missing {}; set them in the configuration file or as GRAPH_RELAY_AUTH__<KEY>, or run with --dry-run DIR",
                    missing.join(", ")
                ),
            )),
        }
    }

    /// Days until `client_secret_expires` from `today` (days since 1970-01-01), when set.
    pub fn secret_expires_in_days(&self, today: i64) -> Option<i64> {
        let date = self.client_secret_expires.as_deref().and_then(parse_date)?;
        Some(date - today)
    }
}

/// Endpoints from different national clouds cannot work together: a token of one cloud is refused
/// by the other's Graph. Hosts outside Microsoft's (emulators, tests) are not checked.
fn check_cloud_mix(
    authority_host: &url::Url,
    scope: &str,
    graph_endpoint: &url::Url,
) -> Result<(), ConfigError> {
    let scope_host = url::Url::parse(scope)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string));
    let named = [
        (
            "auth.authority_host",
            authority_host.host_str().map(str::to_string),
        ),
        ("auth.scope", scope_host),
        (
            "graph.endpoint",
            graph_endpoint.host_str().map(str::to_string),
        ),
    ];
    let mut common: Option<(Vec<Cloud>, &str)> = None;
    for (key, host) in named {
        let clouds = Cloud::of_host(host.as_deref().unwrap_or_default());
        if clouds.is_empty() {
            continue;
        }
        match &mut common {
            None => common = Some((clouds, key)),
            Some((shared, first)) => {
                shared.retain(|cloud| clouds.contains(cloud));
                if shared.is_empty() {
                    return Err(ConfigError::new(
                        key,
                        format!(
                            "belongs to another national cloud than {first}; set auth.cloud and leave the endpoints at their defaults, or make them all of one cloud"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` as days since 1970-01-01 (proleptic Gregorian).
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, month, day): (i64, i64, i64) =
        (year.parse().ok()?, month.parse().ok()?, day.parse().ok()?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn redact<S: Serializer>(secret: &Option<SecretString>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("<redacted>"),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_fill_in_their_endpoints() {
        // (cloud, authority host, scope, graph endpoint), from microsoft-graph.md §1.
        let table = [
            (
                Cloud::Global,
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com/.default",
                "https://graph.microsoft.com/v1.0",
            ),
            (
                Cloud::Usgov,
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us/.default",
                "https://graph.microsoft.us/v1.0",
            ),
            (
                Cloud::Dod,
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us/.default",
                "https://dod-graph.microsoft.us/v1.0",
            ),
            (
                Cloud::China,
                "https://login.partner.microsoftonline.cn",
                "https://microsoftgraph.chinacloudapi.cn/.default",
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
            ),
        ];
        for (cloud, host, scope, endpoint) in table {
            assert_eq!(cloud.authority_host(), host, "{cloud:?}");
            assert_eq!(cloud.scope(), scope, "{cloud:?}");
            assert_eq!(cloud.graph_endpoint(), endpoint, "{cloud:?}");
        }
    }

    #[test]
    fn hosts_belong_to_their_clouds() {
        let table: [(&str, &[Cloud]); 7] = [
            ("login.microsoftonline.com", &[Cloud::Global]),
            ("LOGIN.microsoftonline.us", &[Cloud::Usgov, Cloud::Dod]),
            ("graph.microsoft.us", &[Cloud::Usgov]),
            ("dod-graph.microsoft.us", &[Cloud::Dod]),
            ("login.chinacloudapi.cn", &[Cloud::China]),
            ("microsoftgraph.chinacloudapi.cn", &[Cloud::China]),
            ("127.0.0.1", &[]),
        ];
        for (host, clouds) in table {
            assert_eq!(Cloud::of_host(host), clouds, "{host}");
        }
    }

    #[test]
    fn cloud_mixes_are_refused() {
        let url = |text: &str| url::Url::parse(text).unwrap();
        // (authority host, scope, graph endpoint, refused key)
        let table = [
            (
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us/.default",
                "https://dod-graph.microsoft.us/v1.0",
                None,
            ),
            (
                "https://login.microsoftonline.com",
                "https://graph.microsoft.us/.default",
                "https://graph.microsoft.us/v1.0",
                Some("auth.scope"),
            ),
            (
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us/.default",
                "https://dod-graph.microsoft.us/v1.0",
                Some("graph.endpoint"),
            ),
            (
                "http://127.0.0.1:1",
                "https://graph.microsoft.com/.default",
                "http://127.0.0.1:1/v1.0",
                None,
            ),
        ];
        for (host, scope, endpoint, refused) in table {
            let result = check_cloud_mix(&url(host), scope, &url(endpoint));
            assert_eq!(
                result.err().map(|e| e.key),
                refused.map(str::to_string),
                "{host} {scope} {endpoint}"
            );
        }
    }

    #[test]
    fn profiles_are_chosen_by_mailbox_then_domain() {
        let profiles = vec![
            ("sales".to_string(), vec!["fabrikam.com".to_string()]),
            (
                "ceo".to_string(),
                vec![
                    "boss@fabrikam.com".to_string(),
                    "ceo@contoso.com".to_string(),
                ],
            ),
        ];
        // (sender, chosen profile; None = the default [auth])
        let table = [
            ("anyone@fabrikam.com", Some("sales")),
            ("Boss@Fabrikam.com", Some("ceo")),
            ("ceo@contoso.com", Some("ceo")),
            ("scanner@contoso.com", None),
            ("someone@sub.fabrikam.com", None),
            ("no-domain", None),
        ];
        for (sender, chosen) in table {
            assert_eq!(select_profile(&profiles, sender), chosen, "{sender}");
        }
    }

    #[test]
    fn secret_expiry_counts_days_left() {
        let config = AuthConfig {
            client_secret_expires: Some("2027-01-31".into()),
            ..AuthConfig::default()
        };
        let expiry = parse_date("2027-01-31").unwrap();
        assert_eq!(config.secret_expires_in_days(expiry - 30), Some(30));
        assert_eq!(config.secret_expires_in_days(expiry + 1), Some(-1));
        assert_eq!(AuthConfig::default().secret_expires_in_days(0), None);
    }

    #[test]
    fn dates_count_days_since_the_epoch() {
        let table = [
            ("1970-01-01", Some(0)),
            ("2000-03-01", Some(11_017)),
            ("2024-02-29", Some(19_782)),
            ("2023-02-29", None),
            ("2026-13-01", None),
            ("26-01-01", None),
            ("soon", None),
        ];
        for (text, days) in table {
            assert_eq!(parse_date(text), days, "{text}");
        }
    }
}
