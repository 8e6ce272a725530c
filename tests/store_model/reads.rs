use crate::*;

impl Run<'_> {
    /// A removed credential's answer: remembered (its tombstone) or
    /// forgotten, as the model's tombstones say; `store_remembers` is what
    /// the store's answer shows. Catches a tombstone kept past its
    /// retention or dropped before it (`at > cutoff` written `at >=
    /// cutoff`), a capacity that drops the newest instead of the oldest,
    /// and a credential-id index left behind by an evicted tombstone.
    pub(crate) fn recall(&mut self, cred: usize, store_remembers: bool, answer: &dyn Debug) {
        let c = &self.model.creds[cred];
        let remembered = self.model.graves.remembered(c.grave, cred);
        match (remembered, store_remembers) {
            (Remembered::Yes, true) => {}
            (Remembered::No, false) => self.coverage.forgotten += 1,
            (Remembered::Maybe, true) => self.coverage.unsure += 1,
            (Remembered::Maybe, false) => {
                self.coverage.unsure += 1;
                self.coverage.forgotten += 1;
                let grave = c.grave;
                if let Err(e) = self.model.graves.forgotten(grave, cred) {
                    panic!("{}: {e}; {}", self.context, self.describe(cred));
                }
            }
            (remembered, _) => panic!(
                "{}: got {answer:?}, the model's tombstone: {remembered:?}; {}",
                self.context,
                self.describe(cred)
            ),
        }
    }

    /// Checks a dead credential's report against the model's credential
    /// and reason. Catches a wrong reason (`>=` written `>` in `death`; a
    /// revocation at the deadline's instant winning the tie; `IdleTimeout`
    /// for an idle deadline equal to `expires_at`) and a wrong cause
    /// (RevokeThread recorded as `credential`; `ProviderInstance` and
    /// `Caller` swapped), all proven.
    pub(crate) fn check_dead(&mut self, dead: &DeadCredential, cred: usize, reason: DeathReason) {
        self.coverage.death(reason);
        if self.focus == Some(cred) {
            // Seen dead: nothing more to learn from it.
            self.focus = None;
        }
        let c = &self.model.creds[cred];
        assert_eq!(
            (
                dead.reason,
                dead.credential_id,
                &*dead.thread_id,
                &*dead.minted_by
            ),
            (
                reason,
                c.id,
                thread_name(c.thread).as_str(),
                ACTORS[c.owner]
            ),
            "{}: the dead credential's report; {}",
            self.context,
            self.describe(cred)
        );
    }

    /// Resolve: a live credential answers everything it was minted with
    /// and the deadlines of this very use; a dead one its death's reason;
    /// a missing scope is refused without renewal (the credential's later
    /// death shows it: the refusal makes it the focus, which the next
    /// deadline jump aims at). Catches a broken sliding renewal
    /// (`expires_at` counted from mint, a renewal that skips the next
    /// millisecond), a renewal on a scope refusal, and the boundary off by
    /// one, all proven.
    pub(crate) fn resolve(&mut self, cred: usize, scope: Option<&str>) {
        let now = self.now();
        let got = self.store.resolve(&self.model.creds[cred].digest, scope);
        if let Some(removed) = self.model.creds[cred].removed {
            let remembers = matches!(got, Err(Rejection::Dead(_)));
            self.recall(cred, remembers, &got);
            match &got {
                Err(Rejection::Dead(dead)) => self.check_dead(dead, cred, removed),
                Err(Rejection::Unknown) => {}
                other => panic!("{}: got {other:?}; {}", self.context, self.describe(cred)),
            }
            return;
        }
        self.count_boundary(cred, now);
        let c = &self.model.creds[cred];
        match (c.death(now), scope) {
            (Some(reason), _) => match &got {
                Err(Rejection::Dead(dead)) => self.check_dead(dead, cred, reason),
                other => panic!(
                    "{}: got {other:?}, the model says dead ({reason:?}); {}",
                    self.context,
                    self.describe(cred)
                ),
            },
            (None, Some(scope)) if !c.scopes.contains(&scope) => {
                match &got {
                    Err(Rejection::ScopeMissing {
                        credential_id,
                        thread_id,
                        scope: missing,
                    }) => assert_eq!(
                        (credential_id, &**thread_id, &**missing),
                        (&c.id, thread_name(c.thread).as_str(), scope),
                        "{}: the scope refusal",
                        self.context
                    ),
                    other => panic!(
                        "{}: got {other:?}, the model refuses scope {scope}; {}",
                        self.context,
                        self.describe(cred)
                    ),
                }
                self.focus = Some(cred);
                self.coverage.scope_refusals += 1;
            }
            (None, _) => {
                let c = &mut self.model.creds[cred];
                c.last_used = c.last_used.max(now);
                let want = c.resolved();
                match got {
                    Ok(got) => assert_eq!(got, want, "{}: Resolve's answer", self.context),
                    Err(e) => panic!(
                        "{}: got {e:?}, the model says live; {}",
                        self.context,
                        self.describe(cred)
                    ),
                }
            }
        }
    }

    /// Touch by credential id: renews exactly as Resolve does, refuses a
    /// credential out of reach (live, dead or remembered only by its
    /// tombstone) as not owned, and a dead one with Resolve's reason.
    /// Catches Touch renewing a dead credential (revival), Touch by id
    /// crossing reach, and the same renewal faults as Resolve.
    pub(crate) fn touch_credential(&mut self, actor: usize, cred: usize) {
        let now = self.now();
        let got = self
            .store
            .touch_credential(&self.model.creds[cred].id, reach(actor));
        let within = self.model.creds[cred].within(actor);
        if let Some(removed) = self.model.creds[cred].removed {
            let remembers = matches!(got, Err(Rejection::Dead(_) | Rejection::NotOwned { .. }));
            self.recall(cred, remembers, &got);
            let id = self.model.creds[cred].id;
            match (&got, within) {
                (Err(Rejection::Dead(dead)), true) => self.check_dead(dead, cred, removed),
                (Err(Rejection::NotOwned { credential_id }), false) => {
                    assert_eq!(*credential_id, Some(id), "{}", self.context)
                }
                (Err(Rejection::Unknown), _) => {}
                (other, _) => panic!("{}: got {other:?}; {}", self.context, self.describe(cred)),
            }
            return;
        }
        self.count_boundary(cred, now);
        let c = &self.model.creds[cred];
        if !within {
            match &got {
                Err(Rejection::NotOwned { credential_id }) => {
                    assert_eq!(*credential_id, Some(c.id), "{}", self.context)
                }
                other => panic!("{}: got {other:?}, out of reach", self.context),
            }
            return;
        }
        match (c.death(now), got) {
            (Some(reason), Err(Rejection::Dead(dead))) => self.check_dead(&dead, cred, reason),
            (None, Ok(touched)) => {
                let c = &mut self.model.creds[cred];
                c.last_used = c.last_used.max(now);
                let want = Touched {
                    credential_id: c.id,
                    deadlines: c.deadlines(),
                };
                assert_eq!(touched, want, "{}: Touch's answer", self.context);
            }
            (death, got) => panic!(
                "{}: got {got:?}, the model says {death:?}; {}",
                self.context,
                self.describe(cred)
            ),
        }
    }

    /// Touch by thread: renews every live credential of the thread within
    /// reach and lists the oldest `touch_reply_limit`, each with the
    /// deadlines of this renewal; fails only when none is live, with
    /// not-owned when the thread's live credentials are all out of reach,
    /// else with the newest death within reach (a held dead record's or
    /// the thread tombstone's, the newer by mint time), else unknown.
    /// Catches a Touch renewing another caller's credentials, a listing of
    /// one more than the limit, a thread tombstone winning a tie over a
    /// held record (all proven), a listing that is not oldest first,
    /// another caller's death leaking across reach.
    pub(crate) fn touch_thread(&mut self, actor: usize, thread: usize) {
        let now = self.now();
        let got = self.store.touch_thread(&thread_name(thread), reach(actor));
        let ctx = &self.context;
        let on_thread = self.model.on_thread(thread);
        let mut listed = Vec::new();
        let mut total = 0u64;
        let mut out_of_reach_live = false;
        let mut newest_dead: Option<(usize, DeathReason)> = None;
        for &i in &on_thread {
            let c = &mut self.model.creds[i];
            match (c.within(actor), c.death(now)) {
                (false, death) => out_of_reach_live |= death.is_none(),
                (true, Some(reason)) => newest_dead = Some((i, reason)),
                (true, None) => {
                    c.last_used = c.last_used.max(now);
                    total += 1;
                    if listed.len() < self.model.limits.touch_reply_limit {
                        listed.push(Touched {
                            credential_id: c.id,
                            deadlines: c.deadlines(),
                        });
                    }
                }
            }
        }
        if total > 0 {
            match got {
                Ok(touched) => {
                    assert_eq!(touched.total, total, "{ctx}: renewed");
                    assert_eq!(touched.touched, listed, "{ctx}: listed");
                }
                Err(e) => panic!("{ctx}: got {e:?}, the model renews {total}"),
            }
            return;
        }
        if out_of_reach_live {
            assert!(
                matches!(
                    got,
                    Err(Rejection::NotOwned {
                        credential_id: None
                    })
                ),
                "{ctx}: got {got:?}, the thread's live credentials are out of reach"
            );
            return;
        }
        let held_dead = newest_dead.map(|(i, reason)| (self.model.creds[i].created_at, i, reason));
        // Which answers the model accepts: (credential, reason), or None
        // for unknown.
        let mut accepted: Vec<Option<(usize, DeathReason)>> = Vec::new();
        let newer_than_held =
            |created_at: Millis| held_dead.is_none_or(|(held_at, _, _)| created_at > held_at);
        if self.model.thread_graves.exact {
            match self.model.thread_graves.newest(thread, actor) {
                Some((created_at, candidates)) if newer_than_held(created_at) => {
                    for i in candidates {
                        accepted.push(Some((i, self.model.creds[i].removed.expect("removed"))));
                    }
                }
                _ => accepted.push(held_dead.map(|(_, i, reason)| (i, reason))),
            }
        } else {
            // Which thread tombstones survived a capacity is unknown: any
            // removed credential of the thread within reach, recorded after
            // the last age cutoff and newer than the held dead one, or the
            // held dead one, or (without one) unknown.
            accepted.push(held_dead.map(|(_, i, reason)| (i, reason)));
            for (i, c) in self.model.creds.iter().enumerate() {
                let Some(reason) = c.removed else { continue };
                if c.thread == thread
                    && c.within(actor)
                    && c.removed_at > self.model.thread_graves.cutoff
                    && newer_than_held(c.created_at)
                {
                    accepted.push(Some((i, reason)));
                }
            }
        }
        let answered = match &got {
            Err(Rejection::Dead(dead)) => self
                .model
                .creds
                .iter()
                .position(|c| c.id == dead.credential_id)
                .map(|i| (i, dead.reason)),
            Err(Rejection::Unknown) => None,
            other => panic!("{ctx}: got {other:?}, the model accepts {accepted:?}"),
        };
        assert!(
            accepted.contains(&answered),
            "{ctx}: got {got:?}, the model accepts {:?}",
            accepted
                .iter()
                .map(|a| a.map(|(i, r)| (self.model.creds[i].id, r)))
                .collect::<Vec<_>>()
        );
        if let (Some((i, reason)), Err(Rejection::Dead(dead))) = (answered, &got) {
            self.coverage.thread_tombstones_read += u32::from(!self.model.creds[i].held());
            self.check_dead(dead, i, reason);
        }
    }
}
