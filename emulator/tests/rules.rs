//! Rule-by-rule tests of the emulator: each Microsoft rule gets a violating request whose
//! status and error code are asserted, plus success paths, faults and the control interface.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use graph_relay_emulator::{
    Emulator, EmulatorConfig, Fault, MailContent, Secret, Throttling, start, start_on,
};
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
const SECRET: &str = "Xy7~abc+def";
const SCOPE: &str = "https://graph.microsoft.com/.default";
const MAILBOX: &str = "billing@contoso.com";

fn config() -> EmulatorConfig {
    let mut config = EmulatorConfig::single(TENANT, CLIENT, SECRET);
    config.tenants[0].domains = vec!["contoso.onmicrosoft.com".into()];
    config
}

async fn emulator() -> Emulator {
    start(config()).await.expect("emulator starts")
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn credentials() -> Vec<(&'static str, &'static str)> {
    vec![
        ("client_id", CLIENT),
        ("scope", SCOPE),
        ("client_secret", SECRET),
        ("grant_type", "client_credentials"),
    ]
}

fn without(field: &str) -> Vec<(&'static str, &'static str)> {
    credentials()
        .into_iter()
        .filter(|(k, _)| *k != field)
        .collect()
}

fn with(field: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut form = without(field);
    form.push((field, value));
    form
}

async fn token_request(emu: &Emulator, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{}/{tenant}/oauth2/v2.0/token", emu.url()))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    (status, response.json().await.expect("json body"))
}

/// Asserts an Entra error: status, `error`, and the AADSTS number in `error_codes`.
fn assert_entra(got: &(StatusCode, Value), status: u16, error: &str, aadsts: u64) {
    let (got_status, body) = got;
    assert_eq!(got_status.as_u16(), status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([aadsts]), "{body}");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!("AADSTS{aadsts}: ")),
        "{description}"
    );
}

