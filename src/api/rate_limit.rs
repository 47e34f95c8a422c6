//! Per-principal and per-address request limits (GCRA through governor): a sustained
//! rate with bursts of twice that.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How many checks between sweeps of idle keys, so the key maps stay bounded.
const SWEEP_EVERY: u64 = 4096;

struct Limiter<K: Hash + Eq + Clone> {
    inner: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(per_second: NonZeroU32) -> Self {
        let burst = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Self { inner: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)), checks: AtomicU64::new(0) }
    }

    /// `Err(seconds to wait)` when over the limit.
    fn check(&self, key: &K) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.inner.retain_recent();
        }
        self.inner.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The server's limiters; `None` when limiting is off.
pub struct RateLimits {
    per_address: Option<Limiter<IpAddr>>,
    per_principal: Option<Limiter<(String, String)>>,
}

impl RateLimits {
    pub fn new(per_second: u32) -> Self {
        match NonZeroU32::new(per_second) {
            Some(n) => Self { per_address: Some(Limiter::new(n)), per_principal: Some(Limiter::new(n)) },
            None => Self { per_address: None, per_principal: None },
        }
    }

    pub fn check_address(&self, ip: IpAddr) -> Result<(), u64> {
        self.per_address.as_ref().map_or(Ok(()), |l| l.check(&ip))
    }

    pub fn check_principal(&self, tenant: &str, sub: &str) -> Result<(), u64> {
        self.per_principal.as_ref().map_or(Ok(()), |l| l.check(&(tenant.to_owned(), sub.to_owned())))
    }
}
