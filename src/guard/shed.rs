//! Load shedding: a bounded pool of calls in flight over all connections.
//! A call that finds its pool full fails at once with UNAVAILABLE and
//! RetryInfo instead of queueing, so a flood costs the server a refusal,
//! not memory; calls already admitted run on undisturbed. Health has pools
//! of its own, so an orchestrator still sees SERVING while calls are shed.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::GuardConfig;

/// Which pool a call takes its place from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Every rpc of the authority, and reflection.
    Call,
    /// `grpc.health.v1.Health/Check` (and anything else of health but
    /// Watch).
    HealthCheck,
    /// `grpc.health.v1.Health/Watch`: a stream as long as the client
    /// wants, so no deadline, and a pool of its own.
    HealthWatch,
}

impl Kind {
    /// The kind of the rpc at `path`.
    pub(super) fn of(path: &str) -> Kind {
        match path.strip_prefix("/grpc.health.v1.Health/") {
            Some("Watch") => Kind::HealthWatch,
            Some(_) => Kind::HealthCheck,
            None => Kind::Call,
        }
    }

    /// What a refused caller is told.
    pub(super) fn full_message(self) -> &'static str {
        match self {
            Kind::Call => "the server has its limit of calls in flight (--max-in-flight)",
            Kind::HealthCheck => "the server has its limit of health checks in flight",
            Kind::HealthWatch => "the server has its limit of health watches open",
        }
    }
}

/// One pool per [`Kind`].
#[derive(Debug)]
pub(super) struct Pools {
    /// [`Kind::Call`].
    calls: Arc<Semaphore>,
    /// [`Kind::HealthCheck`].
    checks: Arc<Semaphore>,
    /// [`Kind::HealthWatch`].
    watches: Arc<Semaphore>,
}

impl Pools {
    /// Pools of the configured sizes.
    pub(super) fn new(config: &GuardConfig) -> Pools {
        let pool = |n| Arc::new(Semaphore::new(n));
        Pools {
            calls: pool(config.max_in_flight),
            checks: pool(config.max_health_checks),
            watches: pool(config.max_health_watches),
        }
    }

    /// A place for a call of `kind`, held until its response is done, or
    /// `None` when the pool is full. Never waits.
    pub(super) fn admit(&self, kind: Kind) -> Option<OwnedSemaphorePermit> {
        let pool = match kind {
            Kind::Call => &self.calls,
            Kind::HealthCheck => &self.checks,
            Kind::HealthWatch => &self.watches,
        };
        pool.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: health sharing the calls' pool (health would fail with the
    /// calls it is meant to report on), or a pool that lets one more in.
    #[test]
    fn health_has_its_own_pools_and_full_means_full() {
        assert_eq!(Kind::of("/grpc.health.v1.Health/Check"), Kind::HealthCheck);
        assert_eq!(Kind::of("/grpc.health.v1.Health/Watch"), Kind::HealthWatch);
        assert_eq!(
            Kind::of("/credential_authority.v1.CredentialAuthority/Resolve"),
            Kind::Call
        );
        let pools = Pools::new(&GuardConfig {
            max_header_list_bytes: 8192,
            max_message_bytes: 65536,
            request_timeout: std::time::Duration::from_secs(1),
            max_in_flight: 2,
            max_health_checks: 1,
            max_health_watches: 1,
        });
        let held = [pools.admit(Kind::Call), pools.admit(Kind::Call)];
        assert!(held.iter().all(Option::is_some));
        assert!(pools.admit(Kind::Call).is_none());
        let check = pools.admit(Kind::HealthCheck);
        assert!(check.is_some() && pools.admit(Kind::HealthWatch).is_some());
        drop(held);
        assert!(pools.admit(Kind::Call).is_some());
    }
}
