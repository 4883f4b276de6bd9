//! Cause and fix, one sentence each, for what Entra and Graph answer when the setup is wrong: a
//! pure mapping from their error codes (never from their free text, which Microsoft changes).

/// Why Entra refused a token request and how to fix it: one sentence per known AADSTS code in
/// `codes`, else one for the OAuth `error` value.
pub fn token_refusal(error: &str, codes: &[u64]) -> Vec<&'static str> {
    let known: Vec<&'static str> = codes.iter().filter_map(|code| aadsts(*code)).collect();
    if !known.is_empty() {
        return known;
    }
    vec![match error {
        "invalid_client" => {
            "The app's credential was refused: check auth.client_secret (the secret's Value) or the certificate uploaded to the app registration."
        }
        "unauthorized_client" => {
            "The app is not allowed here: check auth.client_id and auth.tenant_id, and that the app is registered in that tenant."
        }
        "invalid_scope" => {
            "The scope is wrong: auth.scope must be the Graph resource of your cloud followed by /.default."
        }
        "invalid_tenant" => "The tenant is unknown: check auth.tenant_id and auth.cloud.",
        "temporarily_unavailable" => {
            "Entra is having a transient problem: try again in a few minutes."
        }
        _ => {
            "Entra gave no code graph-relay knows: read the description and look the AADSTS code up at https://login.microsoftonline.com/error."
        }
    }]
}

/// One sentence of cause and fix per AADSTS code seen in setups of this relay (microsoft-graph.md §1).
fn aadsts(code: u64) -> Option<&'static str> {
    Some(match code {
        90002 => {
            "AADSTS90002: the tenant was not found: auth.tenant_id is wrong, or belongs to another national cloud than auth.cloud."
        }
        900023 => {
            "AADSTS900023: auth.tenant_id is neither a GUID nor a domain: copy the Directory (tenant) ID from the app registration's Overview."
        }
        700016 => {
            "AADSTS700016: no app with this client id in this tenant: check auth.client_id (Application (client) ID) and auth.tenant_id."
        }
        7000215 => {
            "AADSTS7000215: the client secret is wrong, often the secret's ID was configured: put the secret's Value in auth.client_secret or auth.client_secret_file."
        }
        7000222 => {
            "AADSTS7000222: the client secret has expired: create a new one under Certificates & secrets and update auth.client_secret_file."
        }
        7000218 => {
            "AADSTS7000218: the request carried no credential: set auth.client_secret(_file), auth.certificate_file with auth.private_key_file, or auth.client_assertion_file."
        }
        700027 => {
            "AADSTS700027: the certificate assertion was not accepted: upload auth.certificate_file to the app registration (Certificates & secrets) and check that auth.private_key_file is its key."
        }
        700024 => {
            "AADSTS700024: the client assertion is outside its valid time range: fix this machine's clock (NTP)."
        }
        70011 => {
            "AADSTS70011: the scope is not valid: auth.scope must be one resource followed by /.default, e.g. https://graph.microsoft.com/.default."
        }
        1002012 => {
            "AADSTS1002012: client credentials need a /.default scope: set auth.scope to the Graph resource followed by /.default."
        }
        700022 => {
            "AADSTS700022: the scope names more than one resource: request only {graph}/.default."
        }
        500011 => {
            "AADSTS500011: the resource of auth.scope does not exist in this tenant: use your cloud's Graph resource (see auth.cloud)."
        }
        7000112 => {
            "AADSTS7000112: the application is disabled: enable its enterprise application (Properties, Enabled for users to sign in)."
        }
        53003 => {
            "AADSTS53003: Conditional Access blocked the app: exclude it from the policy or allow this relay's location."
        }
        9001023 => {
            "AADSTS9001023: client credentials do not work on /common or /consumers: set auth.tenant_id to your tenant's ID."
        }
        90014 | 900144 => {
            "AADSTS900144: the request lacks a required field: check auth.client_id and the credential settings."
        }
        50196 => {
            "AADSTS50196: Entra saw the same request too often (loop detected): something requests tokens in a loop; graph-relay caches them."
        }
        90033 => "AADSTS90033: Entra had a transient problem: try again in a few minutes.",
        _ => return None,
    })
}

