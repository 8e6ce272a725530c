use crate::*;

/// What a case's runs exercised, counted from the store's answers, so a
/// generator that stops reaching deadlines, boundaries or causes fails the
/// case instead of passing it vacuously.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Coverage {
    /// Live answers from Resolve and Touch.
    pub(crate) live: u32,
    /// Live answers one millisecond before the idle deadline.
    pub(crate) live_at_last_milli: u32,
    /// Deaths by time reported at the deadline's very millisecond.
    pub(crate) dead_at_deadline: u32,
    pub(crate) idle_deaths: u32,
    pub(crate) expiries: u32,
    /// Deaths by each cause, in [`CAUSES`] order.
    pub(crate) revoked: [u32; 6],
    pub(crate) scope_refusals: u32,
    /// Removed credentials answered as unknown.
    pub(crate) forgotten: u32,
    /// Answers accepted only because a sweep's batch of tombstones was
    /// partly kept.
    pub(crate) unsure: u32,
    /// Touch-by-thread failures answered from a thread tombstone.
    pub(crate) thread_tombstones_read: u32,
    pub(crate) swept: u32,
    pub(crate) reclaimed: u32,
    pub(crate) requeued: u32,
    /// Restarts after [`Store::close`], and after a crash.
    pub(crate) clean_restarts: u32,
    pub(crate) crash_restarts: u32,
}

/// Every revocation cause, in [`Coverage::revoked`] order.
pub(crate) const CAUSES: [RevocationCause; 6] = [
    RevocationCause::Thread,
    RevocationCause::ProviderInstance,
    RevocationCause::Caller,
    RevocationCause::All,
    RevocationCause::Credential,
    RevocationCause::Replaced,
];

impl Coverage {
    /// Sums one run's counts into a case's.
    pub(crate) fn add(&mut self, other: &Coverage) {
        self.live += other.live;
        self.live_at_last_milli += other.live_at_last_milli;
        self.dead_at_deadline += other.dead_at_deadline;
        self.idle_deaths += other.idle_deaths;
        self.expiries += other.expiries;
        for (a, b) in self.revoked.iter_mut().zip(other.revoked) {
            *a += b;
        }
        self.scope_refusals += other.scope_refusals;
        self.forgotten += other.forgotten;
        self.unsure += other.unsure;
        self.thread_tombstones_read += other.thread_tombstones_read;
        self.swept += other.swept;
        self.reclaimed += other.reclaimed;
        self.requeued += other.requeued;
        self.clean_restarts += other.clean_restarts;
        self.crash_restarts += other.crash_restarts;
    }

    /// Counts one reported death.
    pub(crate) fn death(&mut self, reason: DeathReason) {
        match reason {
            DeathReason::IdleTimeout => self.idle_deaths += 1,
            DeathReason::Expired => self.expiries += 1,
            DeathReason::Revoked(cause) => {
                let i = CAUSES
                    .iter()
                    .position(|&c| c == cause)
                    .expect("every cause");
                self.revoked[i] += 1;
            }
        }
    }
}

/// One run: a store, its clock, the model, and the generator.
pub(crate) struct Run<'a> {
    pub(crate) case: &'a Case,
    pub(crate) seed: u64,
    pub(crate) store: Store,
    pub(crate) clock: FakeClock,
    pub(crate) model: Model,
    pub(crate) rng: Rng,
    /// The credential the latest deadline jump aimed at, or the latest
    /// scope refusal named: the next calls pick it often, so that a
    /// renewal that should not have happened (or should have) shows.
    pub(crate) focus: Option<usize>,
    /// Mints refused by each limit: thread, quota, credentials, bytes.
    pub(crate) refused: [u32; 4],
    pub(crate) coverage: Coverage,
    pub(crate) context: String,
    /// The durable store's data directory, `None` on the memory store.
    pub(crate) data: Option<DataDir>,
    /// Whether the journal's last record is a clean stop's: replay then
    /// takes a crash for a clean stop, without the crash bound. Nothing is
    /// lost when the crash follows a checkpoint that wrote nothing, as the
    /// modelled crash does; a crash before the first checkpoint after a
    /// restart loses its uses without the bound (reported, not modelled).
    pub(crate) journal_ends_clean: bool,
    /// Whether to print every step (`STORE_MODEL_TRACE="<case> <seed>"`).
    pub(crate) trace: bool,
}

