//! Emulated Entra token endpoint: `POST /{tenant}/oauth2/v2.0/token`, client-credentials grant
//! with a client secret (microsoft-graph.md §1), with Entra's error statuses and JSON shape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::config::{App, Tenant};
use crate::state::{FaultTarget, IssuedToken, Rejection, Shared};
use crate::util::{entra_timestamp, guid, parse_form, percent_decode, random_u64, unix_now};

/// An Entra error: HTTP status, OAuth `error` value, AADSTS number and text.
struct EntraError {
    status: StatusCode,
    error: String,
    aadsts: u32,
    text: String,
}

fn fail(status: StatusCode, error: &str, aadsts: u32, text: impl Into<String>) -> EntraError {
    EntraError {
        status,
        error: error.to_owned(),
        aadsts,
        text: text.into(),
    }
}

fn missing(param: &str) -> EntraError {
    fail(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

impl EntraError {
    fn into_response(self, correlation_id: &str) -> Response {
        let trace_id = guid();
        let timestamp = entra_timestamp();
        let code = self.aadsts;
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{code}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.text
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        });
        json_response(self.status, &body, &trace_id, correlation_id)
    }
}

fn json_response(
    status: StatusCode,
    body: &Value,
    trace_id: &str,
    correlation_id: &str,
) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    for (name, value) in [
        ("x-ms-request-id", trace_id),
        ("client-request-id", correlation_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The token endpoint handler.
pub async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Entra reports the caller's client-request-id back as the correlation id.
    let correlation_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(guid, str::to_owned);
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let result = match shared.take_fault(FaultTarget::Token) {
        Some(fault) => {
            // AADSTS90033 is Entra's "transient error, try again"; the body of an injected
            // token fault is otherwise not documented (UNCONFIRMED).
            let error = fault.code.as_deref().unwrap_or("temporarily_unavailable");
            let status =
                StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let e = fail(
                status,
                error,
                90_033,
                "A transient error has occurred. Please try again.",
            );
            Err((e, fault.retry_after))
        }
        None => issue(&shared, &tenant, &headers, &body).map_err(|e| (e, None)),
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, &body, &guid(), &correlation_id),
        Err((e, retry_after)) => {
            shared.record_token_refusal(Rejection {
                path: format!("/{tenant}/oauth2/v2.0/token"),
                status: e.status.as_u16(),
                code: format!("AADSTS{}", e.aadsts),
            });
            let mut response = e.into_response(&correlation_id);
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn find_tenant<'a>(tenants: &'a [Tenant], name: &str) -> Result<&'a Tenant, EntraError> {
    let lower = name.to_ascii_lowercase();
    if lower == "common" || lower == "consumers" {
        // E3 gives no `error` value for AADSTS9001023; `invalid_request` is Entra's generic one.
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            9_001_023,
            "The grant type is not supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
        ));
    }
    // `/organizations` names no tenant, so it falls under the malformed-identifier rule
    // (its behaviour for client credentials is UNCONFIRMED).
    if !is_guid(name) && !is_dns_name(name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_023,
            format!(
                "Specified tenant identifier '{name}' is neither a valid DNS name, nor a valid external domain."
            ),
        ));
    }
    tenants
        .iter()
        .find(|t| t.id.eq_ignore_ascii_case(name) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(name)))
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "invalid_tenant",
                90_002,
                format!("Tenant '{name}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
            )
        })
}

/// `client_id` and `client_secret` from HTTP Basic auth (RFC 6749 §2.3.1: each form-encoded).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((percent_decode(id, true), percent_decode(secret, true)))
}

