//! Per-client limits on streams: how fast one connection may open streams (a token bucket),
//! and how many streams the gateway holds in total. Over either, a request gets `429` with
//! `Retry-After`; both are counted in `ksg_streams_refused_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long a client refused for the total stream limit is asked to wait.
pub const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Stream opens allowed on one connection: `burst` at once, then `rate` per second.
pub struct OpenRate {
    rate: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl OpenRate {
    /// A bucket that starts full; `rate` zero means no limit.
    pub fn new(rate: u32, burst: u32) -> OpenRate {
        let burst = f64::from(burst.max(1));
        OpenRate {
            rate: f64::from(rate),
            burst,
            bucket: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one open, or says how long until one is available.
    pub fn try_open(&self) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut bucket = self.bucket.lock();
        let now = Instant::now();
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            Ok(())
        } else {
            *bucket = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

/// Streams open in the whole gateway, against `KSG_MAX_STREAMS`.
pub struct StreamSlots {
    open: AtomicUsize,
    max: usize,
}

/// One stream's place in [`StreamSlots`], given back when dropped.
pub struct Slot(Arc<StreamSlots>);

impl StreamSlots {
    /// Room for `max` streams.
    pub fn new(max: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, or `None` when every one is taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Streams holding a slot now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `Retry-After` value for a wait: whole seconds, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let r = OpenRate::new(10, 3);
        assert!(r.try_open().is_ok());
        assert!(r.try_open().is_ok());
        assert!(r.try_open().is_ok());
        let wait = r.try_open().unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(r.try_open().is_ok());
        assert!(r.try_open().is_err());
        // Idle time refills up to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(r.try_open().is_ok());
        }
        assert!(r.try_open().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_is_no_limit() {
        let r = OpenRate::new(0, 1);
        for _ in 0..10_000 {
            assert!(r.try_open().is_ok());
        }
    }

    #[test]
    fn slots_are_given_back_when_dropped() {
        let slots = StreamSlots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        assert_eq!(slots.open(), 2);
        drop(a);
        assert!(slots.take().is_some());
        assert_eq!(slots.open(), 1);
    }
}
