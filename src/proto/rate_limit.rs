//! A token bucket: the per-connection limit on how fast a client may send.
//!
//! The textbook bucket holds up to `burst` tokens, gains `rate` tokens per
//! second, and every request takes one. Counting tokens that way needs the
//! count, the time of the last update, the rate and the burst. This bucket
//! behaves identically but stores less: it remembers only the instant at
//! which it will be full again, and works out from that how many tokens are
//! missing. The arithmetic is on [`Duration`]s (whole nanoseconds), so a
//! long-lived connection never accumulates floating-point drift.
//!
//! Like the room, it never reads the clock: the caller passes `now`.
//!
//! [`RateLimit`] is the limit itself, as the server's flags set it and as
//! `welcome` announces it, so that a client can pace itself under it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A per-connection rate limit: what `--rate-limit` and `--rate-burst`
/// set, and what `welcome` carries as
/// `"rate_limit":{"per_second":10.0,"burst":20}`. A client that knows the
/// limit can send a pasted or piped burst at a pace the server accepts,
/// instead of guessing (and being refused when it guesses high, or slow
/// for nothing when it guesses low).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests per second a connection may sustain; 0 means no limit.
    pub per_second: f64,
    /// Requests a connection may send at once before the limit applies.
    pub burst: u32,
}

/// A rate is never NaN (the server's flag refuses it, and JSON cannot
/// spell it), so equality is total, as the messages that carry a limit
/// need.
impl Eq for RateLimit {}

impl RateLimit {
    /// The server's default limit, which a client also assumes of a server
    /// that does not announce one: 10 a second suits a person typing, even
    /// fast, and a burst of 20 lets a short paste through at once.
    pub const DEFAULT: RateLimit = RateLimit {
        per_second: 10.0,
        burst: 20,
    };

    /// A full bucket that enforces this limit from `now`.
    pub fn bucket(self, now: Instant) -> TokenBucket {
        TokenBucket::new(self.per_second, self.burst, now)
    }
}

/// Allows `burst` requests at once and `rate` per second after that.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// How long the bucket takes to regain one token; zero means unlimited,
    /// since then every token comes back at once.
    per_token: Duration,
    /// How long an empty bucket takes to fill up: `burst` times `per_token`.
    /// No more than this much refill time may ever be owed.
    capacity: Duration,
    /// When the bucket will be full again if nothing more is taken; at or
    /// before `now` means it is full. The tokens missing at `now` are
    /// `(full_at - now) / per_token`.
    full_at: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second sustained, `burst` tokens at most; rate 0 means unlimited (always allows).
    ///
    /// A `burst` of 0 with a nonzero rate refuses everything: the bucket has
    /// no room for even one token.
    ///
    /// # Panics
    ///
    /// If `rate` is negative or NaN. A positive rate so small that one token
    /// takes hundreds of billions of years overflows the time arithmetic and
    /// panics too, here or in [`try_take`](Self::try_take); no real limit
    /// comes near it.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        assert!(rate >= 0.0, "a rate limit cannot be negative or NaN");
        let per_token = if rate == 0.0 {
            Duration::ZERO
        } else {
            // An infinite rate lands here too, as zero: unlimited, rightly.
            Duration::from_secs_f64(rate.recip())
        };
        TokenBucket {
            per_token,
            // Saturating keeps an absurd burst from panicking; a capacity of
            // half a trillion years is as good as unbounded.
            capacity: per_token.saturating_mul(burst),
            // The bucket starts full.
            full_at: now,
        }
    }

    /// Takes one token if there is one; false means the request must be refused with `rate_limited`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        // The refill time owed right now, zero when the bucket is full, and
        // what it would be after taking one more token.
        let owed = self.full_at.saturating_duration_since(now) + self.per_token;
        if owed > self.capacity {
            return false;
        }
        self.full_at = now + owed;
        true
    }

    /// How long from `now` until [`try_take`](Self::try_take) will give a
    /// token: zero when it would now. A caller that paces itself sleeps
    /// this long instead of polling. (A bucket with a burst of 0 never
    /// gives one; the answer is then one token's refill time, so that a
    /// caller that tries again anyway does not spin.)
    pub fn wait(&self, now: Instant) -> Duration {
        let owed = self.full_at.saturating_duration_since(now) + self.per_token;
        owed.saturating_sub(self.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes as many tokens as the bucket gives at `now`, stopping at
    /// `limit` so an unlimited bucket cannot loop forever.
    fn take_all(bucket: &mut TokenBucket, now: Instant, limit: u32) -> u32 {
        let mut taken = 0;
        while taken < limit && bucket.try_take(now) {
            taken += 1;
        }
        taken
    }

    #[test]
    fn starts_full_and_refuses_past_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 5, start);
        assert_eq!(take_all(&mut bucket, start, 100), 5);
        assert!(!bucket.try_take(start));
    }

    #[test]
    fn refills_at_the_rate() {
        let start = Instant::now();
        // Two tokens a second: one every 500 ms, exactly representable.
        let mut bucket = TokenBucket::new(2.0, 5, start);
        assert_eq!(take_all(&mut bucket, start, 100), 5);
        // Just short of one token's refill time: still nothing.
        assert!(!bucket.try_take(start + Duration::from_millis(499)));
        // At exactly 500 ms one token is back, and only one.
        let half_second = start + Duration::from_millis(500);
        assert!(bucket.try_take(half_second));
        assert!(!bucket.try_take(half_second));
        // Two seconds later, four more.
        let later = half_second + Duration::from_secs(2);
        assert_eq!(take_all(&mut bucket, later, 100), 4);
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3, start);
        assert!(bucket.try_take(start));
        // An hour idle is worth 7200 tokens of refill, but the bucket tops
        // up to three and stops.
        let later = start + Duration::from_secs(3600);
        assert_eq!(take_all(&mut bucket, later, 100), 3);
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let start = Instant::now();
        for burst in [0, 1, 10] {
            let mut bucket = TokenBucket::new(0.0, burst, start);
            assert_eq!(take_all(&mut bucket, start, 10_000), 10_000, "{burst}");
        }
    }

    #[test]
    fn wait_says_when_the_next_token_comes() {
        let start = Instant::now();
        // Four tokens a second: one every 250 ms.
        let mut bucket = TokenBucket::new(4.0, 2, start);
        assert_eq!(bucket.wait(start), Duration::ZERO);
        assert_eq!(take_all(&mut bucket, start, 100), 2);
        assert_eq!(bucket.wait(start), Duration::from_millis(250));
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.wait(later), Duration::from_millis(150));
        // Once the wait has passed, a token is there, and only one.
        let then = later + bucket.wait(later);
        assert_eq!(bucket.wait(then), Duration::ZERO);
        assert_eq!(take_all(&mut bucket, then, 100), 1);
        // Unlimited: never a wait.
        let mut free = RateLimit {
            per_second: 0.0,
            burst: 0,
        }
        .bucket(start);
        assert_eq!(take_all(&mut free, start, 1000), 1000);
        assert_eq!(free.wait(start), Duration::ZERO);
    }

    #[test]
    fn burst_zero_with_a_rate_refuses_everything() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 0, start);
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_secs(3600)));
    }
}
