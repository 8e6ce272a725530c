use crate::*;

impl Run<'_> {
    /// Mint: the refusal is the model's, in its order (catches a quota that
    /// ignores the replacement, proven; a limit checked before the
    /// replacement it should count after, a thread limit counting dead
    /// records, a quota counting RevokeAll's victims); the replaced count
    /// and the new credential's deadlines are the model's (catches
    /// overrides not clamped to 1 ms and a missing absolute-lifetime cap,
    /// both proven; overrides not clamped to the store's limits).
    pub(crate) fn mint(&mut self, call: &MintCall) {
        let now = self.now();
        let ctx = &self.context;
        assert!(!call.scopes.contains(&UNGRANTED_SCOPE), "{ctx}");
        let digest = TokenDigest::of(&format!(
            "{} {} {}",
            self.case.name,
            self.seed,
            self.model.creds.len()
        ));
        let (thread_id, instance_id) = (thread_name(call.thread), instance_name(call.instance));
        let scopes: Scopes = call.scopes.iter().map(|s| Box::from(*s)).collect();
        let labels: Labels = call
            .labels
            .iter()
            .map(|(k, v)| (Box::from(*k), Box::from(*v)))
            .collect();
        let bytes = (thread_id.len()
            + instance_id.len()
            + call.kind.map_or(0, str::len)
            + call.scopes.iter().map(|s| s.len()).sum::<usize>()
            + call
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64;
        let minted = self.store.mint(
            digest,
            NewCredential {
                thread_id: &thread_id,
                provider_instance_id: &instance_id,
                provider_kind: call.kind,
                idle_timeout: call.idle_timeout,
                max_lifetime: call.max_lifetime,
                replace_previous: call.replace,
                scopes,
                labels,
                minted_by: ACTORS[call.actor],
                reach: reach(call.actor),
                owner_quota: self.model.quota(call.actor),
            },
        );
        let plan = self.model.check_mint(call, bytes, now);
        let plan = match (plan, minted) {
            (Err(want), Err(got)) => {
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{ctx}: Mint refused"
                );
                if let Some(limit) = match want {
                    Rejection::ThreadLimit { .. } => Some(0),
                    Rejection::OwnerQuota { .. } => Some(1),
                    Rejection::StoreBudget {
                        budget: Budget::Credentials,
                        ..
                    } => Some(2),
                    Rejection::StoreBudget { .. } => Some(3),
                    _ => None,
                } {
                    self.refused[limit] += 1;
                }
                return;
            }
            (Err(want), Ok(got)) => panic!("{ctx}: minted {got:?}, the model says {want:?}"),
            (Ok(_), Err(got)) => panic!("{ctx}: Mint refused with {got:?}, the model mints"),
            (Ok(plan), Ok(minted)) => (plan, minted),
        };
        let (plan, minted) = plan;
        let batch: Vec<(usize, DeathReason)> = plan
            .replaced
            .iter()
            .map(|&i| {
                let death = self.model.creds[i].death(now);
                (
                    i,
                    death.unwrap_or(DeathReason::Revoked(RevocationCause::Replaced)),
                )
            })
            .collect();
        let live = batch
            .iter()
            .filter(|(_, r)| *r == DeathReason::Revoked(RevocationCause::Replaced))
            .count() as u64;
        self.model.remove(batch, true, now);
        assert_eq!(minted.replaced, live, "{ctx}: live credentials replaced");
        let clamp = |requested: Option<Duration>, limit: Millis| {
            requested.map_or(limit, |d| millis(d).min(limit).max(1))
        };
        let cred = Cred {
            digest,
            id: minted.credential_id,
            thread: call.thread,
            instance: call.instance,
            owner: call.actor,
            kind: call.kind,
            scopes: call.scopes.clone(),
            labels: call.labels.clone(),
            idle_timeout: clamp(call.idle_timeout, self.model.limits.idle_timeout),
            max_lifetime: clamp(call.max_lifetime, self.model.limits.max_lifetime),
            absolute_lifetime: self.model.limits.absolute_lifetime,
            created_at: now,
            last_used: now,
            revoked_all: None,
            removed: None,
            removed_at: 0,
            grave: None,
            queued: None,
            bytes,
        };
        let deadlines = cred.deadlines();
        assert_eq!(minted.deadlines, deadlines, "{ctx}: Mint's deadlines");
        self.journal_ends_clean = false;
        self.model.held.push(self.model.creds.len());
        self.model.creds.push(Cred {
            queued: Some(deadlines.idle_expires_at),
            ..cred
        });
    }

    /// RevokeCredential: revoked counts 1 only for a credential live at
    /// the call (catches a revocation counting a record past its deadline,
    /// or reviving it with the wrong reason: a dead record keeps its own);
    /// reports the thread while the credential is known, the instance
    /// while its record is held; refuses, changing nothing, what is out of
    /// reach.
    pub(crate) fn revoke_credential(&mut self, actor: usize, cred: usize) {
        let now = self.now();
        let got = self
            .store
            .revoke_credential(&self.model.creds[cred].id, reach(actor));
        // Journaled unless refused as out of reach.
        self.journal_ends_clean &= matches!(got, Err(Rejection::NotOwned { .. }));
        let within = self.model.creds[cred].within(actor);
        let ctx = self.context.clone();
        if !self.model.creds[cred].held() {
            let remembers = match &got {
                Ok(revocation) => revocation.thread_id.is_some(),
                Err(Rejection::NotOwned { .. }) => true,
                Err(_) => false,
            };
            self.recall(cred, remembers, &got);
            let c = &self.model.creds[cred];
            let want = match (remembers, within) {
                (true, false) => Err(format!(
                    "{:?}",
                    Rejection::NotOwned {
                        credential_id: Some(c.id)
                    }
                )),
                (true, true) => Ok(CredentialRevocation {
                    revoked: 0,
                    thread_id: Some(thread_name(c.thread).into()),
                    provider_instance_id: None,
                }),
                (false, _) => Ok(CredentialRevocation::default()),
            };
            assert_eq!(got.map_err(|e| format!("{e:?}")), want, "{ctx}");
            return;
        }
        let c = &self.model.creds[cred];
        if !within {
            assert!(
                matches!(&got, Err(Rejection::NotOwned { credential_id: Some(id) }) if *id == c.id),
                "{ctx}: got {got:?}, out of reach"
            );
            return;
        }
        let death = c.death(now);
        let want = CredentialRevocation {
            revoked: u64::from(death.is_none()),
            thread_id: Some(thread_name(c.thread).into()),
            provider_instance_id: Some(instance_name(c.instance).into()),
        };
        assert_eq!(got.ok(), Some(want), "{ctx}; {}", self.describe(cred));
        let reason = death.unwrap_or(DeathReason::Revoked(RevocationCause::Credential));
        self.model.remove(vec![(cred, reason)], true, now);
    }

    /// RevokeThread: revokes (and removes) every record of the thread
    /// within reach, oldest first; counts the live ones it revoked and the
    /// live ones out of reach it left. Catches a cause other than `thread`
    /// in the tombstones and dead records out of reach counted as left
    /// alone (both proven), dead records counted as revoked, another
    /// caller's credentials revoked.
    pub(crate) fn revoke_thread(&mut self, actor: usize, thread: usize) {
        let now = self.now();
        let got = self.store.revoke_thread(&thread_name(thread), reach(actor));
        self.journal_ends_clean = false;
        let mut want = ThreadRevocation::default();
        let mut batch = Vec::new();
        for i in self.model.on_thread(thread) {
            let c = &self.model.creds[i];
            let death = c.death(now);
            if c.within(actor) {
                want.revoked += u64::from(death.is_none());
                batch.push((
                    i,
                    death.unwrap_or(DeathReason::Revoked(RevocationCause::Thread)),
                ));
            } else {
                want.not_owned += u64::from(death.is_none());
            }
        }
        assert_eq!(
            got,
            want,
            "{}: the thread's credentials:{}",
            self.context,
            self.describe_held(|c| c.thread == thread)
        );
        self.model.remove(batch, true, now);
    }

    /// RevokeAll: counts every record it ends (held and not ended by an
    /// earlier RevokeAll; a record past its deadline but not yet swept is
    /// counted, as the store's constant-time counts do), and each keeps
    /// the cause of the first RevokeAll that reached it. Catches a scope
    /// revoking beyond its target (one caller's RevokeAll ending another's
    /// credentials), a later RevokeAll overwriting the first one's cause,
    /// a stale count after an enclosing revocation.
    pub(crate) fn revoke_all(&mut self, actor: usize, instance: Option<usize>) {
        let now = self.now();
        let instance_id = instance.map(instance_name);
        let target = match (reach(actor), instance_id.as_deref()) {
            (Reach::All, None) => RevokeAllTarget::Everything,
            (Reach::All, Some(id)) => RevokeAllTarget::Instance(id),
            (Reach::MintedBy(name), None) => RevokeAllTarget::MintedBy(name),
            (Reach::MintedBy(name), Some(id)) => RevokeAllTarget::MintedByForInstance {
                minted_by: name,
                provider_instance_id: id,
            },
        };
        let got = self.store.revoke_all(target);
        self.journal_ends_clean = false;
        let reached = self.describe_held(|c| {
            c.counted() && c.within(actor) && instance.is_none_or(|x| c.instance == x)
        });
        let want = self.model.revoke_all(actor, instance, now);
        assert_eq!(
            got, want,
            "{}: revoked; the model's:{reached}",
            self.context
        );
    }

    /// A sweep removes exactly what the model says is due and dead (and,
    /// after a RevokeAll, everything dead), re-queues what is due and live,
    /// and forgets tombstones past their retention. Catches a sweeper that
    /// drops a live record's queue entry (proven), re-queues at a stale
    /// deadline, removes a live record, or skips the reclaim pass.
    pub(crate) fn sweep(&mut self) {
        let now = self.now();
        let got = self.store.sweep();
        self.journal_ends_clean &= got.removed + got.reclaimed == 0;
        let before = self.describe_held(|c| c.queued.is_some_and(|at| at <= now) || !c.live(now));
        let want = self.model.sweep(now);
        assert_eq!(
            got, want,
            "{}: the sweep; due or dead before it:{before}",
            self.context
        );
        self.coverage.swept += got.removed as u32;
        self.coverage.reclaimed += got.reclaimed as u32;
        self.coverage.requeued += got.requeued as u32;
    }
}
