//! Who may relay what: pure decisions the session asks at connect, RCPT TO, MAIL FROM and after
//! DATA. `Mail.Send` lets the app send as any mailbox to anyone, so these checks are what stands
//! between a compromised device and the tenant's reputation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::reply::Reply;
use crate::config::{ClientSpec, Domain, Network, SenderRule};

/// Whether a client address may connect to a listener with these networks.
pub fn network_allowed(networks: &[Network], ip: IpAddr) -> bool {
    networks.iter().any(|net| net.contains(ip))
}

/// The refusal for a recipient, if any: `553 5.1.3` for addresses Graph cannot take, so one bad
/// address cannot sink a whole message after its 250; `550 5.7.1` outside the allowed domains.
pub fn recipient_refusal(address: &str, allowed_domains: &[Domain]) -> Option<Reply> {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return Some(Reply::RECIPIENT_UNUSABLE);
    };
    // Graph sends to Internet domains only: no domain literal, no single-label host.
    if !crate::convert::is_plain_address(address) || !domain.contains('.') {
        return Some(Reply::RECIPIENT_UNUSABLE);
    }
    let allowed = allowed_domains.is_empty()
        || allowed_domains
            .iter()
            .any(|allowed| domain.eq_ignore_ascii_case(&allowed.0));
    (!allowed).then_some(Reply::RECIPIENT_DOMAIN_REFUSED)
}