impl<'a> Run<'a> {
    /// A fresh store and model for one seed of `case`.
    pub(crate) fn new(case: &'a Case, seed: u64) -> Self {
        let clock = FakeClock::new(START);
        let (store, data) = match case.storage {
            Storage::Memory => (
                Store::new(case.config.clone(), Arc::new(clock.clone())),
                None,
            ),
            Storage::Durable { .. } => {
                let data = DataDir::new();
                (data.open(&case.config, &clock).0, Some(data))
            }
        };
        Run {
            case,
            seed,
            store,
            clock,
            model: Model::new(&case.config, case.quota, case.steps),
            rng: Rng::for_case(case.name, seed),
            focus: None,
            refused: [0; 4],
            coverage: Coverage::default(),
            context: String::new(),
            data,
            journal_ends_clean: false,
            trace: std::env::var("STORE_MODEL_TRACE")
                .is_ok_and(|t| t == format!("{} {seed}", case.name)),
        }
    }

    /// The store's clock (the run's [`FakeClock`]).
    pub(crate) fn now(&self) -> Millis {
        self.store.now()
    }

    /// A credential's model state, for failure messages.
    pub(crate) fn describe(&self, cred: usize) -> String {
        self.model.creds[cred].describe(self.now())
    }

    /// The held credentials `pick` selects, one a line, for failure
    /// messages about counts.
    pub(crate) fn describe_held(&self, pick: impl Fn(&Cred) -> bool) -> String {
        let now = self.now();
        self.model
            .held()
            .filter(|c| pick(c))
            .map(|c| format!("\n  {}", c.describe(now)))
            .collect()
    }

    /// Counts a held credential's answer at `now` before any renewal: live
    /// (and whether at the last millisecond before its idle deadline), or
    /// dead by time at the deadline's very millisecond.
    pub(crate) fn count_boundary(&mut self, cred: usize, now: Millis) {
        let c = &self.model.creds[cred];
        let died_at = c.deadlines().idle_expires_at;
        match c.death(now) {
            None => {
                self.coverage.live += 1;
                self.coverage.live_at_last_milli += u32::from(died_at == now + 1);
            }
            Some(DeathReason::IdleTimeout | DeathReason::Expired) => {
                self.coverage.dead_at_deadline += u32::from(died_at == now);
            }
            Some(DeathReason::Revoked(_)) => {}
        }
    }

    // -- applying -----------------------------------------------------------

    /// Runs one step against the store and the model and compares them.
    pub(crate) fn apply(&mut self, action: &Action) {
        match action {
            Action::Advance { by, why } => {
                self.clock.advance(Duration::from_millis(*by));
                if let Jump::NearDeadline { credential, offset } = *why {
                    // The draw aims at an instant still ahead, or stays.
                    let deadline = self.model.creds[credential].deadlines().idle_expires_at;
                    let aimed = deadline.saturating_add_signed(offset);
                    assert_eq!(self.now(), aimed.max(self.now() - by), "{}", self.context);
                }
            }
            Action::Mint(call) => self.mint(call),
            Action::Resolve { credential, scope } => self.resolve(*credential, *scope),
            Action::TouchCredential { actor, credential } => {
                self.touch_credential(*actor, *credential)
            }
            Action::TouchThread { actor, thread } => self.touch_thread(*actor, *thread),
            Action::RevokeCredential { actor, credential } => {
                self.revoke_credential(*actor, *credential)
            }
            Action::RevokeThread { actor, thread } => self.revoke_thread(*actor, *thread),
            Action::RevokeAll { actor, instance } => self.revoke_all(*actor, *instance),
            Action::Sweep => self.sweep(),
            Action::Restart { crash } => self.restart(*crash),
        }
    }

