//! What a failed attempt means and when the next one happens: [`classify`] turns an answer into
//! a [`Class`], [`RetryPolicy::decide`] turns that class into a retry time, a pause of the
//! mailbox or profile, or a failure. Both are pure; the scheduler applies their verdicts.

use std::time::Duration;

/// Share of a backoff delay taken off at random, so queued messages do not retry in lockstep.
const JITTER: f64 = 0.25;

/// What went wrong in one attempt, as far as classification needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// Graph answered with an error status and its error code.
    Graph { status: u16, code: &'a str },
    /// Entra refused the token request with this OAuth error (`invalid_client`, …).
    Token { error: &'a str, retryable: bool },
    /// No answer from Graph or Entra. `outcome_unknown` when the request may have arrived.
    Unreachable { outcome_unknown: bool },
    /// The message cannot be turned into a Graph request.
    Conversion,
    /// The relay could not read its own spool entry.
    Local,
}

/// Whose requests a configuration fault stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    /// The sending mailbox (no Send As right, unlicensed, full).
    Mailbox,
    /// The authentication profile: every mailbox sent through its credentials.
    Profile,
}

/// The class of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 429 or 503: wait for Retry-After (else back off), pausing the whole mailbox.
    Throttled,
    /// Other 5xx, connect failures: exponential backoff with jitter.
    Transient,
    /// Timeout or reset after the request was sent: Graph may have accepted it. Retried like
    /// [`Class::Transient`], and counted, since the retry may duplicate the message.
    Ambiguous,
    /// A first 401: drop the cached token and send again at once.
    RefreshToken,
    /// Something an administrator must fix; the scope pauses until `queue.fault_retry`.
    ConfigFault {
        scope: FaultScope,
        fix: &'static str,
    },
    /// 413: too large for one request (the upload path takes these once it exists).
    TooLarge,
    /// Graph will never accept this message as it is.
    Permanent,
}

/// Classifies one failure. `tries` counts the requests already made for this attempt, so a
/// 401 is answered by a new token once and is a configuration fault on the fresh token.
pub fn classify(failure: Failure<'_>, tries: u32) -> Class {
    use FaultScope::{Mailbox, Profile};
    let fault = |scope, fix| Class::ConfigFault { scope, fix };
    match failure {
        Failure::Graph { status, code } => match (status, code) {
            (401, "NoPermissionsInAccessToken") => fault(Profile, FIX_CONSENT),
            (401, _) if tries == 0 => Class::RefreshToken,
            (401, _) => fault(Profile, FIX_CONSENT),
            (_, "ErrorSendAsDenied") => fault(Mailbox, FIX_SEND_AS),
            (_, "ErrorAccessDenied") => fault(Mailbox, FIX_ACCESS),
            (_, "MailboxNotEnabledForRESTAPI") => fault(Mailbox, FIX_LICENCE),
            (_, "ErrorQuotaExceeded") => fault(Mailbox, FIX_QUOTA),
            (429 | 503, _) => Class::Throttled,
            (413, _) => Class::TooLarge,
            (408, _) => Class::Ambiguous,
            (500..=599, _) => Class::Ambiguous,
            _ => Class::Permanent,
        },
        Failure::Token { error, retryable } => match error {
            "invalid_client" | "unauthorized_client" => fault(Profile, FIX_CREDENTIALS),
            _ if retryable => Class::Transient,
            _ => fault(Profile, FIX_CREDENTIALS),
        },
        Failure::Unreachable {
            outcome_unknown: true,
        } => Class::Ambiguous,
        Failure::Unreachable {
            outcome_unknown: false,
        }
        | Failure::Local => Class::Transient,
        Failure::Conversion => Class::Permanent,
    }
}

const FIX_CONSENT: &str = "grant the app the Mail.Send application permission and admin consent \
     in Entra (changes take up to 2 hours to apply)";
const FIX_SEND_AS: &str = "send from the mailbox itself, or give the app Send As rights on it";
const FIX_ACCESS: &str = "allow the app to send as this mailbox (Mail.Send application \
     permission, application access policy or RBAC management scope)";