async fn token(emu: &Emulator) -> String {
    let (status, body) = token_request(emu, TENANT, &credentials()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

fn message() -> Value {
    json!({
        "message": {
            "subject": "Invoice 2025-001",
            "body": {"contentType": "HTML", "content": "<p>Your invoice is attached.</p><img src=\"cid:logo123\">"},
            "toRecipients": [{"emailAddress": {"name": "Alex Wilber", "address": "alexw@contoso.com"}}],
            "ccRecipients": [{"emailAddress": {"address": "ar@contoso.com"}}],
            "bccRecipients": [{"emailAddress": {"address": "archive@contoso.com"}}],
            "replyTo": [{"emailAddress": {"address": "helpdesk@contoso.com"}}],
            "importance": "normal",
            "isDeliveryReceiptRequested": false,
            "isReadReceiptRequested": false,
            "internetMessageHeaders": [{"name": "X-Legacy-App", "value": "billing-v3"}],
            "attachments": [
                {"@odata.type": "#microsoft.graph.fileAttachment", "name": "logo.png", "contentType": "image/png",
                 "contentBytes": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
                 "contentId": "logo123", "isInline": true},
                {"@odata.type": "#microsoft.graph.fileAttachment", "name": "invoice.pdf", "contentType": "application/pdf",
                 "contentBytes": "JVBERi0xLjQKJSVFT0YK"}
            ]
        },
        "saveToSentItems": false
    })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts a Graph error: status, `error.code`, and the `innerError` ids.
    fn assert_error(&self, status: u16, code: &str) -> Value {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(body["error"]["code"], code, "{}", self.body);
        let inner = &body["error"]["innerError"];
        assert!(
            inner["date"].is_string() && inner["request-id"].is_string(),
            "{}",
            self.body
        );
        assert_eq!(inner["request-id"].as_str(), self.header("request-id"));
        body
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn post_graph(
    emu: &Emulator,
    token: Option<&str>,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let mut request = http()
        .post(format!("{}{path}", emu.graph_endpoint()))
        .header("content-type", content_type)
        .header("client-request-id", "8f0c3d2e-0000-4000-8000-000000000002")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("graph request");
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

async fn send_json(emu: &Emulator, token: &str, body: &Value) -> Answer {
    let path = format!("/users/{MAILBOX}/sendMail");
    post_graph(
        emu,
        Some(token),
        &path,
        "application/json",
        body.to_string().into_bytes(),
    )
    .await
}

/// Sends `message()` after `edit` changed it, and returns the answer.
async fn send_edited(emu: &Emulator, token: &str, edit: impl FnOnce(&mut Value)) -> Answer {
    let mut body = message();
    edit(&mut body);
    send_json(emu, token, &body).await
}

async fn send_mime(emu: &Emulator, token: &str, mime: &str) -> Answer {
    let path = format!("/users/{MAILBOX}/sendMail");
    post_graph(
        emu,
        Some(token),
        &path,
        "text/plain",
        STANDARD.encode(mime).into_bytes(),
    )
    .await
}

// === Token endpoint ===

#[tokio::test]
async fn token_success_is_jwt_shaped_with_claims() {
    let emu = emulator().await;
    let (status, body) = token_request(&emu, TENANT, &credentials()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().expect("token");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64url")).expect("json");
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["roles"], json!(["Mail.Send"]));
    let (iat, exp) = (
        claims["iat"].as_u64().expect("iat"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert_eq!(claims["nbf"].as_u64(), Some(iat));
    assert_eq!(exp - iat, 3599);
    assert_eq!(emu.token_requests(), 1);
}

#[tokio::test]
async fn token_accepts_domain_tenant_and_basic_auth() {
    let emu = emulator().await;
    let (status, _) = token_request(&emu, "contoso.onmicrosoft.com", &credentials()).await;
    assert_eq!(status, StatusCode::OK);
    let response = http()
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", emu.url()))
        .basic_auth(CLIENT, Some("Xy7~abc%2Bdef"))
        .form(&[("scope", SCOPE), ("grant_type", "client_credentials")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_common_and_consumers_refused() {
    let emu = emulator().await;
    for tenant in ["common", "consumers"] {
        assert_entra(
            &token_request(&emu, tenant, &credentials()).await,
            400,
            "invalid_request",
            9_001_023,
        );
    }
}

#[tokio::test]
async fn token_unknown_tenant_refused() {
    let emu = emulator().await;
    let by_id = token_request(&emu, "99999999-2222-3333-4444-555555555555", &credentials()).await;
    assert_entra(&by_id, 400, "invalid_tenant", 90_002);
    let by_domain = token_request(&emu, "fabrikam.onmicrosoft.com", &credentials()).await;
    assert_entra(&by_domain, 400, "invalid_tenant", 90_002);
}

#[tokio::test]
async fn token_malformed_tenant_refused() {
    let emu = emulator().await;
    for tenant in ["not_a_tenant", "organizations", "-bad-.com"] {
        assert_entra(
            &token_request(&emu, tenant, &credentials()).await,
            400,
            "invalid_request",
            900_023,
        );
    }
}

#[tokio::test]
async fn token_grant_type_must_be_client_credentials() {
    let emu = emulator().await;
    let got = token_request(&emu, TENANT, &with("grant_type", "password")).await;
    assert_entra(&got, 400, "unsupported_grant_type", 70_003);
}

#[tokio::test]
async fn token_missing_fields_refused() {
    let emu = emulator().await;
    for field in ["grant_type", "client_id", "scope"] {
        let got = token_request(&emu, TENANT, &without(field)).await;
        assert_entra(&got, 400, "invalid_request", 900_144);
        assert!(
            got.1["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains(field)
        );
    }
}

#[tokio::test]
async fn token_unknown_client_refused() {
    let emu = emulator().await;
    let got = token_request(
        &emu,
        TENANT,
        &with("client_id", "cccccccc-0000-1111-2222-bbbbbbbbbbbb"),
    )
    .await;
    assert_entra(&got, 400, "unauthorized_client", 700_016);
}

#[tokio::test]
async fn token_wrong_secret_is_401_with_exact_text() {
    let emu = emulator().await;
    let got = token_request(&emu, TENANT, &with("client_secret", "secret-id-not-value")).await;
    assert_entra(&got, 401, "invalid_client", 7_000_215);
    let body = &got.1;
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.starts_with(&format!(
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT}'.\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: ",
        body["trace_id"].as_str().unwrap_or_default(),
        body["correlation_id"].as_str().unwrap_or_default()
    )));
    assert_eq!(
        body["error_uri"],
        "https://login.microsoftonline.com/error?code=7000215"
    );
    assert!(
        body["timestamp"]
            .as_str()
            .unwrap_or_default()
            .ends_with('Z')
    );
    assert_eq!(emu.rejected()[0].code, "AADSTS7000215");
    assert_eq!(emu.stats().tokens_refused, 1);
}

#[tokio::test]
async fn token_expired_secret_is_401() {
    let mut config = config();
    config.tenants[0].apps[0].secrets = vec![Secret {
        value: SECRET.into(),
        expired: true,
    }];
    let emu = start(config).await.expect("start");
    assert_entra(
        &token_request(&emu, TENANT, &credentials()).await,
        401,
        "invalid_client",
        7_000_222,
    );
}

#[tokio::test]
async fn token_without_credentials_is_401() {
    let emu = emulator().await;
    let got = token_request(&emu, TENANT, &without("client_secret")).await;
    assert_entra(&got, 401, "invalid_client", 7_000_218);
}

#[tokio::test]
async fn token_scope_needs_default_suffix() {
    let emu = emulator().await;
    let got = token_request(
        &emu,
        TENANT,
        &with("scope", "https://graph.microsoft.com/Mail.Send"),
    )
    .await;
    assert_entra(&got, 400, "invalid_scope", 1_002_012);
}

#[tokio::test]
async fn token_other_scope_refused() {
    let emu = emulator().await;
    for scope in [
        "https://outlook.office365.com/.default",
        "https://graph.microsoft.com/.default https://outlook.office365.com/.default",
    ] {
        let mut form = without("scope");
        form.push(("scope", scope));
        assert_entra(
            &token_request(&emu, TENANT, &form).await,
            400,
            "invalid_scope",
            70_011,
        );
    }
}

#[tokio::test]
async fn token_without_consent_has_no_roles_and_graph_denies() {
    let mut config = config();
    config.tenants[0].apps[0].roles.clear();
    let emu = start(config).await.expect("start");
    let token = token(&emu).await;
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap_or_default())
            .expect("b64"),
    )
    .expect("json");
    assert!(claims.get("roles").is_none());
    send_json(&emu, &token, &message())
        .await
        .assert_error(403, "ErrorAccessDenied");
}

// === Graph: authentication and routing ===

#[tokio::test]
async fn sendmail_json_success_is_202_empty_and_recorded() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let answer = send_json(&emu, &token, &message()).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(answer.body.is_empty());
    assert!(answer.header("request-id").is_some());
    assert_eq!(
        answer.header("client-request-id"),
        Some("8f0c3d2e-0000-4000-8000-000000000002")
    );
    let accepted = emu.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].mailbox, MAILBOX);
    assert_eq!(accepted[0].client_id, CLIENT);
    assert_eq!(
        accepted[0].client_request_id.as_deref(),
        Some("8f0c3d2e-0000-4000-8000-000000000002")
    );
    assert_eq!(accepted[0].content.content_type(), "application/json");
    assert!(matches!(&accepted[0].content, MailContent::Json(v) if *v == message()));
}

#[tokio::test]
async fn sendmail_without_or_with_foreign_token_is_401() {
    let emu = emulator().await;
    let path = format!("/users/{MAILBOX}/sendMail");
    let body = message().to_string().into_bytes();
    for token in [None, Some("eyJ0eXAiOiJKV1QifQ.e30.c2ln")] {
        let answer = post_graph(&emu, token, &path, "application/json", body.clone()).await;
        answer.assert_error(401, "InvalidAuthenticationToken");
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"\", authorization_uri=\""),
            "{challenge}"
        );
        assert!(challenge.contains("client_id=\"00000003-0000-0000-c000-000000000000\""));
    }
}

#[tokio::test]
async fn sendmail_with_expired_or_revoked_token_is_401() {
    let mut config = config();
    config.token_lifetime = Duration::from_secs(1);
    let emu = start(config).await.expect("start");
    let expiring = token(&emu).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = send_json(&emu, &expiring, &message())
        .await
        .assert_error(401, "InvalidAuthenticationToken");
    assert_eq!(
        body["error"]["message"],
        "Access token has expired or is not yet valid."
    );

    let emu = emulator().await;
    let token = token(&emu).await;
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
    emu.revoke_tokens();
    send_json(&emu, &token, &message())
        .await
        .assert_error(401, "InvalidAuthenticationToken");
    let fresh = self::token(&emu).await;
    assert_eq!(
        send_json(&emu, &fresh, &message()).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn rbac_allow_list_replaces_mail_send_role() {
    let mut config = config();
    config.tenants[0].apps[0].roles.clear();
    config.tenants[0].apps[0].rbac_mailboxes = vec!["BILLING@contoso.com".into()];
    let emu = start(config).await.expect("start");
    let token = token(&emu).await;
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
    let other = post_graph(
        &emu,
        Some(&token),
        "/users/sales@contoso.com/sendMail",
        "application/json",
        message().to_string().into_bytes(),
    )
    .await;
    other.assert_error(403, "ErrorAccessDenied");
}

#[tokio::test]
async fn me_and_unknown_routes_refused() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let body = message().to_string().into_bytes();
    let me = post_graph(
        &emu,
        Some(&token),
        "/me/sendMail",
        "application/json",
        body.clone(),
    )
    .await;
    let error = me.assert_error(400, "BadRequest");
    assert_eq!(
        error["error"]["message"],
        "/me request is only valid with delegated authentication flow."
    );
    for path in [
        "/users/billing@contoso.com/events",
        "/users//sendMail",
        "/users/x/sendMail/extra",
    ] {
        post_graph(&emu, Some(&token), path, "application/json", body.clone())
            .await
            .assert_error(404, "ResourceNotFound");
    }
    let get = http()
        .get(format!("{}/users/{MAILBOX}/sendMail", emu.graph_endpoint()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_mailbox_is_404_and_match_is_case_insensitive() {
    let mut config = config();
    config.mailboxes = Some(vec!["Billing@Contoso.com".into()]);
    let emu = start(config).await.expect("start");
    let token = token(&emu).await;
    // Percent-encoded and differently cased: still the configured mailbox.
    let ok = post_graph(
        &emu,
        Some(&token),
        "/users/billing%40CONTOSO.com/sendMail",
        "application/json",
        message().to_string().into_bytes(),
    )
    .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    assert_eq!(emu.accepted()[0].mailbox, "billing@CONTOSO.com");
    let unknown = post_graph(
        &emu,
        Some(&token),
        "/users/nobody@contoso.com/sendMail",
        "application/json",
        message().to_string().into_bytes(),
    )
    .await;
    let error = unknown.assert_error(404, "ErrorInvalidUser");
    assert_eq!(
        error["error"]["message"],
        "The requested user 'nobody@contoso.com' is invalid."
    );
}

#[tokio::test]
async fn unsupported_content_type_is_415() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let path = format!("/users/{MAILBOX}/sendMail");
    let answer = post_graph(
        &emu,
        Some(&token),
        &path,
        "application/xml",
        b"<x/>".to_vec(),
    )
    .await;
    answer.assert_error(415, "UnsupportedMediaType");
}

#[tokio::test]
async fn body_over_4_mib_is_413() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let path = format!("/users/{MAILBOX}/sendMail");
    let big = vec![b'A'; 4 * 1024 * 1024 + 4];
    let answer = post_graph(&emu, Some(&token), &path, "text/plain", big).await;
    let error = answer.assert_error(413, "RequestEntityTooLarge");
    assert_eq!(
        error["error"]["message"],
        "The maximum request length supported is 4MB."
    );
    // Exactly 4 MiB passes the size rule (and then fails on content: no recipients).
    let limit = vec![b'A'; 4 * 1024 * 1024];
    post_graph(&emu, Some(&token), &path, "text/plain", limit)
        .await
        .assert_error(400, "ErrorInvalidRecipients");
}

// === Graph: JSON payload ===

#[tokio::test]
async fn malformed_or_incomplete_json_refused() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let path = format!("/users/{MAILBOX}/sendMail");
    post_graph(
        &emu,
        Some(&token),
        &path,
        "application/json",
        b"{\"message\":".to_vec(),
    )
    .await
    .assert_error(400, "BadRequest");
    post_graph(&emu, Some(&token), &path, "application/json", Vec::new())
        .await
        .assert_error(400, "BadRequest");
    send_json(&emu, &token, &json!({"saveToSentItems": true}))
        .await
        .assert_error(400, "ErrorInvalidParameter");
}

#[tokio::test]
async fn unknown_properties_refused_at_every_level() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let top = send_edited(&emu, &token, |m| m["extra"] = json!(1)).await;
    top.assert_error(400, "RequestBodyRead");
    let cases: [(&str, Edit); 6] = [
        ("microsoft.graph.message", |m| {
            m["message"]["Subject"] = json!("x")
        }),
        ("microsoft.graph.recipient", |m| {
            m["message"]["toRecipients"][0]["type"] = json!("to")
        }),
        ("microsoft.graph.emailAddress", |m| {
            m["message"]["toRecipients"][0]["emailAddress"]["display"] = json!("x")
        }),
        ("microsoft.graph.itemBody", |m| {
            m["message"]["body"]["charset"] = json!("utf-8")
        }),
        ("microsoft.graph.fileAttachment", |m| {
            m["message"]["attachments"][0]["data"] = json!("x")
        }),
        ("microsoft.graph.internetMessageHeader", |m| {
            m["message"]["internetMessageHeaders"][0]["Name"] = json!("X-A")
        }),
    ];
    for (ty, edit) in cases {
        let error = send_edited(&emu, &token, edit)
            .await
            .assert_error(400, "RequestBodyRead");
        let text = error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            text.contains(&format!(
                "on type '{ty}'. Make sure to only use property names"
            )),
            "{text}"
        );
    }
    assert!(emu.accepted().is_empty());
}

#[tokio::test]
async fn save_to_sent_items_bool_or_bool_string() {
    let emu = emulator().await;
    let token = token(&emu).await;
    for value in [json!(true), json!("false")] {
        let answer = send_edited(&emu, &token, |m| m["saveToSentItems"] = value).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    send_edited(&emu, &token, |m| m["saveToSentItems"] = json!("no"))
        .await
        .assert_error(400, "RequestBodyRead");
    send_edited(&emu, &token, |m| {
        m["message"]["isReadReceiptRequested"] = json!("yes")
    })
    .await
    .assert_error(400, "RequestBodyRead");
}

#[tokio::test]
async fn body_content_type_and_importance_are_enums() {
    let emu = emulator().await;
    let token = token(&emu).await;
    for value in ["text", "Text", "html", "HTML"] {
        let answer = send_edited(&emu, &token, |m| {
            m["message"]["body"]["contentType"] = json!(value)
        })
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
    }
    send_edited(&emu, &token, |m| {
        m["message"]["body"]["contentType"] = json!("markdown")
    })
    .await
    .assert_error(400, "RequestBodyRead");
    send_edited(&emu, &token, |m| {
        m["message"]["importance"] = json!("urgent")
    })
    .await
    .assert_error(400, "RequestBodyRead");
}

#[tokio::test]
async fn recipients_must_be_arrays_of_plausible_addresses() {
    let emu = emulator().await;
    let token = token(&emu).await;
    send_edited(&emu, &token, |m| {
        m["message"]["toRecipients"] = json!("alexw@contoso.com")
    })
    .await
    .assert_error(400, "RequestBodyRead");
    for address in ["alexw@contoso.com;ar@contoso.com", "not-an-address", ""] {
        let answer = send_edited(&emu, &token, |m| {
            m["message"]["toRecipients"][0]["emailAddress"]["address"] = json!(address)
        })
        .await;
        answer.assert_error(400, "ErrorInvalidRecipients");
    }
    send_edited(&emu, &token, |m| {
        m["message"]["toRecipients"][0] = json!({})
    })
    .await
    .assert_error(400, "ErrorInvalidRecipients");
    send_edited(&emu, &token, |m| {
        m["message"]["replyTo"][0]["emailAddress"]["address"] = json!("x")
    })
    .await
    .assert_error(400, "ErrorInvalidRecipients");
}

#[tokio::test]
async fn at_least_one_and_at_most_500_recipients() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let none = send_edited(&emu, &token, |m| {
        let message = m["message"].as_object_mut().expect("object");
        for key in ["toRecipients", "ccRecipients", "bccRecipients"] {
            message.remove(key);
        }
    })
    .await;
    none.assert_error(400, "ErrorInvalidRecipients");
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"emailAddress": {"address": format!("r{i}@contoso.com")}}))
            .collect()
    };
    // 498 + 1 Cc + 1 Bcc = 500: allowed; one more is not.
    let ok = send_edited(&emu, &token, |m| m["message"]["toRecipients"] = many(498)).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    send_edited(&emu, &token, |m| m["message"]["toRecipients"] = many(499))
        .await
        .assert_error(400, "ErrorInvalidRecipients");
}

