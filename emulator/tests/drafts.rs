//! The emulator's draft path, rule by rule (microsoft-graph.md §3, example C): Mail.ReadWrite
//! for drafts, the 3 MB session minimum, upload URLs without Authorization, ordered chunks of at
//! most 4 MiB, `nextExpectedRanges`, expiry, send, delete, and the tenant's message size limit.

use std::time::Duration;

use graph_relay_emulator::{Emulator, EmulatorConfig, MailContent, Throttling, start};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
const SECRET: &str = "Xy7~abc+def";
const MAILBOX: &str = "billing@contoso.com";
const MIB: usize = 1024 * 1024;

async fn emulator(read_write: bool, configure: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut config = EmulatorConfig::single(TENANT, CLIENT, SECRET);
    if read_write {
        config.tenants[0].apps[0]
            .roles
            .push("Mail.ReadWrite".into());
    }
    configure(&mut config);
    start(config).await.expect("emulator starts")
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn token(emu: &Emulator) -> String {
    let body: Value = http()
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", emu.url()))
        .form(&[
            ("client_id", CLIENT),
            ("scope", "https://graph.microsoft.com/.default"),
            ("client_secret", SECRET),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn post(emu: &Emulator, token: &str, tail: &str, body: &Value) -> (StatusCode, Value) {
    let response = http()
        .post(format!(
            "{}/users/{MAILBOX}/messages{tail}",
            emu.graph_endpoint()
        ))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn draft() -> Value {
    json!({"subject": "Big report", "body": {"contentType": "Text", "content": "See attachment."},
           "toRecipients": [{"emailAddress": {"address": "alexw@contoso.com"}}]})
}

fn item(size: usize) -> Value {
    json!({"AttachmentItem": {"attachmentType": "file", "name": "report.zip", "size": size,
                              "contentType": "application/zip"}})
}

async fn put(url: &str, start: usize, chunk: &[u8], total: usize) -> (StatusCode, Value) {
    let response = http()
        .put(url)
        .header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn example_c_draft_upload_session_and_send() {
    let emu = emulator(true, |_| {}).await;
    let token = token(&emu).await;
    let (status, created) = post(&emu, &token, "", &draft()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let total = 10 * MIB;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let (status, session) = post(
        &emu,
        &token,
        &format!("/{id}/attachments/createUploadSession"),
        &item(total),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    assert_eq!(session["nextExpectedRanges"], json!(["0-"]));
    let url = session["uploadUrl"].as_str().unwrap().to_owned();

    // With an Authorization header the upload URL refuses.
    let refused = http()
        .put(&url)
        .bearer_auth(&token)
        .header("Content-Range", format!("bytes 0-9/{total}"))
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // A chunk above 4 MiB is too large; a chunk out of order is refused.
    assert_eq!(
        put(&url, 0, &data[..4 * MIB + 1], total).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        put(&url, 5, &data[5..10], total).await.0,
        StatusCode::RANGE_NOT_SATISFIABLE
    );

    let (status, answer) = put(&url, 0, &data[..4 * MIB], total).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["nextExpectedRanges"], json!(["4194304"]));
    assert!(
        answer["ExpirationDateTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(
        put(&url, 4 * MIB, &data[4 * MIB..8 * MIB], total).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&url, 8 * MIB, &data[8 * MIB..], total).await.0,
        StatusCode::CREATED
    );

    let (status, _) = post(&emu, &token, &format!("/{id}/send"), &Value::Null).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let MailContent::Json(body) = emu.accepted().remove(0).content else {
        panic!("JSON")
    };
    let attachment = &body["message"]["attachments"][0];
    assert_eq!(attachment["name"], "report.zip");
    use base64::Engine;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(attachment["contentBytes"].as_str().unwrap())
        .unwrap();
    assert!(sent == data);
    assert_eq!(emu.open_drafts(), 0);
}

/// Throttling is per mailbox on the draft path too, upload URLs included (they carry no
/// mailbox: the session's draft names it).
#[tokio::test]
async fn draft_path_requests_are_throttled_and_audited_by_mailbox() {
    let emu = emulator(true, |_| {}).await;
    let token = token(&emu).await;
    let (status, created) = post(&emu, &token, "", &draft()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let total = 3 * MIB;
    let (_, session) = post(
        &emu,
        &token,
        &format!("/{id}/attachments/createUploadSession"),
        &item(total),
    )
    .await;
    let url = session["uploadUrl"].as_str().unwrap().to_owned();
    emu.throttle(Some(Throttling {
        seed: 9,
        too_many_requests: 1.0,
        unavailable: 0.0,
        unavailable_retry_after: 0.0,
        retry_after_s: 5,
    }))
    .unwrap();
    let (status, error) = put(&url, 0, &vec![0u8; total], total).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    let (status, _) = post(&emu, &token, &format!("/{id}/send"), &Value::Null).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let audit = emu.retry_after_audit();
    assert_eq!(audit.answers, 2);
    assert_eq!(audit.early.len(), 1, "{audit:?}");
    assert_eq!(audit.early[0].mailbox, MAILBOX);
    assert!(audit.early[0].path.ends_with("/send"), "{audit:?}");
    // Unthrottled, the draft still goes out: a throttled request changed nothing.
    emu.throttle(None).unwrap();
    assert_eq!(
        put(&url, 0, &vec![0u8; total], total).await.0,
        StatusCode::CREATED
    );
    let (status, _) = post(&emu, &token, &format!("/{id}/send"), &Value::Null).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(emu.retry_after_audit().early.len(), 3);
}

#[tokio::test]
async fn draft_rules() {
    // Mail.Send alone cannot create drafts.
    let emu = emulator(false, |_| {}).await;
    let send_only = token(&emu).await;
    let (status, body) = post(&emu, &send_only, "", &draft()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "ErrorAccessDenied");

    let emu = emulator(true, |c| {
        c.max_message_size = 5 * MIB;
        c.upload_session_lifetime = Duration::ZERO;
    })
    .await;
    let token = token(&emu).await;
    let (_, created) = post(&emu, &token, "", &draft()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let session = format!("/{id}/attachments/createUploadSession");
    let (status, body) = post(&emu, &token, &session, &item(2_999_999)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["code"],
        "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
    );
    let (status, body) = post(&emu, &token, &session, &item(6 * MIB)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "ErrorMessageSizeExceeded");
    // A session past its expirationDateTime is gone.
    let (status, body) = post(&emu, &token, &session, &item(3 * MIB)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let url = body["uploadUrl"].as_str().unwrap();
    assert_eq!(
        put(url, 0, &[1, 2, 3], 3 * MIB).await.0,
        StatusCode::NOT_FOUND
    );

    let deleted = http()
        .delete(format!(
            "{}/users/{MAILBOX}/messages/{id}",
            emu.graph_endpoint()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!((emu.open_drafts(), emu.deleted_drafts()), (0, 1));
    let (status, _) = post(&emu, &token, &format!("/{id}/send"), &Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