fn issue(
    shared: &Shared,
    tenant_name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, EntraError> {
    let config = &shared.config;
    let tenant = find_tenant(&config.tenants, tenant_name)?;
    let form = parse_form(body);
    // Entra treats an empty parameter like a missing one.
    let field = |name: &str| {
        form.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let basic = basic_credentials(headers);

    let grant_type = field("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant_type != "client_credentials" {
        // The status and `error` are RFC 6749's; AADSTS70003 is Entra's UnsupportedGrantType
        // (not in E3's table: UNCONFIRMED).
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id")
        .or_else(|| basic.as_ref().map(|(id, _)| id.clone()))
        .ok_or_else(|| missing("client_id"))?;
    let scope = field("scope").ok_or_else(|| missing("scope"))?;

    let app: &App = tenant
        .apps
        .iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(&client_id))
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700_016,
                format!("Application with identifier '{client_id}' was not found in the directory '{tenant_name}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
            )
        })?;

    let assertion = match field("client_assertion") {
        Some(jwt) => {
            if field("client_assertion_type").as_deref() != Some(ASSERTION_TYPE) {
                return Err(missing("client_assertion_type"));
            }
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Some(Assertion {
                jwt,
                audiences: token_urls(tenant, host),
            })
        }
        None => None,
    };
    authenticate(
        app,
        field("client_secret").or_else(|| basic.map(|(_, s)| s)),
        assertion,
    )?;
    check_scope(&scope, &config.graph_resource)?;

    let now = unix_now();
    let lifetime = config.token_lifetime;
    let mut claims = json!({
        "aud": config.graph_resource,
        "iss": format!("https://sts.windows.net/{}/", tenant.id),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs(),
        "appid": app.client_id,
        "idtyp": "app",
        "tid": tenant.id,
        "uti": guid(),
        "ver": "1.0",
    });
    // Without admin consent Entra still issues a token, only without `roles` (E1).
    if !app.roles.is_empty() {
        claims["roles"] = json!(app.roles);
    }
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "graph-relay-emulator"});
    let signature: Vec<u8> = (0..4).flat_map(|_| random_u64().to_be_bytes()).collect();
    let access_token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    );
    shared.store_token(
        access_token.clone(),
        IssuedToken {
            client_id: app.client_id.clone(),
            roles: app.roles.clone(),
            rbac_mailboxes: app.rbac_mailboxes.clone(),
            expires_at: Instant::now() + lifetime,
            revoked: false,
        },
    );
    let expires_in = lifetime.max(Duration::from_secs(1)).as_secs();
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    }))
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Audience of federated tokens exchanged with Entra (workload identity federation).
const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Clock skew tolerated on `nbf` and `exp` of an assertion.
const ASSERTION_SKEW_S: u64 = 300;

/// A client assertion and the audiences it may name: this endpoint's token URL, by tenant id or
/// any of the tenant's domains.
struct Assertion {
    jwt: String,
    audiences: Vec<String>,
}

fn token_urls(tenant: &Tenant, host: &str) -> Vec<String> {
    std::iter::once(&tenant.id)
        .chain(&tenant.domains)
        .flat_map(|name| {
            ["http", "https"].map(|scheme| format!("{scheme}://{host}/{name}/oauth2/v2.0/token"))
        })
        .collect()
}