#[tokio::test]
async fn from_other_mailbox_needs_send_as() {
    let mut config = config();
    config.send_as = vec![(MAILBOX.into(), "invoices@contoso.com".into())];
    let emu = start(config).await.expect("start");
    let token = token(&emu).await;
    let set_from = |address: &'static str| {
        move |m: &mut Value| m["message"]["from"] = json!({"emailAddress": {"address": address}})
    };
    let denied = send_edited(&emu, &token, set_from("ceo@contoso.com")).await;
    let error = denied.assert_error(403, "ErrorSendAsDenied");
    assert_eq!(
        error["error"]["message"],
        "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message."
    );
    for allowed in ["BILLING@contoso.com", "invoices@contoso.com"] {
        assert_eq!(
            send_edited(&emu, &token, set_from(allowed)).await.status,
            StatusCode::ACCEPTED
        );
    }
}

/// A change to `message()` that breaks one rule.
type Edit = fn(&mut Value);

fn remove(object: &mut Value, key: &str) {
    if let Some(map) = object.as_object_mut() {
        map.remove(key);
    }
}

/// The second attachment of `message()`.
fn att(m: &mut Value) -> &mut Value {
    &mut m["message"]["attachments"][1]
}

#[tokio::test]
async fn attachments_must_be_complete_file_attachments() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let cases: [(Edit, &str); 5] = [
        (|m| remove(att(m), "@odata.type"), "ErrorInvalidRequest"),
        (
            |m| att(m)["@odata.type"] = json!("#microsoft.graph.itemAttachment"),
            "ErrorInvalidRequest",
        ),
        (|m| remove(att(m), "name"), "ErrorInvalidRequest"),
        (|m| remove(att(m), "contentBytes"), "ErrorInvalidRequest"),
        (
            |m| att(m)["contentBytes"] = json!("not base64!"),
            "RequestBodyRead",
        ),
    ];
    for (edit, code) in cases {
        send_edited(&emu, &token, edit)
            .await
            .assert_error(400, code);
    }
    send_edited(&emu, &token, |m| {
        att(m)["@odata.type"] = json!("#microsoft.graph.nothing")
    })
    .await
    .assert_error(400, "RequestBodyRead");
}

