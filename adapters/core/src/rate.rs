//! Request quotas of a vendor API ("N calls per minute") as an in-process rate gate.
//!
//! Vendors count calls in a sliding window. `governor::Quota::per_minute(n)` is a GCRA whose
//! burst is the whole quota: a full bucket lets `n` calls through at once and then refills at
//! `n` per minute, so one sliding minute can see almost `2n` calls and the vendor answers 429.
//! [`window_quota`] keeps any window of the given length at `limit` calls or fewer.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

/// A quota that admits at most `limit` calls in any sliding `window`: a burst of a tenth of
/// the limit (at least 1) and the rest spread evenly over the window. A GCRA with burst `b` and
/// one cell per `T` admits at most `b + ⌊(w − ε) / T⌋` calls in a span `w` (the bucket never
/// holds more than `b`); with `T = window / (limit − b + 1)` that is `limit`.
pub fn window_quota(limit: NonZeroU32, window: Duration) -> Quota {
    let burst = (limit.get() / 10).max(1);
    let spread = limit.get() - burst + 1;
    let period = (window / spread).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).unwrap_or_else(|| Quota::per_second(limit)).allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use governor::RateLimiter;
    use governor::clock::{Clock, FakeRelativeClock, Reference};

    use super::*;

    /// Calls granted in every window of a minute, stepping a fake clock by 10 ms while
    /// callers press as hard as they can: never more than the limit.
    #[test]
    fn no_sliding_window_sees_more_than_the_limit() {
        for limit in [1, 2, 7, 60, 600, 4000, 6000] {
            let clock = FakeRelativeClock::default();
            let window = Duration::from_secs(60);
            let gate = RateLimiter::direct_with_clock(
                window_quota(NonZeroU32::new(limit).unwrap(), window),
                clock.clone(),
            );
            let start = clock.now();
            let mut granted: Vec<Duration> = Vec::new();
            let step = Duration::from_millis(10);
            while Duration::from(clock.now().duration_since(start)) < Duration::from_secs(180) {
                while gate.check().is_ok() {
                    granted.push(clock.now().duration_since(start).into());
                }
                clock.advance(step);
            }
            // The busiest window starting at a grant.
            let mut busiest = 0;
            for (i, t) in granted.iter().enumerate() {
                let inside = granted[i..].iter().take_while(|u| **u < *t + window).count();
                busiest = busiest.max(inside);
            }
            assert!(busiest <= limit as usize, "{limit}/min: {busiest} in one window");
            // And the quota is used: three minutes admit most of three limits.
            assert!(granted.len() as u32 >= 2 * limit, "{limit}/min: {} granted", granted.len());
        }
    }
}
