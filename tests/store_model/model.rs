use crate::*;

/// One credential as the model sees it: what it was minted with, its own
/// clock, and how it ended.
#[derive(Debug)]
pub(crate) struct Cred {
    pub(crate) digest: TokenDigest,
    pub(crate) id: CredentialId,
    pub(crate) thread: usize,
    pub(crate) instance: usize,
    pub(crate) owner: usize,
    pub(crate) kind: Option<&'static str>,
    pub(crate) scopes: Vec<&'static str>,
    pub(crate) labels: Vec<(&'static str, &'static str)>,
    /// Its lifetimes after clamping: a per-credential override never above
    /// the store's and never below 1 ms; `Millis::MAX` for no absolute
    /// lifetime.
    pub(crate) idle_timeout: Millis,
    pub(crate) max_lifetime: Millis,
    pub(crate) absolute_lifetime: Millis,
    pub(crate) created_at: Millis,
    /// Mint counts as the first use; every successful Resolve or Touch
    /// moves it to the call's time.
    pub(crate) last_used: Millis,
    /// The first RevokeAll that reached it while its record was held and
    /// no earlier RevokeAll had: when, and its cause.
    pub(crate) revoked_all: Option<(Millis, RevocationCause)>,
    /// `None` while its record is held; else the reason its tombstone
    /// gives, fixed when the record went.
    pub(crate) removed: Option<DeathReason>,
    pub(crate) removed_at: Millis,
    /// The batch of tombstones it joined when its record went (see
    /// [`Graves`]); `None` when none was written (capacity 0).
    pub(crate) grave: Option<u64>,
    /// When the sweeper's queue entry for it falls due: set at mint, moved
    /// when a sweep finds it live and due, gone when a sweep finds it due
    /// and removed. A record removed by anything else leaves its entry
    /// behind until a sweep reaches it.
    pub(crate) queued: Option<Millis>,
    /// What it costs the byte budget: thread, instance, kind, scopes and
    /// labels, as lengths.
    pub(crate) bytes: u64,
}

impl Cred {
    /// Whether its record is still in the store (live, or dead and not
    /// yet removed).
    pub(crate) fn held(&self) -> bool {
        self.removed.is_none()
    }

    /// Whether `actor`'s calls reach it.
    pub(crate) fn within(&self, actor: usize) -> bool {
        reach(actor).covers(ACTORS[self.owner])
    }

    /// Sliding renewal, as specified: `expires_at` is the latest use plus
    /// the max lifetime, never past mint time plus the absolute lifetime;
    /// the idle deadline is the latest use plus the idle timeout, never
    /// past `expires_at`.
    pub(crate) fn deadlines(&self) -> Deadlines {
        self.deadlines_after(self.last_used)
    }

    /// The deadlines after a latest use at `last_used`.
    fn deadlines_after(&self, last_used: Millis) -> Deadlines {
        let expires_at = last_used
            .saturating_add(self.max_lifetime)
            .min(self.created_at.saturating_add(self.absolute_lifetime));
        Deadlines {
            expires_at,
            idle_expires_at: last_used.saturating_add(self.idle_timeout).min(expires_at),
        }
    }

    /// The idle deadline its Mint gave it: where a restart queues it for
    /// the sweeper (replay queues every credential its Mint record puts
    /// back, at the deadline that record gives).
    pub(crate) fn minted_deadline(&self) -> Millis {
        self.deadlines_after(self.created_at).idle_expires_at
    }

    /// Why it is dead at `now`, if it is. A credential dies at its idle
    /// deadline itself (dead at `now >= deadline`): of idle timeout when
    /// that came before `expires_at`, else of expiry. A revocation kills
    /// at its instant; the first death names the reason, and a deadline at
    /// the revocation's very instant counts as first.
    pub(crate) fn death(&self, now: Millis) -> Option<DeathReason> {
        let idle_deadline = self.last_used.saturating_add(self.idle_timeout);
        let Deadlines {
            expires_at,
            idle_expires_at: died_at,
        } = self.deadlines();
        let by_time = (now >= died_at).then_some(if idle_deadline < expires_at {
            DeathReason::IdleTimeout
        } else {
            DeathReason::Expired
        });
        match (by_time, self.revoked_all) {
            (Some(reason), Some((revoked_at, _))) if died_at <= revoked_at => Some(reason),
            (_, Some((_, cause))) => Some(DeathReason::Revoked(cause)),
            (by_time, None) => by_time,
        }
    }

    /// Alive at `now`: neither past its deadline nor revoked.
    pub(crate) fn live(&self, now: Millis) -> bool {
        self.death(now).is_none()
    }

    /// Counted by the RevokeAll counts and the owner's quota: held and not
    /// ended by a RevokeAll (a record past its deadline counts until it is
    /// removed, as documented for the quota).
    pub(crate) fn counted(&self) -> bool {
        self.held() && self.revoked_all.is_none()
    }