#[tokio::test]
async fn internet_message_headers_rules() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let headers = |names: Vec<String>| -> Value {
        names
            .into_iter()
            .map(|n| json!({"name": n, "value": "v"}))
            .collect()
    };
    let bad = send_edited(&emu, &token, |m| {
        m["message"]["internetMessageHeaders"] = headers(vec!["List-Unsubscribe".into()])
    })
    .await;
    let error = bad.assert_error(400, "InvalidInternetMessageHeader");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with("should start with 'x-' or 'X-'.")
    );
    let five = (0..5).map(|i| format!("x-h{i}")).collect::<Vec<_>>();
    let ok = send_edited(&emu, &token, |m| {
        m["message"]["internetMessageHeaders"] = headers(five)
    })
    .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED);
    let six = (0..6).map(|i| format!("X-H{i}")).collect::<Vec<_>>();
    let error = send_edited(&emu, &token, |m| {
        m["message"]["internetMessageHeaders"] = headers(six)
    })
    .await
    .assert_error(400, "InvalidInternetMessageHeaderCollection");
    assert_eq!(
        error["error"]["message"],
        "Maximum number of headers in one message should be less than or equal to 5."
    );
}

// === Graph: MIME payload ===

const MIME: &str = "From: Billing <billing@contoso.com>\r\nTo: \"Wilber, Alex\" <alexw@contoso.com>\r\nCc: ar@contoso.com\r\nBcc:\r\n archive@contoso.com\r\nSubject: Invoice\r\n\r\nTo: not-a-header@contoso.com\r\n";