/// Whether `sender` (envelope or From address) may be used by this client. No rules: anyone may.
/// Otherwise some rule covering the client must allow it and none covering the client deny it.
pub fn sender_allowed(
    rules: &BTreeMap<String, SenderRule>,
    client: IpAddr,
    user: Option<&str>,
    sender: &str,
) -> bool {
    if rules.is_empty() {
        return true;
    }
    let covering = || {
        rules.values().filter(|rule| {
            rule.clients.iter().any(|spec| match spec {
                ClientSpec::Any => true,
                ClientSpec::User(name) => user == Some(name.as_str()),
                ClientSpec::Network(net) => net.contains(client),
            })
        })
    };
    let denied = covering().any(|rule| rule.deny.iter().any(|p| p.matches(sender)));
    let allowed = covering().any(|rule| rule.allow.iter().any(|p| p.matches(sender)));
    allowed && !denied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(list: &[&str]) -> Vec<Domain> {
        list.iter().map(|d| d.parse().unwrap()).collect()
    }

    #[test]
    fn recipients_graph_cannot_take_get_553_and_foreign_domains_550() {
        let any: &[Domain] = &[];
        let contoso = domains(&["contoso.com"]);
        let cases: &[(&str, &[Domain], Option<u16>)] = &[
            ("alice@contoso.com", any, None),
            ("Alice@CONTOSO.com", &contoso, None),
            ("bob@fabrikam.com", any, None),
            ("bob@fabrikam.com", &contoso, Some(550)),
            ("bob@sub.contoso.com", &contoso, Some(550)),
            ("postmaster", any, Some(553)),
            ("a@[192.0.2.1]", any, Some(553)),
            ("\"a b\"@contoso.com", any, Some(553)),
            ("a@localhost", any, Some(553)),
            ("@contoso.com", any, Some(553)),
            ("a@contoso..com", any, Some(553)),
            // What smtp-proto leaves of quoted local parts: specials, controls, line ends.
            ("evil@attacker.example>, x@contoso.com", &contoso, Some(553)),
            ("a,b;c:d<e>@contoso.com", any, Some(553)),
            ("a\tb@contoso.com", any, Some(553)),
            ("a\u{0}b@contoso.com", any, Some(553)),
            ("a\u{85}b@contoso.com", any, Some(553)),
            ("a\u{2028}Bcc: b@contoso.com", any, Some(553)),
            ("a@contoso.com\u{7f}", any, Some(553)),
            ("a@con>toso.com", any, Some(553)),
            (".a@contoso.com", any, Some(553)),
            // Plain dot-atoms, ASCII or not, are fine.
            ("o'brien+tag@contoso.com", any, None),
            ("jörg.müller@bücher.example", any, None),
        ];

        for (address, allowed, code) in cases {
            let refusal = recipient_refusal(address, allowed);
            assert_eq!(refusal.map(|r| r.code), *code, "{address} with {allowed:?}");
        }
    }

    #[test]
    fn networks_match_ipv4_ipv6_and_mapped_clients() {
        let loopback = crate::config::SmtpConfig::default().allowed_networks;
        let lan: Vec<Network> = vec!["10.1.0.0/16".parse().unwrap(), "192.0.2.7".parse().unwrap()];
        let cases: &[(&[Network], &str, bool)] = &[
            (&loopback, "127.0.0.1", true),
            (&loopback, "127.9.9.9", true),
            (&loopback, "::1", true),
            (&loopback, "::ffff:127.0.0.1", true),
            (&loopback, "10.0.0.1", false),
            (&lan, "10.1.200.3", true),
            (&lan, "10.2.0.1", false),
            (&lan, "192.0.2.7", true),
            (&lan, "192.0.2.8", false),
        ];
        for (networks, ip, expected) in cases {
            assert_eq!(
                network_allowed(networks, ip.parse().unwrap()),
                *expected,
                "{ip}"
            );
        }
    }

    fn rule(clients: &[&str], allow: &[&str], deny: &[&str]) -> SenderRule {
        SenderRule {
            clients: clients.iter().map(|c| c.parse().unwrap()).collect(),
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            deny: deny.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn sender_policy_allows_by_network_or_user_and_deny_wins() {
        let rules = BTreeMap::from([
            (
                "scanners".to_string(),
                rule(&["10.0.0.0/24"], &["scanner@contoso.com"], &[]),
            ),
            (
                "app".to_string(),
                rule(&["user:erp"], &["@contoso.com"], &["ceo@contoso.com"]),
            ),
            ("admins".to_string(), rule(&["127.0.0.1"], &["*"], &[])),
        ]);
        let scanner: IpAddr = "10.0.0.5".parse().unwrap();
        let elsewhere: IpAddr = "10.9.0.5".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let cases: &[(IpAddr, Option<&str>, &str, bool)] = &[
            (scanner, None, "scanner@contoso.com", true),
            (scanner, None, "SCANNER@Contoso.com", true),
            (scanner, None, "other@contoso.com", false),
            (elsewhere, None, "scanner@contoso.com", false),
            (elsewhere, Some("erp"), "billing@contoso.com", true),
            (elsewhere, Some("erp"), "ceo@contoso.com", false),
            (elsewhere, Some("erp"), "x@fabrikam.com", false),
            (elsewhere, Some("other"), "billing@contoso.com", false),
            (local, None, "anyone@anywhere.example", true),
            (local, None, "", true),
        ];
        for (ip, user, sender, expected) in cases {
            assert_eq!(
                sender_allowed(&rules, *ip, *user, sender),
                *expected,
                "{ip} {user:?} {sender}"
            );
        }
        assert!(sender_allowed(&BTreeMap::new(), scanner, None, "a@b.c"));
    }

    #[test]
    fn patterns_and_client_specs_parse_and_print_back() {
        for text in ["*", "@contoso.com", "a@contoso.com"] {
            assert_eq!(
                text.parse::<crate::config::SenderPattern>()
                    .unwrap()
                    .to_string(),
                text
            );
        }
        for text in ["*", "user:erp", "10.0.0.0/24"] {
            assert_eq!(text.parse::<ClientSpec>().unwrap().to_string(), text);
        }
        for bad in ["contoso", "a@", "@", "a@b c"] {
            assert!(
                bad.parse::<crate::config::SenderPattern>().is_err(),
                "{bad}"
            );
        }
        for bad in ["user:", "10.0.0.0/33", "somewhere"] {
            assert!(bad.parse::<ClientSpec>().is_err(), "{bad}");
        }
    }
}
