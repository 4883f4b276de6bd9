//! Certificate and federated client assertions at the emulated token endpoint: each claim and
//! header rule gets a violating assertion whose status and AADSTS code are asserted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use graph_relay_emulator::{Emulator, EmulatorConfig, FederatedCredential, start};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::Digest;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
const SCOPE: &str = "https://graph.microsoft.com/.default";
const ISSUER: &str = "https://oidc.cluster.example/";
const SUBJECT: &str = "system:serviceaccount:mail:graph-relay";

struct Cert {
    pem: String,
    der: Vec<u8>,
    key: EncodingKey,
}

fn cert() -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["graph-relay".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Cert {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        key: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An assertion signed by `signer`, naming `named` by the thumbprint of `alg`.
fn assertion(signer: &Cert, named: &Cert, alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    match alg {
        Algorithm::PS256 => {
            header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&named.der)));
        }
        _ => header.x5t = Some(URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&named.der))),
    }
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

fn claims(emu: &Emulator) -> Value {
    let now = now();
    json!({
        "aud": format!("{}/{TENANT}/oauth2/v2.0/token", emu.url()),
        "iss": CLIENT, "sub": CLIENT, "jti": "6d5f0e4a-0000-4000-8000-000000000001",
        "nbf": now, "iat": now, "exp": now + 600,
    })
}

async fn emulator(registered: &Cert, issuer: &Cert) -> Emulator {
    let mut config = EmulatorConfig::single(TENANT, CLIENT, "unused-secret");
    let app = &mut config.tenants[0].apps[0];
    app.certificates = vec![registered.pem.clone()];
    app.federated = vec![FederatedCredential {
        issuer: ISSUER.into(),
        subject: SUBJECT.into(),
        signing_certificate: issuer.pem.clone(),
    }];
    start(config).await.expect("emulator starts")
}

async fn request(emu: &Emulator, assertion: &str, with_type: bool) -> (u16, Value) {
    let mut form = vec![
        ("client_id", CLIENT),
        ("scope", SCOPE),
        ("grant_type", "client_credentials"),
        ("client_assertion", assertion),
    ];
    if with_type {
        form.push((
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", emu.url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn certificate_assertions_are_verified_claim_by_claim() {
    let (registered, other, issuer) = (cert(), cert(), cert());
    let emu = emulator(&registered, &issuer).await;
    let base = claims(&emu);
    let edit = |key: &str, value: Value| {
        let mut claims = base.clone();
        claims[key] = value;
        claims
    };
    let now = now();
    // (what, assertion, form has client_assertion_type, expected status, expected AADSTS or 0)
    let cases = [
        (
            "PS256 + x5t#S256",
            assertion(&registered, &registered, Algorithm::PS256, &base),
            true,
            200,
            0,
        ),
        (
            "RS256 + x5t",
            assertion(&registered, &registered, Algorithm::RS256, &base),
            true,
            200,
            0,
        ),
        (
            "certificate not uploaded",
            assertion(&other, &other, Algorithm::PS256, &base),
            true,
            401,
            700_027,
        ),
        (
            "signed by another key",
            assertion(&other, &registered, Algorithm::PS256, &base),
            true,
            401,
            700_027,
        ),
        ("not a JWT", "not.a.jwt".to_string(), true, 401, 700_027),
        (
            "aud of another tenant",
            assertion(
                &registered,
                &registered,
                Algorithm::PS256,
                &edit(
                    "aud",
                    json!(format!("{}/other.example/oauth2/v2.0/token", emu.url())),
                ),
            ),
            true,
            401,
            700_212,
        ),
        (
            "sub is not the client",
            assertion(
                &registered,
                &registered,
                Algorithm::PS256,
                &edit("sub", json!("someone")),
            ),
            true,
            401,
            700_021,
        ),
        (
            "expired",
            assertion(
                &registered,
                &registered,
                Algorithm::PS256,
                &edit("exp", json!(now - 3_600)),
            ),
            true,
            401,
            700_024,
        ),
        (
            "not yet valid",
            assertion(
                &registered,
                &registered,
                Algorithm::PS256,
                &edit("nbf", json!(now + 3_600)),
            ),
            true,
            401,
            700_024,
        ),
        (
            "no exp",
            assertion(
                &registered,
                &registered,
                Algorithm::PS256,
                &edit("exp", Value::Null),
            ),
            true,
            401,
            700_024,
        ),
        (
            "no client_assertion_type",
            assertion(&registered, &registered, Algorithm::PS256, &base),
            false,
            400,
            900_144,
        ),
    ];
    for (what, jwt, with_type, status, aadsts) in cases {
        let (got, body) = request(&emu, &jwt, with_type).await;
        assert_eq!(got, status, "{what}: {body}");
        if aadsts == 0 {
            assert_eq!(body["token_type"], "Bearer", "{what}: {body}");
        } else {
            assert_eq!(body["error_codes"], json!([aadsts]), "{what}: {body}");
        }
    }
}

#[tokio::test]
async fn federated_assertions_need_a_registered_issuer_and_subject() {
    let (registered, issuer, other) = (cert(), cert(), cert());
    let emu = emulator(&registered, &issuer).await;
    let now = now();
    let federated = |subject: &str| {
        json!({
            "aud": "api://AzureADTokenExchange", "iss": ISSUER, "sub": subject,
            "nbf": now, "iat": now, "exp": now + 3_600,
        })
    };
    let cases = [
        (
            "registered",
            assertion(&issuer, &issuer, Algorithm::RS256, &federated(SUBJECT)),
            200,
            0,
        ),
        (
            "other subject",
            assertion(
                &issuer,
                &issuer,
                Algorithm::RS256,
                &federated("system:serviceaccount:x:y"),
            ),
            400,
            70_021,
        ),
        (
            "forged signature",
            assertion(&other, &other, Algorithm::RS256, &federated(SUBJECT)),
            401,
            700_027,
        ),
    ];
    for (what, jwt, status, aadsts) in cases {
        let (got, body) = request(&emu, &jwt, true).await;
        assert_eq!(got, status, "{what}: {body}");
        if aadsts != 0 {
            assert_eq!(body["error_codes"], json!([aadsts]), "{what}: {body}");
        }
    }
}