#[tokio::test]
async fn mime_success_records_decoded_bytes() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let answer = send_mime(&emu, &token, MIME).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert!(answer.body.is_empty());
    let accepted = emu.accepted();
    assert_eq!(accepted[0].content.content_type(), "text/plain");
    assert!(matches!(&accepted[0].content, MailContent::Mime(bytes) if bytes == MIME.as_bytes()));
}

#[tokio::test]
async fn mime_invalid_base64_refused() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let path = format!("/users/{MAILBOX}/sendMail");
    let answer = post_graph(
        &emu,
        Some(&token),
        &path,
        "text/plain",
        b"RnJvbTo*&^".to_vec(),
    )
    .await;
    let error = answer.assert_error(400, "ErrorMimeContentInvalidBase64String");
    assert_eq!(
        error["error"]["message"],
        "Invalid base64 string for MIME content."
    );
}

#[tokio::test]
async fn mime_recipients_come_from_headers_only() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let no_recipients = "From: billing@contoso.com\r\nSubject: x\r\n\r\nTo: body@contoso.com\r\n";
    send_mime(&emu, &token, no_recipients)
        .await
        .assert_error(400, "ErrorInvalidRecipients");
    let bad_recipient = "From: billing@contoso.com\r\nTo: nobody\r\n\r\nx\r\n";
    send_mime(&emu, &token, bad_recipient)
        .await
        .assert_error(400, "ErrorInvalidRecipients");
    let foreign_from = "From: ceo@contoso.com\r\nTo: a@contoso.com\r\n\r\nx\r\n";
    send_mime(&emu, &token, foreign_from)
        .await
        .assert_error(403, "ErrorSendAsDenied");
}