/// Why Graph refused a sendMail and how to fix it, from its `code`. The one exception to
/// "never the text": an application access policy and a missing permission share the code
/// `ErrorAccessDenied` and differ only in the message (microsoft-graph.md §5, §6).
pub fn graph_refusal(code: &str, message: &str, mailbox: &str) -> String {
    match code {
        "ErrorAccessDenied" if message.contains("Access to OData is disabled") => format!(
            "An Exchange application access policy denies this app access to {mailbox}: add the mailbox to the policy's group, or remove the policy (Test-ApplicationAccessPolicy -Identity {mailbox} -AppId <client id> shows the verdict; changes take up to 30 minutes)."
        ),
        "ErrorAccessDenied" => format!(
            "The app may not send as {mailbox}: grant Mail.Send as an Application permission with admin consent, or assign \"Application Mail.Send\" through Exchange RBAC for Applications with a scope that includes {mailbox} (Test-ServicePrincipalAuthorization checks it)."
        ),
        "NoPermissionsInAccessToken" => "The token carries no permission: grant admin consent for Mail.Send (Application), or assign \"Application Mail.Send\" through Exchange RBAC for Applications.".to_string(),
        "ErrorInvalidUser" => format!(
            "{mailbox} is not a user of this tenant: send as an existing mailbox (its UPN or primary SMTP address)."
        ),
        "ResourceNotFound" => format!(
            "{mailbox} was not found: check the sending address, and that graph.endpoint ends with the API version (/v1.0)."
        ),
        "MailboxNotEnabledForRESTAPI" => format!(
            "{mailbox} has no Exchange Online mailbox Graph can use (unlicensed, soft-deleted, or on-premises): assign an Exchange Online licence or use a shared mailbox in Exchange Online."
        ),
        "ErrorSendAsDenied" => format!(
            "{mailbox} may not send as the From address: make From the mailbox itself, or grant {mailbox} Send As on that address (Add-RecipientPermission -AccessRights SendAs)."
        ),
        "InvalidAuthenticationToken" => "Graph refused the token (expired or from another cloud): check that auth.cloud matches graph.endpoint, and this machine's clock.".to_string(),
        "ErrorInvalidRecipients" => "A recipient address is not valid: check --to.".to_string(),
        "ErrorQuotaExceeded" => format!("{mailbox} is full: free space in it or raise its quota."),
        "ErrorMessageSizeExceeded" | "RequestEntityTooLarge" => "The message is larger than the mailbox or Graph allows.".to_string(),
        "TooManyRequests" | "ApplicationThrottled" => "Graph is throttling this app or mailbox: wait for Retry-After and try again.".to_string(),
        _ => format!("Graph answered {code}: see https://learn.microsoft.com/graph/errors and the request-id above."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_known_aadsts_code_has_one_sentence_naming_it() {
        // (error, codes, words the explanation must contain)
        let table: [(&str, &[u64], &str); 17] = [
            ("invalid_tenant", &[90002], "auth.tenant_id"),
            ("invalid_request", &[900023], "Directory (tenant) ID"),
            ("unauthorized_client", &[700016], "auth.client_id"),
            ("invalid_client", &[7000215], "Value"),
            ("invalid_client", &[7000222], "expired"),
            ("invalid_client", &[7000218], "auth.certificate_file"),
            ("invalid_client", &[700027], "upload"),
            ("invalid_client", &[700024], "clock"),
            ("invalid_scope", &[70011], "/.default"),
            ("invalid_scope", &[1002012], "/.default"),
            ("invalid_scope", &[700022], "more than one resource"),
            ("invalid_resource", &[500011], "auth.cloud"),
            ("unauthorized_client", &[7000112], "disabled"),
            ("access_denied", &[53003], "Conditional Access"),
            ("invalid_request", &[9001023], "/common"),
            ("invalid_request", &[900144], "required"),
            ("temporarily_unavailable", &[90033], "transient"),
        ];
        for (error, codes, words) in table {
            let sentences = token_refusal(error, codes);
            assert_eq!(sentences.len(), 1, "{codes:?}");
            let code = format!("AADSTS{}", codes[0]);
            assert!(
                sentences[0].starts_with(&code) || codes[0] == 900144,
                "{codes:?}"
            );
            assert!(sentences[0].contains(words), "{codes:?}: {}", sentences[0]);
        }
    }

    #[test]
    fn unknown_codes_fall_back_on_the_error_value_never_the_description() {
        let table = [
            ("invalid_client", "auth.client_secret"),
            ("unauthorized_client", "auth.client_id"),
            ("invalid_scope", "auth.scope"),
            ("invalid_tenant", "auth.tenant_id"),
            ("something_new", "look the AADSTS code up"),
        ];
        for (error, words) in table {
            let sentences = token_refusal(error, &[1]);
            assert!(sentences[0].contains(words), "{error}: {sentences:?}");
        }
        assert_eq!(
            token_refusal("invalid_client", &[7000215, 7000222]).len(),
            2
        );
    }

    #[test]
    fn graph_codes_become_cause_and_fix() {
        // (code, message, words the explanation must contain)
        let table = [
            (
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
                "RBAC for Applications",
            ),
            (
                "ErrorAccessDenied",
                "Access to OData is disabled.",
                "application access policy",
            ),
            (
                "NoPermissionsInAccessToken",
                "The token contains no permissions",
                "admin consent",
            ),
            (
                "ErrorInvalidUser",
                "The requested user 'x' is invalid.",
                "not a user",
            ),
            (
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive",
                "licence",
            ),
            (
                "ErrorSendAsDenied",
                "…does not have the right to send mail on behalf",
                "Send As",
            ),
            (
                "ResourceNotFound",
                "Resource could not be discovered.",
                "not found",
            ),
            (
                "InvalidAuthenticationToken",
                "Access token has expired",
                "auth.cloud",
            ),
            ("SomethingNew", "?", "SomethingNew"),
        ];
        for (code, message, words) in table {
            let text = graph_refusal(code, message, "scanner@contoso.com");
            assert!(text.contains(words), "{code} {message}: {text}");
        }
    }
}