    /// What Resolve answers for it while it is live.
    pub(crate) fn resolved(&self) -> Resolved {
        Resolved {
            credential_id: self.id,
            thread_id: thread_name(self.thread),
            provider_instance_id: instance_name(self.instance),
            provider_kind: self.kind.map(str::to_owned),
            minted_by: ACTORS[self.owner].to_owned(),
            created_at: self.created_at,
            deadlines: self.deadlines(),
            scopes: self.scopes.iter().map(|s| s.to_string()).collect(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Its state relative to `START`, for failure messages.
    pub(crate) fn describe(&self, now: Millis) -> String {
        let at = |t: Millis| {
            if t >= Millis::MAX / 2 {
                "never".to_owned()
            } else {
                format!("+{}", t.saturating_sub(START))
            }
        };
        let d = self.deadlines();
        format!(
            "credential {} of {} on thread {} instance {}: minted {}, last used {}, idle deadline {}, \
             expires {}, revoked by RevokeAll {:?}, record {}, death at now (+{}) {:?}",
            self.id,
            ACTORS[self.owner],
            self.thread,
            self.instance,
            at(self.created_at),
            at(self.last_used),
            at(d.idle_expires_at),
            at(d.expires_at),
            self.revoked_all.map(|(t, c)| (at(t), c)),
            match self.removed {
                None => "held".to_owned(),
                Some(reason) => format!("removed at {} ({reason:?})", at(self.removed_at)),
            },
            now - START,
            self.death(now),
        )
    }
}

/// What a configuration's limits are, as the model needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelLimits {
    pub(crate) idle_timeout: Millis,
    pub(crate) max_lifetime: Millis,
    pub(crate) absolute_lifetime: Millis,
    pub(crate) retention: Millis,
    pub(crate) per_thread: u64,
    pub(crate) credentials: u64,
    pub(crate) bytes: u64,
    pub(crate) touch_reply_limit: usize,
    /// The adapters' quota (the administrator has none).
    pub(crate) quota: Option<u64>,
}

/// The whole model: every credential ever minted (in mint order, which is
/// also each thread's list order), the tombstones, and whether a RevokeAll
/// asked the sweeper for a reclaim pass.
pub(crate) struct Model {
    pub(crate) creds: Vec<Cred>,
    /// Indexes of the credentials whose records are held, in mint order.
    pub(crate) held: Vec<usize>,
    /// The latest removed, newest last: what calls on dead credentials
    /// pick most, so that fresh tombstones (a replacement's, a
    /// revocation's) are read before they age out.
    pub(crate) removed: Vec<usize>,
    pub(crate) graves: Graves,
    pub(crate) thread_graves: ThreadGraves,
    pub(crate) reclaim_pending: bool,
    pub(crate) limits: ModelLimits,
    /// Records a full thread's Mint removed: the store journals no such
    /// removal (see [`KNOWN_BUG_FULL_THREAD_CLEANUP_NOT_JOURNALED`]).
    pub(crate) unjournaled_removals: usize,
}

/// What Mint's checks decided.
pub(crate) struct MintPlan {
    /// The earlier records the replacement removes, oldest first.
    pub(crate) replaced: Vec<usize>,
}

impl Model {
    /// `deaths_at_most`: how many credentials a run may mint (each dies
    /// once).
    pub(crate) fn new(config: &StoreConfig, quota: Option<u64>, deaths_at_most: usize) -> Self {
        let limits = ModelLimits {
            idle_timeout: millis(config.idle_timeout),
            max_lifetime: millis(config.max_lifetime),
            absolute_lifetime: config.absolute_lifetime.map_or(Millis::MAX, millis),
            retention: millis(config.tombstone_retention),
            per_thread: config.max_credentials_per_thread,
            credentials: config.max_credentials,
            bytes: config.max_credential_bytes,
            touch_reply_limit: config.touch_reply_limit,
            quota,
        };
        Model {
            creds: Vec::new(),
            held: Vec::new(),
            removed: Vec::new(),
            graves: Graves {
                capacity: config.tombstone_capacity,
                ..Graves::default()
            },
            thread_graves: ThreadGraves::new(config.tombstone_capacity, deaths_at_most),
            reclaim_pending: false,
            limits,
            unjournaled_removals: 0,
        }
    }

    /// The credentials whose records are held, in mint order.
    pub(crate) fn held(&self) -> impl Iterator<Item = &Cred> + Clone {
        self.held.iter().map(|&i| &self.creds[i])
    }

    /// A thread's held records, oldest first: the store's list order.
    pub(crate) fn on_thread(&self, thread: usize) -> Vec<usize> {
        self.held
            .iter()
            .copied()
            .filter(|&i| self.creds[i].thread == thread)
            .collect()
    }

    /// The quota Mint passes for `actor`.
    pub(crate) fn quota(&self, actor: usize) -> Option<u64> {
        self.limits.quota.filter(|_| actor != ADMIN)
    }

    /// Removes records at `now`, each with the reason its tombstone keeps.
    /// `ordered`: the store removes them in this order (one batch of
    /// tombstones each); else in an order of its own (one batch).
    pub(crate) fn remove(&mut self, batch: Vec<(usize, DeathReason)>, ordered: bool, now: Millis) {
        if batch.is_empty() {
            return;
        }
        for &(i, reason) in &batch {
            let c = &mut self.creds[i];
            assert!(c.held(), "the model removes a record twice");
            c.removed = Some(reason);
            c.removed_at = now;
        }
        self.held.retain(|i| !batch.iter().any(|(b, _)| b == i));
        self.removed.extend(batch.iter().map(|&(i, _)| i));
        let excess = self.removed.len().saturating_sub(RECENTLY_REMOVED);
        self.removed.drain(..excess);
        if ordered {
            for &(i, _) in &batch {
                let seq = self.graves.record(vec![i], now);
                let c = &mut self.creds[i];
                c.grave = seq;
                let (thread, owner, created_at) = (c.thread, c.owner, c.created_at);
                self.thread_graves
                    .record(thread, owner, created_at, vec![i], now);
            }
        } else {
            let members: Vec<usize> = batch.iter().map(|&(i, _)| i).collect();
            let seq = self.graves.record(members, now);
            let mut deaths = Vec::new();
            for &(i, _) in &batch {
                let c = &mut self.creds[i];
                c.grave = seq;
                deaths.push((c.thread, c.owner, c.created_at, i));
            }
            self.thread_graves.record_unordered(deaths, now);
        }
    }

    /// Mint's checks in the store's order: the instance's claim, the
    /// replacement's reach, the thread's limit (a full thread first loses
    /// its dead records, even when the Mint is then refused), the owner's
    /// quota, the credential budget, the byte budget; each counted after
    /// the replacement.
    pub(crate) fn check_mint(
        &mut self,
        call: &MintCall,
        bytes: u64,
        now: Millis,
    ) -> Result<MintPlan, Rejection> {
        let actor = call.actor;
        let not_owned = Rejection::NotOwned {
            credential_id: None,
        };
        // An instance belongs to the adapter whose records of it are held
        // (an administrator's claim it for nobody).
        if actor != ADMIN
            && self
                .held()
                .any(|c| c.instance == call.instance && c.owner != actor && c.owner != ADMIN)
        {
            return Err(not_owned);
        }
        let on_thread = self.on_thread(call.thread);
        let limit = self.limits.per_thread;
        let mut replaced = Vec::new();
        if call.replace || on_thread.len() as u64 >= limit {
            let mut kept = 0u64;
            let mut kept_dead = Vec::new();
            for &i in &on_thread {
                let c = &self.creds[i];
                let death = c.death(now);
                let same = call.replace && c.instance == call.instance;
                if same && c.within(actor) {
                    replaced.push(i);
                } else if same && death.is_none() {
                    // A live credential of another caller in the way.
                    return Err(not_owned);
                } else {
                    kept += 1;
                    if let Some(reason) = death {
                        kept_dead.push((i, reason));
                    }
                }
            }
            if kept >= limit {
                kept -= kept_dead.len() as u64;
                self.unjournaled_removals += kept_dead.len();
                self.remove(kept_dead, true, now);
                if kept >= limit {
                    return Err(Rejection::ThreadLimit {
                        thread_id: thread_name(call.thread).into(),
                        limit,
                    });
                }
            }
        }
        if let Some(quota) = self.quota(actor) {
            let own = |c: &&Cred| c.owner == actor && c.counted();
            let live = self.held().filter(own).count() as u64;
            let freed = replaced.iter().map(|&i| &self.creds[i]).filter(own).count() as u64;
            if live.saturating_sub(freed) >= quota {
                return Err(Rejection::OwnerQuota {
                    owner: ACTORS[actor].into(),
                    limit: quota,
                });
            }
        }
        let freed = replaced.len() as u64;
        if (self.held.len() as u64).saturating_sub(freed) + 1 > self.limits.credentials {
            return Err(Rejection::StoreBudget {
                budget: Budget::Credentials,
                limit: self.limits.credentials,
            });
        }
        let held_bytes: u64 = self.held().map(|c| c.bytes).sum();
        let freed_bytes: u64 = replaced.iter().map(|&i| self.creds[i].bytes).sum();
        if held_bytes.saturating_sub(freed_bytes) + bytes > self.limits.bytes {
            return Err(Rejection::StoreBudget {
                budget: Budget::Bytes,
                limit: self.limits.bytes,
            });
        }
        Ok(MintPlan { replaced })
    }

    /// Everything one RevokeAll reaches: held, not ended by an earlier
    /// RevokeAll (whatever its deadlines say), within the target.
    pub(crate) fn revoke_all(&mut self, actor: usize, instance: Option<usize>, now: Millis) -> u64 {
        let cause = match (actor == ADMIN, instance) {
            (true, None) => RevocationCause::All,
            (false, None) => RevocationCause::Caller,
            (_, Some(_)) => RevocationCause::ProviderInstance,
        };
        let mut revoked = 0;
        for &i in &self.held {
            let c = &mut self.creds[i];
            if c.counted() && c.within(actor) && instance.is_none_or(|x| c.instance == x) {
                c.revoked_all = Some((now, cause));
                revoked += 1;
            }
        }
        if revoked > 0 {
            self.reclaim_pending = true;
        }
        revoked
    }

    /// A sweep at `now`: every due queue entry is read (a held record found
    /// dead goes, one found live is queued again at its idle deadline, an
    /// entry of a record already gone is dropped), then tombstones past
    /// their retention go, then a reclaim pass (when a RevokeAll asked for
    /// one) removes every dead record left.
    pub(crate) fn sweep(&mut self, now: Millis) -> SweepReport {
        let mut report = SweepReport::default();
        let mut dead = Vec::new();
        let mut due = 0;
        for (i, c) in self.creds.iter_mut().enumerate() {
            let Some(at) = c.queued.filter(|&at| at <= now) else {
                continue;
            };
            due += 1;
            match (c.held(), c.death(now)) {
                (true, Some(reason)) => {
                    dead.push((i, reason));
                    c.queued = None;
                }
                (true, None) => {
                    c.queued = Some(c.deadlines().idle_expires_at);
                    report.requeued += 1;
                    debug_assert!(c.queued > Some(at));
                }
                (false, _) => c.queued = None,
            }
        }
        report.removed = dead.len();
        if due > SWEEP_BATCH {
            // The store handles due entries in batches, forgetting what is
            // past its retention after each: a thread's death removed in a
            // later batch is then recorded after a newer death of the same
            // thread and owner was forgotten, where one batch would have
            // skipped it. Which entries share a batch only the store knows.
            self.thread_graves.exact = false;
        }
        self.remove(dead, false, now);
        let cutoff = now.saturating_sub(self.limits.retention);
        self.graves.evict_older_than(cutoff);
        self.thread_graves.evict_older_than(cutoff);
        if std::mem::take(&mut self.reclaim_pending) {
            let dead: Vec<(usize, DeathReason)> = self
                .held
                .iter()
                .filter_map(|&i| self.creds[i].death(now).map(|reason| (i, reason)))
                .collect();
            report.reclaimed = dead.len();
            self.remove(dead, false, now);
        }
        report
    }

    /// What a restart keeps and changes. Everything is kept exactly (every
    /// record with its last use, deadlines, RevokeAll's revocations, the
    /// tombstones, the budgets and counts), but:
    /// - `crash_bound` (a crash, unless nothing was journaled since a clean
    ///   stop): every credential live at the newest recorded time (`now`:
    ///   the crash follows a checkpoint) counts as used then (`finish` in
    ///   `src/store/durable/replay.rs`), since a use since the last
    ///   checkpoint may be lost and nothing tells which; the clock does not
    ///   move across the restart, so no downtime grace applies;
    /// - the sweeper's queue is rebuilt: one entry per credential a Mint
    ///   record puts back, at its Mint's idle deadline (the removed ones'
    ///   entries are stale, as in memory);
    /// - a reclaim pass is asked for (whatever died while the store was
    ///   down goes at the next sweep);
    /// - while [`KNOWN_BUG_REPLAY_KEEPS_AGED_TOMBSTONES`] holds, the
    ///   tombstones a sweep forgot by age are back until the next sweep.
    pub(crate) fn restart(&mut self, crash_bound: bool, now: Millis) {
        if crash_bound {
            for &i in &self.held {
                let c = &mut self.creds[i];
                if c.live(now) {
                    c.last_used = c.last_used.max(now);
                }
            }
        }
        for c in &mut self.creds {
            c.queued = Some(c.minted_deadline());
        }
        self.reclaim_pending = true;
        if KNOWN_BUG_REPLAY_KEEPS_AGED_TOMBSTONES {
            self.graves.replay();
            self.thread_graves.replay();
        } else {
            // A restart forgets the tombstones past their retention, as a
            // sweep would (replay records each at its death and then
            // applies the retention).
            let cutoff = now.saturating_sub(self.limits.retention);
            self.graves.evict_older_than(cutoff);
            self.thread_graves.evict_older_than(cutoff);
        }
    }
}