// === Faults, recording, control interface ===

#[tokio::test]
async fn graph_fault_429_with_retry_after_then_success() {
    let emu = emulator().await;
    let token = token(&emu).await;
    emu.inject(Fault::graph(429, 2).retry_after("2.128"));
    for _ in 0..2 {
        let answer = send_json(&emu, &token, &message()).await;
        let error = answer.assert_error(429, "TooManyRequests");
        assert_eq!(error["error"]["message"], "Please retry again later.");
        assert_eq!(error["error"]["innerError"]["status"], "429");
        assert_eq!(answer.header("retry-after"), Some("2.128"));
    }
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
    let rejected = emu.rejected();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0].status, rejected[0].code.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(rejected[0].path, format!("/v1.0/users/{MAILBOX}/sendMail"));

    emu.inject(Fault::graph(503, 1));
    let answer = send_json(&emu, &token, &message()).await;
    answer.assert_error(503, "serviceNotAvailable");
    assert!(answer.header("retry-after").is_none());
    emu.inject(Fault::graph(429, 5).code("ApplicationThrottled"));
    send_json(&emu, &token, &message())
        .await
        .assert_error(429, "ApplicationThrottled");
    emu.clear_faults();
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
}

/// Random throttling answers sendMail with 429/503 in the configured shares; every request
/// for a mailbox held by a Retry-After is audited, the others are not.
#[tokio::test]
async fn random_throttling_and_the_retry_after_audit() {
    let emu = emulator().await;
    let token = token(&emu).await;
    let always = |too_many_requests, unavailable, unavailable_retry_after| Throttling {
        seed: 1,
        too_many_requests,
        unavailable,
        unavailable_retry_after,
        retry_after_s: 1,
    };
    emu.throttle(Some(always(1.0, 0.0, 0.0))).unwrap();
    let answer = send_json(&emu, &token, &message()).await;
    answer.assert_error(429, "TooManyRequests");
    assert_eq!(answer.header("retry-after"), Some("1"));
    // Too early: audited (and throttled again, which does not shorten the hold).
    send_json(&emu, &token, &message())
        .await
        .assert_error(429, "TooManyRequests");
    let audit = emu.retry_after_audit();
    assert_eq!(audit.answers, 2);
    assert_eq!(audit.early.len(), 1, "{audit:?}");
    assert_eq!(audit.early[0].mailbox, MAILBOX);
    assert_eq!(
        audit.early[0].path,
        format!("/v1.0/users/{MAILBOX}/sendMail")
    );
    assert!(audit.early[0].early_us > 500_000, "{audit:?}");

    // A 503 without Retry-After holds nothing; after the hold ran out nothing is early.
    emu.throttle(Some(always(0.0, 1.0, 0.0))).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = send_json(&emu, &token, &message()).await;
    answer.assert_error(503, "serviceNotAvailable");
    assert!(answer.header("retry-after").is_none());
    emu.throttle(None).unwrap();
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(emu.retry_after_audit().early.len(), 1);
    // A queued fault's Retry-After holds the mailbox too.
    emu.inject(Fault::graph(503, 1).retry_after("30"));
    send_json(&emu, &token, &message())
        .await
        .assert_error(503, "serviceNotAvailable");
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(emu.retry_after_audit().early.len(), 2);
    assert_eq!(emu.accepted().len(), 2);
    assert!(
        emu.throttle(Some(always(0.7, 0.7, 0.0))).is_err(),
        "shares above 1 are refused"
    );
}