    /// What the store holds after every step: its records, the budgets'
    /// counts of them, the queued deadlines, the tombstones (by digest,
    /// by id, by thread). Catches tombstone retention and capacity off by
    /// one, by digest and by thread (proven), a record left behind or
    /// removed early, a budget not given back, a queue entry lost or
    /// duplicated, an id index entry outliving its tombstone.
    pub(crate) fn check_counts(&self) {
        let ctx = &self.context;
        let model = &self.model;
        assert_eq!(
            self.store.record_count(),
            model.held.len(),
            "{ctx}: records held; the model's:{}",
            self.describe_held(|_| true)
        );
        let bytes: u64 = model.held().map(|c| c.bytes).sum();
        assert_eq!(
            self.store.budget_used(),
            (model.held.len() as u64, bytes),
            "{ctx}: budgets"
        );
        let queued = model.creds.iter().filter(|c| c.queued.is_some()).count();
        assert_eq!(
            self.store.queued_deadlines(),
            queued,
            "{ctx}: queued deadlines"
        );
        assert_eq!(
            self.store.tombstone_count(),
            model.graves.kept,
            "{ctx}: tombstones"
        );
        assert_eq!(
            self.store.indexed_credential_ids(),
            model.held.len() + model.graves.kept,
            "{ctx}: credential ids indexed"
        );
        let threads = self.store.thread_tombstone_count();
        if model.thread_graves.exact {
            assert_eq!(
                threads,
                model.thread_graves.by_thread.len(),
                "{ctx}: thread tombstones"
            );
        } else {
            assert!(
                threads <= model.thread_graves.capacity,
                "{ctx}: {threads} thread tombstones, capacity {}",
                model.thread_graves.capacity
            );
        }
    }

    /// Draws and checks the case's steps, then [`Run::finish`]; returns
    /// the Mints refused by each limit and what the steps reached. On the
    /// durable store the checkpointer's round runs before each call that
    /// may remove a record (see
    /// [`KNOWN_BUG_REMOVAL_REPLAYED_WITH_STALE_USES`]); there is no
    /// background sweeper or checkpointer.
    pub(crate) fn run(mut self) -> ([u32; 4], Coverage) {
        for step in 0..self.case.steps {
            let action = self.draw();
            self.context = format!(
                "{} seed {} step {step} at +{} ms: {action:?}",
                self.case.name,
                self.seed,
                self.now() - START
            );
            if self.trace {
                eprintln!("{}", self.context);
            }
            let removes = matches!(
                action,
                Action::Mint(_)
                    | Action::RevokeCredential { .. }
                    | Action::RevokeThread { .. }
                    | Action::Sweep
            );
            if removes && self.data.is_some() && KNOWN_BUG_REMOVAL_REPLAYED_WITH_STALE_USES {
                // The checkpointer's round before a call that may remove a
                // record, so that replay removes it with its latest use.
                let written = self.store.checkpoint_renewals().expect(&self.context);
                self.journal_ends_clean &= written == 0;
            }
            self.apply(&action);
            self.check_counts();
            if step % 64 == 0 {
                self.store.check_invariants().expect(&self.context);
            }
        }
        let coverage = self.coverage;
        self.finish();
        (self.refused, coverage)
    }

    /// At the end every credential answers as the model says; then, past
    /// every deadline, a sweep leaves no record and no queued deadline,
    /// and past the retention no tombstone.
    pub(crate) fn finish(&mut self) {
        self.store.check_invariants().expect("at the end");
        self.context = format!("{} seed {} at the end", self.case.name, self.seed);
        for cred in 0..self.model.creds.len() {
            self.resolve(cred, None);
        }
        let past_deadlines = self.model.limits.idle_timeout + 1;
        self.clock.advance(Duration::from_millis(past_deadlines));
        self.sweep();
        self.check_counts();
        assert_eq!(self.store.record_count(), 0, "{}", self.context);
        assert_eq!(self.store.queued_deadlines(), 0, "{}", self.context);
        self.clock
            .advance(Duration::from_millis(self.model.limits.retention + 1));
        self.sweep();
        self.check_counts();
        assert_eq!(self.store.tombstone_count(), 0, "{}", self.context);
        assert_eq!(self.store.thread_tombstone_count(), 0, "{}", self.context);
        for thread in 0..THREADS {
            self.touch_thread(ADMIN, thread);
        }
    }
}