const FIX_LICENCE: &str = "use a licensed Exchange Online mailbox (not on-premises, not inactive)";
const FIX_QUOTA: &str = "free space in the sending mailbox or raise its quota";
const FIX_CREDENTIALS: &str = "check auth.tenant_id, auth.client_id and the client secret or \
     certificate (expired?) of the app registration";

/// What happens to a message after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this wall-clock time (Unix ms); `pause` stops its mailbox or profile
    /// until then.
    Retry { at_ms: u64, pause: Option<Pause> },
    /// Give up: the message goes to `failed/`.
    Fail { why: &'static str },
}

/// A pause of a mailbox or a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub scope: FaultScope,
    pub until_ms: u64,
    /// After the pause, send one message at a time until one is delivered (configuration
    /// faults), rather than the full concurrency (throttling).
    pub probe: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetryPolicyError {
    #[error("the first retry delay must be longer than 0s")]
    ZeroInitial,
    #[error("the longest retry delay must not be shorter than the first")]
    MaxBelowInitial,
    #[error("the maximum age must not be shorter than the longest retry delay")]
    AgeBelowMax,
    #[error("the configuration-fault retry interval must be longer than 0s")]
    ZeroFaultRetry,
}

impl RetryPolicyError {
    /// A policy is built once from validated configuration; a wrong one stays wrong.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The retry schedule: a validated value, so every decision made with it is sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    initial: Duration,
    max: Duration,
    max_age: Duration,
    fault_retry: Duration,
}

impl RetryPolicy {
    /// # Errors
    /// A zero or inconsistent duration.
    pub fn try_new(
        initial: Duration,
        max: Duration,
        max_age: Duration,
        fault_retry: Duration,
    ) -> Result<Self, RetryPolicyError> {
        if initial.is_zero() {
            return Err(RetryPolicyError::ZeroInitial);
        }
        if max < initial {
            return Err(RetryPolicyError::MaxBelowInitial);
        }
        if max_age < max {
            return Err(RetryPolicyError::AgeBelowMax);
        }
        if fault_retry.is_zero() {
            return Err(RetryPolicyError::ZeroFaultRetry);
        }
        Ok(Self {
            initial,
            max,
            max_age,
            fault_retry,
        })
    }

