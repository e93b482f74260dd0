//! A stream's end at its token's `exp`: first, when configured, `event: expiring` a notice
//! ahead, then `event: expired` at `exp`, after which the stream ends. Neither event has an
//! `id:`, so the client's `lastEventId` stays the last event it received and it resumes from
//! there with a fresh token.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use crate::auth::keys::Revocation;
use crate::sse;

/// Event type sent shortly before the token expires.
pub const EVENT_EXPIRING: &str = "expiring";
/// Event type of the last event of a stream whose token expired.
pub const EVENT_EXPIRED: &str = "expired";

/// The latest a stream's token clock looks: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// What is due on a stream whose token expires.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// The notice: the stream goes on.
    Notice(Bytes),
    /// The last event: the stream ends after it.
    Expired(Bytes),
    /// The last event of a stream whose token's key left the key set: it ends after it.
    Revoked(Bytes),
}

/// The clock of one stream's token.
pub struct Expiry {
    exp: u64,
    at: Instant,
    notice_pending: bool,
    sleep: Pin<Box<Sleep>>,
    /// The key that verified the token, while it may be revoked.
    revocation: Option<Revocation>,
}

impl Expiry {
    /// The clock of a token expiring at `exp` (seconds since the epoch), `now_unix` being the
    /// wall clock now; a notice `notice` ahead of it (zero: none).
    pub fn new(exp: u64, now_unix: Duration, notice: Duration) -> Expiry {
        // A token may say it never expires (exp far in the future): the stream's end is then
        // capped, not an overflow.
        let left = Duration::from_secs(exp)
            .saturating_sub(now_unix)
            .min(FAR_FUTURE);
        let at = Instant::now() + left;
        let notice_pending = !notice.is_zero();
        let first = if notice_pending {
            at.checked_sub(notice).unwrap_or_else(Instant::now)
        } else {
            at
        };
        Expiry {
            exp,
            at,
            notice_pending,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            revocation: None,
        }
    }

    /// Ends the stream early, with `event: expired` and "the signing key was revoked", when
    /// the key that verified its token leaves the key set.
    pub fn watching(mut self, revocation: Revocation) -> Expiry {
        self.revocation = Some(revocation);
        self
    }

    /// The notice or the last event, once due.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        if let Some(revocation) = self.revocation.as_mut() {
            if revocation.poll_revoked(cx) {
                self.revocation = None;
                let data = format!(
                    "{{\"reason\":\"the signing key was revoked\",\"exp\":{}}}",
                    self.exp
                );
                return Poll::Ready(Due::Revoked(sse::event(Some(EVENT_EXPIRED), "", &data)));
            }
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.notice_pending {
            self.notice_pending = false;
            let in_secs = self.at.saturating_duration_since(Instant::now()).as_secs();
            self.sleep.as_mut().reset(self.at);
            // Registers the timer for the end (or asks to be polled again if it is due).
            if self.sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
            let data = format!("{{\"exp\":{},\"seconds\":{in_secs}}}", self.exp);
            return Poll::Ready(Due::Notice(sse::event(Some(EVENT_EXPIRING), "", &data)));
        }
        let data = format!(
            "{{\"reason\":\"the access token expired\",\"exp\":{}}}",
            self.exp
        );
        Poll::Ready(Due::Expired(sse::event(Some(EVENT_EXPIRED), "", &data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn next(e: &mut Expiry) -> Due {
        poll_fn(|cx| e.poll(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn notice_then_expired_at_exp() {
        let start = Instant::now();
        let mut e = Expiry::new(
            1_000_100,
            Duration::from_secs(1_000_000),
            Duration::from_secs(30),
        );
        let Due::Notice(notice) = next(&mut e).await else {
            panic!("the notice comes first");
        };
        assert_eq!(start.elapsed(), Duration::from_secs(70));
        assert_eq!(
            &notice[..],
            b"event: expiring\ndata: {\"exp\":1000100,\"seconds\":30}\n\n"
        );
        let Due::Expired(last) = next(&mut e).await else {
            panic!("then the end");
        };
        assert_eq!(start.elapsed(), Duration::from_secs(100));
        assert_eq!(
            &last[..],
            b"event: expired\ndata: {\"reason\":\"the access token expired\",\"exp\":1000100}\n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_closer_to_exp_than_the_notice_gets_it_at_once() {
        let start = Instant::now();
        let mut e = Expiry::new(
            1_000_010,
            Duration::from_secs(1_000_000),
            Duration::from_secs(30),
        );
        assert!(matches!(next(&mut e).await, Due::Notice(_)));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(matches!(next(&mut e).await, Due::Expired(_)));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_notice_only_the_end() {
        let start = Instant::now();
        let mut e = Expiry::new(1_000_005, Duration::from_secs(1_000_000), Duration::ZERO);
        assert!(matches!(next(&mut e).await, Due::Expired(_)));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exp_at_the_end_of_time_does_not_overflow() {
        let mut e = Expiry::new(
            u64::MAX,
            Duration::from_secs(1_000_000),
            Duration::from_secs(30),
        );
        let early = tokio::time::timeout(Duration::from_secs(86_400), next(&mut e)).await;
        assert!(early.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_due_before_its_time() {
        let mut e = Expiry::new(
            1_000_100,
            Duration::from_secs(1_000_000),
            Duration::from_secs(30),
        );
        let early = tokio::time::timeout(Duration::from_secs(69), next(&mut e)).await;
        assert!(early.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_key_ends_the_stream_at_once_with_its_reason() {
        use crate::auth::keys::KeySet;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let old = KeySet::parse(pair.public_key_pem().as_bytes()).unwrap();
        let life = old
            .candidates(None, jsonwebtoken::Algorithm::ES256)
            .next()
            .unwrap()
            .life
            .clone();
        let start = Instant::now();
        let mut e = Expiry::new(
            1_000_100,
            Duration::from_secs(1_000_000),
            Duration::from_secs(30),
        )
        .watching(life.watch());
        let waiting = tokio::spawn(async move { next(&mut e).await });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished());
        // Another key takes its place in the file.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut new = KeySet::parse(other.public_key_pem().as_bytes()).unwrap();
        assert_eq!(new.replace(&old), 1);
        let Due::Revoked(last) = waiting.await.unwrap() else {
            panic!("the revocation ends the stream");
        };
        assert_eq!(start.elapsed(), Duration::from_secs(10), "at once");
        assert_eq!(
            &last[..],
            b"event: expired\ndata: {\"reason\":\"the signing key was revoked\",\"exp\":1000100}\n\n"
        );
    }
}
