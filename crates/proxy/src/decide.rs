//! What to do after an attempt that did not succeed: a pure function of what happened
//! and of the attempt, so that every rule of retry, fallback and return can be read in
//! one table and tested over it.
//!
//! | what happened | account | then |
//! |---|---|---|
//! | no answer, timed out | — | give up (the provider may still be working on it, and charging for it) |
//! | no answer, unreachable | — | retry after a backoff |
//! | billing / free quota / invalid key, another account live | disable | retry at once (another account) |
//! | the same, on the last live account | cool down, suspect | return the provider's answer |
//! | throttled | cool down for the provider's wait, or the quota's | retry after a backoff |
//! | overloaded, server error | — | retry after a backoff |
//! | a retryable class the provider marks `x-should-retry: false` | — | return |
//! | anything else (the request itself is wrong, too large) | — | return |
//!
//! A retry with no attempts left becomes a fallback: the next model of the chain, or
//! the last failure's answer when there is none.

use std::time::Duration;

use sluice_provider::ErrorClass;

/// What one attempt came to, short of success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The request got no answer.
    Unanswered {
        /// The upstream timeout ran out (rather than a refused or reset connection).
        timeout: bool,
    },
    /// The provider answered with an error.
    Refused {
        /// What the error means.
        class: ErrorClass,
        /// The provider's `x-should-retry`, when it sent one.
        should_retry: Option<bool>,
        /// The provider's own wait (`Retry-After` and the like), when it said one.
        retry_after: Option<Duration>,
        /// Whether the account is the last one of the model still in rotation (asked
        /// only when the class would disable it).
        last_live: bool,
    },
}

/// What happens to the account that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AccountAction {
    /// Nothing.
    Keep,
    /// Out of rotation on every model of its upstream, until an operator clears it.
    Disable,
    /// The last live account refused as dead: kept in rotation, cooled down for the
    /// default cooldown, until a second refusal corroborates it.
    Suspect,
    /// Cooled down: for the provider's wait when it said one, else for what the quota
    /// implies (`None`).
    Cooldown(Option<Duration>),
}

/// What the request does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Answer the client with the provider's own answer.
    Return,
    /// Try again on this model (any of its accounts), after a backoff or at once.
    Retry {
        /// Whether to wait the jittered backoff first.
        backoff: bool,
    },
    /// This model is spent: the next model of the fallback chain.
    Fallback,
    /// Stop and answer with this failure; no fallback.
    GiveUp,
}

/// The decision after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) account: AccountAction,
    pub(crate) then: Then,
}

/// Decides after attempt number `attempt` (1-based) of at most `max_attempts` on a
/// model.
pub(crate) fn decide(what: Attempt, attempt: u32, max_attempts: u32) -> Decision {
    let retry = |account, backoff| Decision {
        account,
        then: if attempt < max_attempts {
            Then::Retry { backoff }
        } else {
            Then::Fallback
        },
    };
    let stop = |account, then| Decision { account, then };
    match what {
        Attempt::Unanswered { timeout: true } => stop(AccountAction::Keep, Then::GiveUp),
        Attempt::Unanswered { timeout: false } => retry(AccountAction::Keep, true),
        Attempt::Refused {
            class, last_live, ..
        } if class.disables_account() => {
            if last_live {
                stop(AccountAction::Suspect, Then::Return)
            } else {
                retry(AccountAction::Disable, false)
            }
        }
        Attempt::Refused {
            class,
            should_retry,
            ..
        } if !class.is_retryable() || should_retry == Some(false) => {
            stop(AccountAction::Keep, Then::Return)
        }
        Attempt::Refused {
            class: ErrorClass::Throttled(_),
            retry_after,
            ..
        } => retry(AccountAction::Cooldown(retry_after), true),
        Attempt::Refused { .. } => retry(AccountAction::Keep, true),
    }
}

#[cfg(test)]
mod tests {
    use sluice_provider::ThrottleKind;

    use super::*;

    fn refused(class: ErrorClass) -> Attempt {
        Attempt::Refused {
            class,
            should_retry: None,
            retry_after: None,
            last_live: false,
        }
    }

    const WAIT: Duration = Duration::from_secs(7);

    #[test]
    fn the_table() {
        use AccountAction::*;
        use Then::*;
        let throttled = ErrorClass::Throttled(ThrottleKind::Tokens);
        let cases: Vec<(&str, Attempt, u32, Decision)> = vec![
            (
                "timeout",
                Attempt::Unanswered { timeout: true },
                1,
                Decision {
                    account: Keep,
                    then: GiveUp,
                },
            ),
            (
                "unreachable",
                Attempt::Unanswered { timeout: false },
                1,
                Decision {
                    account: Keep,
                    then: Retry { backoff: true },
                },
            ),
            (
                "unreachable, last attempt",
                Attempt::Unanswered { timeout: false },
                3,
                Decision {
                    account: Keep,
                    then: Fallback,
                },
            ),
            (
                "billing, others live",
                refused(ErrorClass::BillingExhausted),
                1,
                Decision {
                    account: Disable,
                    then: Retry { backoff: false },
                },
            ),
            (
                "invalid key, last attempt",
                refused(ErrorClass::InvalidKey),
                3,
                Decision {
                    account: Disable,
                    then: Fallback,
                },
            ),
            (
                "free quota, last live",
                Attempt::Refused {
                    class: ErrorClass::FreeQuotaExhausted,
                    should_retry: None,
                    retry_after: None,
                    last_live: true,
                },
                1,
                Decision {
                    account: Suspect,
                    then: Return,
                },
            ),
            (
                "throttled with a wait",
                Attempt::Refused {
                    class: throttled,
                    should_retry: None,
                    retry_after: Some(WAIT),
                    last_live: false,
                },
                1,
                Decision {
                    account: Cooldown(Some(WAIT)),
                    then: Retry { backoff: true },
                },
            ),
            (
                "throttled, no wait, last attempt",
                refused(throttled),
                3,
                Decision {
                    account: Cooldown(None),
                    then: Fallback,
                },
            ),
            (
                "overloaded",
                refused(ErrorClass::ProviderOverloaded),
                2,
                Decision {
                    account: Keep,
                    then: Retry { backoff: true },
                },
            ),
            (
                "server error",
                refused(ErrorClass::ServerError),
                1,
                Decision {
                    account: Keep,
                    then: Retry { backoff: true },
                },
            ),
            (
                "server error the provider says not to retry",
                Attempt::Refused {
                    class: ErrorClass::ServerError,
                    should_retry: Some(false),
                    retry_after: None,
                    last_live: false,
                },
                1,
                Decision {
                    account: Keep,
                    then: Return,
                },
            ),
            (
                "too large",
                refused(ErrorClass::RequestTooLarge),
                1,
                Decision {
                    account: Keep,
                    then: Return,
                },
            ),
            (
                "the request itself",
                refused(ErrorClass::Other),
                1,
                Decision {
                    account: Keep,
                    then: Return,
                },
            ),
        ];
        for (name, what, attempt, want) in cases {
            assert_eq!(decide(what, attempt, 3), want, "{name}");
        }
    }

    #[test]
    fn one_attempt_allowed_means_every_retry_is_a_fallback() {
        for class in [
            ErrorClass::ServerError,
            ErrorClass::ProviderOverloaded,
            ErrorClass::Throttled(ThrottleKind::Requests),
        ] {
            assert_eq!(
                decide(refused(class), 1, 1).then,
                Then::Fallback,
                "{class:?}"
            );
        }
    }
}