/// Checks the client secret or assertion. `invalid_client` is 401 as observed in issue
/// threads (§1).
fn authenticate(
    app: &App,
    secret: Option<String>,
    assertion: Option<Assertion>,
) -> Result<(), EntraError> {
    let unauthorized =
        |aadsts, text: String| fail(StatusCode::UNAUTHORIZED, "invalid_client", aadsts, text);
    let Some(secret) = secret else {
        if let Some(assertion) = assertion {
            return verify_assertion(app, &assertion);
        }
        // Status UNCONFIRMED; 401 like the other `invalid_client` failures.
        return Err(unauthorized(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
        ));
    };
    match app.secrets.iter().find(|s| s.value == secret) {
        None => Err(unauthorized(
            7_000_215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                app.client_id
            ),
        )),
        Some(s) if s.expired => Err(unauthorized(
            7_000_222,
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.client_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The DER bytes of the first PEM `CERTIFICATE` block.
fn certificate_der(pem: &str) -> Option<Vec<u8>> {
    let (_, rest) = pem.split_once("-----BEGIN CERTIFICATE-----")?;
    let (body, _) = rest.split_once("-----END CERTIFICATE-----")?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).ok()
}

/// Verifies a client assertion (E2): an app certificate's assertion names its certificate by
/// thumbprint (`x5t` = SHA-1 with RS256, `x5t#S256` = SHA-256 with PS256; both accepted with
/// either algorithm), is signed by its key, has `iss` = `sub` = client id and `aud` = the token
/// URL; a federated one comes from a registered issuer and subject. `nbf`/`exp` are checked with
/// five minutes of skew. AADSTS codes: 700027 signature/key, 700024 time range (§1); 700021
/// for claims naming another client and 700212 for a wrong audience are UNCONFIRMED.
fn verify_assertion(app: &App, assertion: &Assertion) -> Result<(), EntraError> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use sha1::Digest;
    let unauthorized =
        |aadsts, text: String| fail(StatusCode::UNAUTHORIZED, "invalid_client", aadsts, text);
    let malformed = || {
        unauthorized(
            700_027,
            "Client assertion failed signature validation. [Reason - the assertion is not a signed JWT.]".to_owned(),
        )
    };
    let header = jsonwebtoken::decode_header(&assertion.jwt).map_err(|_| malformed())?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(malformed());
    }
    let unverified: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&assertion.jwt).map_err(|_| malformed())?;
    let claim = |name: &str| unverified[name].as_str().unwrap_or_default().to_owned();
    let (iss, sub) = (claim("iss"), claim("sub"));

    let (certificate, audiences) = if iss.eq_ignore_ascii_case(&app.client_id) {
        let x5t = |digest: &[u8]| URL_SAFE_NO_PAD.encode(digest);
        let wanted_sha256 = header.x5t_s256.clone();
        let wanted_sha1 = header.x5t.clone();
        let certificate = app.certificates.iter().find(|pem| {
            certificate_der(pem).is_some_and(|der| {
                wanted_sha256.as_deref() == Some(x5t(&sha2::Sha256::digest(&der)).as_str())
                    || wanted_sha1.as_deref() == Some(x5t(&sha1::Sha1::digest(&der)).as_str())
            })
        });
        let Some(certificate) = certificate else {
            return Err(unauthorized(
                700_027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{}']",
                    wanted_sha256.or(wanted_sha1).unwrap_or_default()
                ),
            ));
        };
        if !sub.eq_ignore_ascii_case(&app.client_id) {
            return Err(unauthorized(
                700_021,
                "Client assertion application identifier doesn't match 'client_id' parameter."
                    .to_owned(),
            ));
        }
        (certificate.as_str(), assertion.audiences.clone())
    } else {
        let federated = app
            .federated
            .iter()
            .find(|f| f.issuer == iss && f.subject == sub)
            .ok_or_else(|| {
                // AADSTS70021 is Entra's "No matching federated identity record found" (E3).
                fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    70_021,
                    format!("No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'."),
                )
            })?;
        (
            federated.signing_certificate.as_str(),
            vec![FEDERATED_AUDIENCE.to_owned()],
        )
    };

    let key = DecodingKey::from_rsa_pem(certificate.as_bytes()).map_err(|_| malformed())?;
    let mut validation = Validation::new(header.alg);
    // Claims are checked below, each with its own AADSTS code.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(&assertion.jwt, &key, &validation).map_err(|_| {
        unauthorized(
            700_027,
            "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]".to_owned(),
        )
    })?;
    let aud = claim("aud");
    if !audiences.iter().any(|a| a.eq_ignore_ascii_case(&aud)) {
        return Err(unauthorized(
            700_212,
            format!(
                "The audience '{aud}' of the client assertion is not valid; expected one of: {}.",
                audiences.join(", ")
            ),
        ));
    }
    let now = unix_now();
    let time = |name: &str| unverified[name].as_u64();
    let (nbf, exp) = (time("nbf").unwrap_or(0), time("exp"));
    match exp {
        Some(exp) if nbf <= now + ASSERTION_SKEW_S && exp + ASSERTION_SKEW_S > now => Ok(()),
        _ => Err(unauthorized(
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {}.",
                exp.map_or_else(|| "(none)".to_owned(), |e| e.to_string())
            ),
        )),
    }
}

/// Client credentials need exactly one `{resource}/.default` scope for the configured resource.
fn check_scope(scope: &str, resource: &str) -> Result<(), EntraError> {
    let invalid = || {
        fail(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70_011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )
    };
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if let Some(bad) = scopes.iter().find(|s| !s.ends_with("/.default")) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {bad} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let [single] = scopes.as_slice() else {
        return Err(invalid());
    };
    let requested = single.trim_end_matches("/.default").trim_end_matches('/');
    if requested.eq_ignore_ascii_case(resource.trim_end_matches('/')) {
        Ok(())
    } else {
        Err(invalid())
    }
}
