//! Per-caller quotas: how many live credentials a caller may hold and how
//! fast it may mint, so one adapter cannot starve the others of the
//! authority's budget or its CPU.
//!
//! The live-credential quota is counted by the store (it knows what is
//! live); the Mint rate is a token bucket here, read against the injected
//! clock so tests can drive it without sleeping.

use parking_lot::Mutex;

use crate::clock::Millis;

/// The quota a caller gets when the callers file sets none: enough for any
/// honest adapter, a tenth of the default total budget, so a runaway one
/// leaves room for the rest.
pub const DEFAULT_MAX_LIVE_CREDENTIALS: u64 = 1_000_000;

/// The Mint rate a caller gets when the callers file sets none: far above
/// one credential per session thread, well below what floods the store.
pub const DEFAULT_MINT_RATE: MintRate = MintRate {
    per_second: 1_000,
    burst: 1_000,
};

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintRate {
    /// Mints per second, sustained.
    pub per_second: u32,
    /// Mints at once after a quiet spell.
    pub burst: u32,
}

/// A caller's limits as the callers file states them; `None` takes the
/// file's `[defaults]`, then the built-in default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaSpec {
    /// The most live credentials the caller may hold.
    pub max_live_credentials: Option<u64>,
    /// How fast it may mint.
    pub mint_rate: Option<MintRate>,
}

impl QuotaSpec {
    /// This spec, with what it leaves unset taken from `fallback`.
    pub fn or(self, fallback: QuotaSpec) -> QuotaSpec {
        QuotaSpec {
            max_live_credentials: self.max_live_credentials.or(fallback.max_live_credentials),
            mint_rate: self.mint_rate.or(fallback.mint_rate),
        }
    }
}

/// One caller's quotas in force, shared by all its keys and certificates so
/// the rate is the caller's, not each key's.
#[derive(Debug)]
pub struct CallerQuota {
    /// The most live credentials the caller may hold.
    pub max_live_credentials: u64,
    /// How fast it may mint.
    pub mint_rate: MintRate,
    /// The bucket: allowance in thousandths of a Mint, and when it was last
    /// filled. One short lock per Mint, never per Resolve.
    bucket: Mutex<Bucket>,
}

/// A token bucket's state.
#[derive(Debug)]
struct Bucket {
    /// Thousandths of a Mint available now.
    milli_tokens: u64,
    /// When `milli_tokens` was last brought up to date.
    filled_at: Option<Millis>,
}

impl CallerQuota {
    /// The quotas of `spec`, built-in defaults for what it leaves unset, with
    /// a full bucket.
    pub fn new(spec: QuotaSpec) -> Self {
        let mint_rate = spec.mint_rate.unwrap_or(DEFAULT_MINT_RATE);
        CallerQuota {
            max_live_credentials: spec
                .max_live_credentials
                .unwrap_or(DEFAULT_MAX_LIVE_CREDENTIALS),
            mint_rate,
            bucket: Mutex::new(Bucket {
                milli_tokens: u64::from(mint_rate.burst) * 1_000,
                filled_at: None,
            }),
        }
    }

    /// No limit at all, for `--insecure-no-caller-auth` (everyone is one
    /// admin there; the store's own budgets still hold).
    pub fn unlimited() -> Self {
        CallerQuota::new(QuotaSpec {
            max_live_credentials: Some(u64::MAX),
            mint_rate: Some(MintRate {
                per_second: u32::MAX,
                burst: u32::MAX,
            }),
        })
    }

    /// Takes one Mint from the bucket at `now`; false when it is empty.
    /// Time that runs backwards adds nothing (the clock never does, but a
    /// reload may hand the bucket to a new clock reading).
    pub fn try_mint(&self, now: Millis) -> bool {
        let mut bucket = self.bucket.lock();
        let capacity = u64::from(self.mint_rate.burst) * 1_000;
        if let Some(filled_at) = bucket.filled_at {
            let elapsed = now.saturating_sub(filled_at);
            // per_second Mints per 1000 ms = per_second milli-Mints per ms.
            let earned = elapsed.saturating_mul(u64::from(self.mint_rate.per_second));
            bucket.milli_tokens = bucket.milli_tokens.saturating_add(earned).min(capacity);
        }
        bucket.filled_at = Some(bucket.filled_at.map_or(now, |at| at.max(now)));
        if bucket.milli_tokens >= 1_000 {
            bucket.milli_tokens -= 1_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_second: u32, burst: u32) -> CallerQuota {
        CallerQuota::new(QuotaSpec {
            max_live_credentials: None,
            mint_rate: Some(MintRate { per_second, burst }),
        })
    }

    /// Catches a bucket that starts empty, refills without a cap, or lets
    /// a burst through twice.
    #[test]
    fn burst_then_the_rate() {
        let quota = quota(2, 3);
        let t0 = 1_000_000;
        assert_eq!((0..5).filter(|_| quota.try_mint(t0)).count(), 3);
        // 2 per second: one Mint each 500 ms, not before.
        assert!(!quota.try_mint(t0 + 499));
        assert!(quota.try_mint(t0 + 500));
        assert!(!quota.try_mint(t0 + 500));
        // A long quiet spell refills only up to the burst.
        let later = t0 + 3_600_000;
        assert_eq!((0..10).filter(|_| quota.try_mint(later)).count(), 3);
    }

    /// Catches a bucket that earns from a clock reading in the past.
    #[test]
    fn time_going_back_earns_nothing() {
        let quota = quota(1, 1);
        assert!(quota.try_mint(10_000));
        assert!(!quota.try_mint(5_000));
        assert!(!quota.try_mint(10_999));
        assert!(quota.try_mint(11_000));
    }

    /// Catches the built-in defaults not applying to what a file leaves out.
    #[test]
    fn unset_takes_the_defaults() {
        let quota = CallerQuota::new(QuotaSpec::default());
        assert_eq!(quota.max_live_credentials, DEFAULT_MAX_LIVE_CREDENTIALS);
        assert_eq!(quota.mint_rate, DEFAULT_MINT_RATE);
        let spec = QuotaSpec {
            max_live_credentials: Some(5),
            mint_rate: None,
        }
        .or(QuotaSpec {
            max_live_credentials: Some(9),
            mint_rate: Some(MintRate {
                per_second: 7,
                burst: 8,
            }),
        });
        assert_eq!(spec.max_live_credentials, Some(5));
        assert_eq!(spec.mint_rate.unwrap().burst, 8);
    }
}