#[tokio::test]
async fn token_fault_then_success() {
    let emu = emulator().await;
    emu.inject(Fault::token(503, 1).retry_after("1"));
    let response = http()
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", emu.url()))
        .form(&credentials())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    token(&emu).await;
    let stats = emu.stats();
    assert_eq!((stats.tokens_refused, stats.tokens_issued), (1, 1));
    assert_eq!(emu.token_requests(), 2);
}

async fn get_json(client: &Client, url: String) -> Value {
    let response = client.get(url).send().await.expect("get");
    response.json().await.expect("json")
}

#[tokio::test]
async fn control_interface_routes() {
    let emu = emulator().await;
    let client = http();
    let control = |path: &str| format!("{}/_emulator/{path}", emu.url());
    let fault = json!({"target": "graph", "status": 503, "count": 1, "retry_after": "2.128"});
    let added = client
        .post(control("faults"))
        .json(&fault)
        .send()
        .await
        .expect("post");
    assert_eq!(added.status(), StatusCode::NO_CONTENT);
    let invalid = client
        .post(control("faults"))
        .json(&json!({"target": "graph", "status": 200}))
        .send()
        .await
        .expect("post");
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);

    let token = token(&emu).await;
    let answer = send_json(&emu, &token, &message()).await;
    answer.assert_error(503, "serviceNotAvailable");
    assert_eq!(answer.header("retry-after"), Some("2.128"));

    let throttling = json!({"seed": 3, "too_many_requests": 1.0, "unavailable": 0.0,
                            "unavailable_retry_after": 0.0, "retry_after_s": 7});
    let set = client
        .put(control("throttling"))
        .json(&throttling)
        .send()
        .await
        .expect("put");
    assert_eq!(set.status(), StatusCode::NO_CONTENT);
    let mut bad = throttling.clone();
    bad["unavailable"] = json!(0.5);
    let refused = client
        .put(control("throttling"))
        .json(&bad)
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    // Still inside the 2.128 s of the fault above: early, then held for 7 s more.
    let answer = send_json(&emu, &token, &message()).await;
    answer.assert_error(429, "TooManyRequests");
    assert_eq!(answer.header("retry-after"), Some("7"));
    let stopped = client
        .delete(control("throttling"))
        .send()
        .await
        .expect("delete");
    assert_eq!(stopped.status(), StatusCode::NO_CONTENT);
    let audit: Value = get_json(&client, control("retry-after-audit")).await;
    assert_eq!(audit["answers"], 2);
    assert_eq!(audit["early"][0]["mailbox"], MAILBOX);

    client
        .post(control("faults"))
        .json(&json!({"target": "graph", "status": 429}))
        .send()
        .await
        .expect("post");
    let cleared = client
        .delete(control("faults"))
        .send()
        .await
        .expect("delete");
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        send_json(&emu, &token, &message()).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send_mime(&emu, &token, MIME).await.status,
        StatusCode::ACCEPTED
    );

    let accepted: Value = get_json(&client, control("accepted")).await;
    assert_eq!(accepted[0]["mailbox"], MAILBOX);
    assert_eq!(accepted[0]["body"], message());
    assert_eq!(accepted[1]["content_type"], "text/plain");
    assert_eq!(accepted[1]["mime_base64"], STANDARD.encode(MIME));
    let rejected: Value = get_json(&client, control("rejected")).await;
    assert_eq!(
        rejected,
        json!([
            {"path": format!("/v1.0/users/{MAILBOX}/sendMail"), "status": 503, "code": "serviceNotAvailable"},
            {"path": format!("/v1.0/users/{MAILBOX}/sendMail"), "status": 429, "code": "TooManyRequests"},
        ])
    );
    let stats: Value = get_json(&client, control("stats")).await;
    assert_eq!(
        (
            stats["accepted"].as_u64(),
            stats["rejected"].as_u64(),
            stats["tokens_issued"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );

    let revoked = client.post(control("revoke")).send().await.expect("post");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    send_json(&emu, &token, &message())
        .await
        .assert_error(401, "InvalidAuthenticationToken");
}

#[tokio::test]
async fn in_flight_tracking_and_concurrency_limit() {
    let mut config = config();
    config.latency = Duration::from_millis(300);
    let emu = start(config.clone()).await.expect("start");
    let token = token(&emu).await;
    let answers = three_at_once(&emu, &token).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::ACCEPTED));
    assert_eq!(emu.stats().max_in_flight.get(MAILBOX), Some(&3));

    config.max_concurrent_per_mailbox = Some(2);
    let emu = start(config).await.expect("start");
    let token = self::token(&emu).await;
    let answers = three_at_once(&emu, &token).await;
    let throttled: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(throttled.len(), 1);
    throttled[0].assert_error(429, "ApplicationThrottled");
}

/// Sends three copies of `message()` at the same time.
async fn three_at_once(emu: &Emulator, token: &str) -> Vec<Answer> {
    let body = message();
    let (a, b, c) = tokio::join!(
        send_json(emu, token, &body),
        send_json(emu, token, &body),
        send_json(emu, token, &body)
    );
    vec![a, b, c]
}

#[tokio::test]
async fn wait_for_accepted_is_bounded_and_shutdown_stops() {
    let emu = emulator().await;
    assert!(!emu.wait_for_accepted(1, Duration::from_millis(50)).await);
    let token = token(&emu).await;
    send_json(&emu, &token, &message()).await;
    assert!(emu.wait_for_accepted(1, Duration::from_secs(1)).await);
    let url = emu.url();
    emu.shutdown().await;
    let fresh = Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    assert!(
        fresh
            .post(format!("{url}/{TENANT}/oauth2/v2.0/token"))
            .form(&credentials())
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn non_loopback_listen_refused() {
    let error = start_on("0.0.0.0:0".parse().expect("addr"), config())
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
