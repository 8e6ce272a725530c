//! The quota fields of the callers file, as written and as checked:
//!
//! ```toml
//! [defaults]                                  # optional: for every caller
//! max_live_credentials = 100000
//! mint_rate = { per_second = 100, burst = 200 }
//!
//! [[caller]]
//! name = "codex-adapter"
//! max_live_credentials = 5000                 # optional: overrides [defaults]
//! mint_rate = { per_second = 20 }             # burst defaults to per_second
//! ```

use std::ops::Range;

use toml::Spanned;

use crate::auth::quota::{MintRate, QuotaSpec};

/// `mint_rate = { per_second = N, burst = M }` as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    /// Sustained Mints per second; required.
    per_second: Option<Spanned<i64>>,
    /// Mints at once; defaults to `per_second`.
    burst: Option<Spanned<i64>>,
}

/// The `[defaults]` table, and the same two fields of a `[[caller]]`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    /// The most live credentials a caller may hold.
    pub(super) max_live_credentials: Option<Spanned<i64>>,
    /// How fast a caller may mint.
    pub(super) mint_rate: Option<Spanned<RawRate>>,
}

/// Checks quota fields: each a whole number from 1 up (0 would refuse every
/// Mint, which is what leaving out the `mint` role says plainly). On a
/// refusal, the span and message of the first bad field.
pub(super) fn check(
    max_live_credentials: Option<Spanned<i64>>,
    mint_rate: Option<Spanned<RawRate>>,
) -> Result<QuotaSpec, (Range<usize>, String)> {
    let positive = |field: &str, value: Spanned<i64>, max: u64| {
        let span = value.span();
        match u64::try_from(*value.get_ref()) {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err((
                span,
                format!(
                    "{field} must be a whole number from 1 to {max}; to stop a caller \
                     minting, take away its `mint` role"
                ),
            )),
        }
    };
    let max_live_credentials = max_live_credentials
        .map(|value| positive("max_live_credentials", value, u64::MAX >> 1))
        .transpose()?;
    let mint_rate = match mint_rate {
        None => None,
        Some(rate) => {
            let span = rate.span();
            let rate = rate.into_inner();
            let Some(per_second) = rate.per_second else {
                return Err((
                    span,
                    "mint_rate has no `per_second`: write mint_rate = { per_second = 100 }"
                        .to_owned(),
                ));
            };
            let per_second = positive("mint_rate.per_second", per_second, u64::from(u32::MAX))?;
            let burst = rate
                .burst
                .map(|burst| positive("mint_rate.burst", burst, u64::from(u32::MAX)))
                .transpose()?
                .unwrap_or(per_second);
            Some(MintRate {
                per_second: per_second as u32,
                burst: burst as u32,
            })
        }
    };
    Ok(QuotaSpec {
        max_live_credentials,
        mint_rate,
    })
}