    /// Backoff before attempt `attempts + 1`: `initial` doubled per earlier failure, capped at
    /// `max`, then shortened by up to a quarter according to `jitter` (in `[0, 1)`).
    pub fn backoff(&self, attempts: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1));
        let base = self.initial.saturating_mul(factor).min(self.max);
        base.mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
    }

    /// Decides after the `attempts`-th failed attempt of a message accepted at
    /// `received_at_ms`. Retry-After is kept exactly (Graph counts early retries against us).
    pub fn decide(
        &self,
        class: Class,
        retry_after: Option<Duration>,
        attempts: u32,
        received_at_ms: u64,
        now_ms: u64,
        jitter: f64,
    ) -> Decision {
        let after = |delay: Duration| now_ms.saturating_add(delay.as_millis() as u64);
        match class {
            Class::Permanent => return Decision::Fail { why: "refused" },
            Class::TooLarge => {
                return Decision::Fail {
                    why: "too large for one request",
                };
            }
            _ => {}
        }
        if now_ms.saturating_sub(received_at_ms) >= self.max_age.as_millis() as u64 {
            return Decision::Fail {
                why: "not delivered within queue.max_age",
            };
        }
        match class {
            Class::Throttled => {
                let until_ms = after(retry_after.unwrap_or_else(|| self.backoff(attempts, jitter)));
                Decision::Retry {
                    at_ms: until_ms,
                    pause: Some(Pause {
                        scope: FaultScope::Mailbox,
                        until_ms,
                        probe: false,
                    }),
                }
            }
            Class::ConfigFault { scope, .. } => {
                let until_ms = after(self.fault_retry);
                Decision::Retry {
                    at_ms: until_ms,
                    pause: Some(Pause {
                        scope,
                        until_ms,
                        probe: true,
                    }),
                }
            }
            Class::Transient | Class::Ambiguous | Class::RefreshToken => Decision::Retry {
                at_ms: after(self.backoff(attempts, jitter)),
                pause: None,
            },
            Class::Permanent | Class::TooLarge => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaultScope::{Mailbox, Profile};

    fn policy() -> RetryPolicy {
        RetryPolicy::try_new(
            Duration::from_secs(30),
            Duration::from_secs(3600),
            Duration::from_secs(2 * 86_400),
            Duration::from_secs(300),
        )
        .unwrap()
    }

    fn graph(status: u16, code: &str) -> Failure<'_> {
        Failure::Graph { status, code }
    }

    fn is_fault(class: Class, expected: FaultScope) -> bool {
        matches!(class, Class::ConfigFault { scope, .. } if scope == expected)
    }

    #[test]
    fn every_documented_answer_has_its_class() {
        let cases: [(Failure, u32, Class); 19] = [
            (graph(429, "ApplicationThrottled"), 0, Class::Throttled),
            (graph(429, "TooManyRequests"), 3, Class::Throttled),
            (graph(503, "serviceNotAvailable"), 0, Class::Throttled),
            (graph(500, "generalException"), 0, Class::Ambiguous),
            (graph(502, ""), 0, Class::Ambiguous),
            (graph(504, ""), 0, Class::Ambiguous),
            (graph(408, ""), 0, Class::Ambiguous),
            (
                graph(401, "InvalidAuthenticationToken"),
                0,
                Class::RefreshToken,
            ),
            (graph(413, "RequestEntityTooLarge"), 0, Class::TooLarge),
            (graph(400, "ErrorInvalidRecipients"), 0, Class::Permanent),
            (graph(400, "ErrorMessageSizeExceeded"), 0, Class::Permanent),
            (
                graph(400, "ErrorMimeContentInvalidBase64String"),
                0,
                Class::Permanent,
            ),
            (graph(404, "ErrorInvalidUser"), 0, Class::Permanent),
            (graph(404, "ResourceNotFound"), 0, Class::Permanent),
            (
                Failure::Unreachable {
                    outcome_unknown: true,
                },
                0,
                Class::Ambiguous,
            ),
            (
                Failure::Unreachable {
                    outcome_unknown: false,
                },
                0,
                Class::Transient,
            ),
            (
                Failure::Token {
                    error: "temporarily_unavailable",
                    retryable: true,
                },
                0,
                Class::Transient,
            ),
            (Failure::Conversion, 0, Class::Permanent),
            (Failure::Local, 0, Class::Transient),
        ];
        for (failure, tries, expected) in cases {
            assert_eq!(
                classify(failure, tries),
                expected,
                "{failure:?} try {tries}"
            );
        }
    }

    #[test]
    fn configuration_faults_name_their_scope() {
        let cases: [(Failure, u32, FaultScope); 9] = [
            (graph(401, "NoPermissionsInAccessToken"), 0, Profile),
            (graph(401, "InvalidAuthenticationToken"), 1, Profile),
            (graph(403, "ErrorAccessDenied"), 0, Mailbox),
            (graph(403, "ErrorSendAsDenied"), 0, Mailbox),
            (graph(404, "MailboxNotEnabledForRESTAPI"), 0, Mailbox),
            (graph(403, "ErrorQuotaExceeded"), 0, Mailbox),
            (
                Failure::Token {
                    error: "invalid_client",
                    retryable: false,
                },
                0,
                Profile,
            ),
            (
                Failure::Token {
                    error: "unauthorized_client",
                    retryable: false,
                },
                0,
                Profile,
            ),
            (
                Failure::Token {
                    error: "invalid_request",
                    retryable: false,
                },
                0,
                Profile,
            ),
        ];
        for (failure, tries, scope) in cases {
            let class = classify(failure, tries);
            assert!(is_fault(class, scope), "{failure:?}: {class:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_max_and_jitter_only_shortens() {
        let p = policy();
        let delays: Vec<u64> = (1..=9).map(|a| p.backoff(a, 0.0).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_secs(3600));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(22_500));
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(52_500));
    }

    #[test]
    fn decisions_follow_the_class() {
        let p = policy();
        let now = 1_000_000;
        let mailbox_pause = |until_ms, probe| {
            Some(Pause {
                scope: Mailbox,
                until_ms,
                probe,
            })
        };
        let cases = [
            // Retry-After kept to the millisecond, pausing the mailbox.
            (
                Class::Throttled,
                Some(2_128),
                1,
                Decision::Retry {
                    at_ms: now + 2_128,
                    pause: mailbox_pause(now + 2_128, false),
                },
            ),
            // No Retry-After: backoff, still pausing the mailbox.
            (
                Class::Throttled,
                None,
                2,
                Decision::Retry {
                    at_ms: now + 60_000,
                    pause: mailbox_pause(now + 60_000, false),
                },
            ),
            (
                Class::Transient,
                None,
                1,
                Decision::Retry {
                    at_ms: now + 30_000,
                    pause: None,
                },
            ),
            // A Retry-After on a 5xx without throttling is not a pause.
            (
                Class::Ambiguous,
                Some(1),
                3,
                Decision::Retry {
                    at_ms: now + 120_000,
                    pause: None,
                },
            ),
            (
                Class::ConfigFault {
                    scope: Mailbox,
                    fix: FIX_SEND_AS,
                },
                None,
                7,
                Decision::Retry {
                    at_ms: now + 300_000,
                    pause: mailbox_pause(now + 300_000, true),
                },
            ),
            (
                Class::ConfigFault {
                    scope: Profile,
                    fix: FIX_CREDENTIALS,
                },
                None,
                1,
                Decision::Retry {
                    at_ms: now + 300_000,
                    pause: Some(Pause {
                        scope: Profile,
                        until_ms: now + 300_000,
                        probe: true,
                    }),
                },
            ),
            (Class::Permanent, None, 1, Decision::Fail { why: "refused" }),
            (
                Class::TooLarge,
                None,
                1,
                Decision::Fail {
                    why: "too large for one request",
                },
            ),
        ];
        for (class, retry_after, attempts, expected) in cases {
            let got = p.decide(
                class,
                retry_after.map(Duration::from_millis),
                attempts,
                now - 1,
                now,
                0.0,
            );
            assert_eq!(got, expected, "{class:?}");
        }
    }

    #[test]
    fn every_retryable_class_ages_out_at_max_age() {
        let p = policy();
        let max_age_ms = 2 * 86_400_000;
        let classes = [
            Class::Throttled,
            Class::Transient,
            Class::Ambiguous,
            Class::ConfigFault {
                scope: Mailbox,
                fix: FIX_QUOTA,
            },
        ];
        for class in classes {
            let young = p.decide(class, None, 5, 0, max_age_ms - 1, 0.5);
            assert!(matches!(young, Decision::Retry { .. }), "{class:?}");
            let old = p.decide(class, None, 5, 0, max_age_ms, 0.5);
            assert_eq!(
                old,
                Decision::Fail {
                    why: "not delivered within queue.max_age"
                }
            );
        }
    }

    #[test]
    fn inconsistent_policies_are_refused() {
        let s = Duration::from_secs;
        let cases = [
            ((s(0), s(1), s(2), s(1)), RetryPolicyError::ZeroInitial),
            ((s(2), s(1), s(2), s(1)), RetryPolicyError::MaxBelowInitial),
            ((s(1), s(3), s(2), s(1)), RetryPolicyError::AgeBelowMax),
            ((s(1), s(1), s(1), s(0)), RetryPolicyError::ZeroFaultRetry),
        ];
        for ((initial, max, age, fault), expected) in cases {
            assert_eq!(
                RetryPolicy::try_new(initial, max, age, fault),
                Err(expected)
            );
        }
    }
}
