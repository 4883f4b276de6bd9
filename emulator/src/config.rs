//! What the emulated tenants look like: tenants, app registrations, secrets, mailboxes, timings.

use std::time::Duration;

/// Everything the emulator knows about the (fake) Microsoft cloud it stands in for.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Entra tenants; the token endpoint knows only these (by GUID or domain).
    pub tenants: Vec<Tenant>,
    /// Mailboxes that exist. `None` means "every mailbox exists", which keeps simple tests short.
    pub mailboxes: Option<Vec<String>>,
    /// `(mailbox, from)` pairs where `mailbox` has Send As rights on `from`.
    pub send_as: Vec<(String, String)>,
    /// Lifetime of issued access tokens (`expires_in`); short values exercise refresh.
    pub token_lifetime: Duration,
    /// Extra delay before every answer, to model network and service time in benchmarks.
    pub latency: Duration,
    /// Resource URI tokens are issued for (`aud`); the scope must be this plus `/.default`.
    pub graph_resource: String,
    /// Graph's per-(app, mailbox) concurrency limit (4 in production); `None` = unlimited.
    pub max_concurrent_per_mailbox: Option<usize>,
    /// Keep every accepted message for [`crate::Emulator::accepted`]; load benchmarks turn it
    /// off and only count, so memory stays flat.
    pub record_accepted: bool,
    /// The tenant's message size limit in bytes (Exchange's default 35 MiB, at most 150 MiB):
    /// larger messages get `ErrorMessageSizeExceeded`.
    pub max_message_size: usize,
    /// How long an attachment upload session's URL stays valid (`expirationDateTime`).
    pub upload_session_lifetime: Duration,
}

/// An Entra tenant.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// Tenant GUID.
    pub id: String,
    /// Verified domains, e.g. `contoso.onmicrosoft.com`; accepted in place of the GUID.
    pub domains: Vec<String>,
    /// App registrations of this tenant.
    pub apps: Vec<App>,
}

/// An app registration with client-secret credentials.
#[derive(Clone, Debug)]
pub struct App {
    /// Application (client) id.
    pub client_id: String,
    /// Client secrets; any non-expired one authenticates.
    pub secrets: Vec<Secret>,
    /// Application permissions with admin consent, issued as the token's `roles` claim.
    pub roles: Vec<String>,
    /// Mailboxes granted by Exchange "RBAC for Applications": sending works there even
    /// when the token carries no `Mail.Send` role (microsoft-graph.md §6).
    pub rbac_mailboxes: Vec<String>,
    /// PEM certificates uploaded to the app (Certificates & secrets): a client assertion signed
    /// by one of their keys, naming it by `x5t` or `x5t#S256`, authenticates.
    pub certificates: Vec<String>,
    /// Federated credentials: assertions minted by another identity provider.
    pub federated: Vec<FederatedCredential>,
}

/// A federated identity credential: tokens from `issuer` about `subject` authenticate the app.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    /// `iss` of the external token, e.g. a Kubernetes cluster's OIDC issuer URL.
    pub issuer: String,
    /// `sub` of the external token, e.g. `system:serviceaccount:mail:graph-relay`.
    pub subject: String,
    /// PEM certificate whose key signs the issuer's tokens (stands in for the issuer's JWKS).
    pub signing_certificate: String,
}

/// A client secret value.
#[derive(Clone, Debug)]
pub struct Secret {
    /// The secret value (not the secret id).
    pub value: String,
    /// An expired secret is recognised but refused with AADSTS7000222.
    pub expired: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            mailboxes: None,
            send_as: Vec::new(),
            token_lifetime: Duration::from_secs(3599),
            latency: Duration::ZERO,
            graph_resource: "https://graph.microsoft.com".to_owned(),
            max_concurrent_per_mailbox: None,
            record_accepted: true,
            max_message_size: 35 * 1024 * 1024,
            upload_session_lifetime: Duration::from_secs(15 * 60),
        }
    }
}

impl EmulatorConfig {
    /// One tenant with one app holding one valid secret and the `Mail.Send` role.
    pub fn single(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            tenants: vec![Tenant {
                id: tenant_id.into(),
                domains: Vec::new(),
                apps: vec![App {
                    client_id: client_id.into(),
                    secrets: vec![Secret {
                        value: secret.into(),
                        expired: false,
                    }],
                    roles: vec!["Mail.Send".to_owned()],
                    rbac_mailboxes: Vec::new(),
                    certificates: Vec::new(),
                    federated: Vec::new(),
                }],
            }],
            ..Self::default()
        }
    }
}
