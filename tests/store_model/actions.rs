use crate::*;

/// Why the clock moved as it did (shown in failure messages).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Jump {
    Zero,
    OneMilli,
    Millis,
    /// To `offset` ms from credential `credential`'s idle deadline (the
    /// instant it dies unless used): -1, 0 or +1.
    NearDeadline {
        credential: usize,
        offset: i64,
    },
    Seconds,
    Minutes,
    Hours,
    Days,
    Months,
}

/// One Mint's arguments.
#[derive(Debug, Clone)]
pub(crate) struct MintCall {
    pub(crate) actor: usize,
    pub(crate) thread: usize,
    pub(crate) instance: usize,
    pub(crate) replace: bool,
    pub(crate) kind: Option<&'static str>,
    pub(crate) scopes: Vec<&'static str>,
    pub(crate) labels: Vec<(&'static str, &'static str)>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
}

/// One step of a run. Credentials are named by their index in the model.
///
/// To add an action: a variant here, its draw in [`Run::draw`], and an arm
/// in [`Run::apply`] that calls the store and compares its answer with the
/// model's.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Advance {
        by: Millis,
        why: Jump,
    },
    Mint(MintCall),
    Resolve {
        credential: usize,
        scope: Option<&'static str>,
    },
    TouchCredential {
        actor: usize,
        credential: usize,
    },
    TouchThread {
        actor: usize,
        thread: usize,
    },
    RevokeCredential {
        actor: usize,
        credential: usize,
    },
    RevokeThread {
        actor: usize,
        thread: usize,
    },
    RevokeAll {
        actor: usize,
        instance: Option<usize>,
    },
    Sweep,
    /// Stops the durable store and opens it again on its data directory:
    /// cleanly ([`Store::close`]), or as a crash right after a checkpoint
    /// (see [`Run::restart`]).
    Restart {
        crash: bool,
    },
}

/// A small deterministic generator (xorshift64), so a failure repeats from
/// its seed.
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator for one seed of one case: the case's name is mixed
    /// in, so the cases do not replay one sequence of calls.
    pub(crate) fn for_case(name: &str, seed: u64) -> Self {
        let mixed = name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        Rng(mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits (xorshift64).
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub(crate) fn within(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + self.next() % (hi - lo + 1)
    }

    /// True once in `n` draws.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

impl Run<'_> {
    // -- drawing ------------------------------------------------------------

    /// The credential a call names: the focus half the time, else mostly
    /// a held one, sometimes a recently removed one, rarely any ever
    /// minted (long forgotten ones must answer unknown).
    pub(crate) fn pick_credential(&mut self) -> Option<usize> {
        if self.model.creds.is_empty() {
            return None;
        }
        if let Some(focus) = self.focus.filter(|_| self.rng.one_in(2)) {
            return Some(focus);
        }
        let (held, removed) = (&self.model.held, &self.model.removed);
        Some(match self.rng.below(8) {
            0..=4 if !held.is_empty() => held[self.rng.below(held.len())],
            5 | 6 if !removed.is_empty() => removed[self.rng.below(removed.len())],
            _ => self.rng.below(self.model.creds.len()),
        })
    }

    /// Mostly a thread some held credential is on, else any.
    pub(crate) fn pick_thread(&mut self) -> usize {
        if !self.model.held.is_empty() && self.rng.one_in(2) {
            let i = self.model.held[self.rng.below(self.model.held.len())];
            return self.model.creds[i].thread;
        }
        self.rng.below(THREADS)
    }

    /// A time jump: nothing, a millisecond, a few; a quarter one
    /// millisecond before, at or after a live credential's idle deadline;
    /// else seconds, minutes, hours, days or months, rarer the longer.
    pub(crate) fn draw_advance(&mut self) -> Action {
        let now = self.now();
        let rng = &mut self.rng;
        let (by, why) = match rng.below(100) {
            0..=19 => (0, Jump::Zero),
            20..=34 => (1, Jump::OneMilli),
            35..=49 => (rng.within(2, 50), Jump::Millis),
            50..=74 => {
                // The focus, else mostly the earliest idle deadline (which
                // ends one credential, not every one before a random one).
                let creds = &self.model.creds;
                let live: Vec<usize> = self
                    .model
                    .held
                    .iter()
                    .copied()
                    .filter(|&i| creds[i].live(now))
                    .collect();
                let target = self
                    .focus
                    .filter(|i| live.contains(i) && rng.one_in(2))
                    .or_else(|| match rng.below(4) {
                        _ if live.is_empty() => None,
                        0 => Some(live[rng.below(live.len())]),
                        _ => live
                            .iter()
                            .copied()
                            .min_by_key(|&i| creds[i].deadlines().idle_expires_at),
                    });
                match target {
                    Some(credential) => {
                        let offset = rng.below(3) as i64 - 1;
                        let deadline = self.model.creds[credential].deadlines().idle_expires_at;
                        let at = deadline.saturating_add_signed(offset);
                        self.focus = Some(credential);
                        (
                            at.saturating_sub(now),
                            Jump::NearDeadline { credential, offset },
                        )
                    }
                    None => (1, Jump::OneMilli),
                }
            }
            75..=86 => (rng.within(1, 59) * SECOND, Jump::Seconds),
            87..=92 => (rng.within(1, 59) * MINUTE, Jump::Minutes),
            93..=96 => (rng.within(1, 23) * HOUR, Jump::Hours),
            97..=98 => (rng.within(1, 29) * DAY, Jump::Days),
            _ => (rng.within(1, 6) * 30 * DAY, Jump::Months),
        };
        Action::Advance { by, why }
    }

    /// A Mint: any caller, mostly its own instances, a third replacing,
    /// with a prefix of the scopes and labels, sometimes a kind, and one in
    /// eight with an idle or max lifetime override (0, 1 ms, a few ms, a
    /// third of the store's, or twice it, to be clamped).
    pub(crate) fn draw_mint(&mut self) -> Action {
        let rng = &mut self.rng;
        let actor = rng.below(ACTORS.len());
        // Mostly the actor's own two instances, sometimes anyone's.
        let instance = if rng.below(5) > 0 {
            2 * actor + rng.below(2)
        } else {
            rng.below(INSTANCES)
        };
        let idle = millis(self.case.config.idle_timeout);
        let max = millis(self.case.config.max_lifetime);
        let overrides = |rng: &mut Rng, store: Millis| {
            rng.one_in(8).then(|| {
                Duration::from_millis(match rng.below(5) {
                    0 => 0,
                    1 => 1,
                    2 => rng.within(2, 40),
                    3 => store / 3,
                    _ => store.saturating_mul(2),
                })
            })
        };
        Action::Mint(MintCall {
            actor,
            thread: self.pick_thread_for_mint(instance),
            instance,
            replace: self.rng.one_in(3),
            kind: KINDS[self.rng.below(KINDS.len())],
            scopes: SCOPES[..self.rng.below(SCOPES.len())].to_vec(),
            labels: LABELS[..self.rng.below(LABELS.len())].to_vec(),
            idle_timeout: overrides(&mut self.rng, idle),
            max_lifetime: overrides(&mut self.rng, max),
        })
    }

    /// Often a thread that holds a credential of the same instance (a
    /// rotation, which a replacement then revokes), else any.
    pub(crate) fn pick_thread_for_mint(&mut self, instance: usize) -> usize {
        let rotations: Vec<usize> = self
            .model
            .held()
            .filter(|c| c.instance == instance)
            .map(|c| c.thread)
            .collect();
        if !rotations.is_empty() && self.rng.below(5) < 2 {
            return rotations[self.rng.below(rotations.len())];
        }
        self.rng.below(THREADS)
    }

    /// The next step: on a durable store a restart about once in the
    /// case's `restart_one_in` steps; else about a fifth time jumps, over a
    /// quarter Mints, the rest Resolve, Touch, the revocations and sweeps.
    pub(crate) fn draw(&mut self) -> Action {
        if let Storage::Durable { restart_one_in } = self.case.storage {
            if self.restart_allowed() && self.rng.one_in(restart_one_in) {
                return Action::Restart {
                    crash: self.rng.one_in(2),
                };
            }
        }
        let roll = self.rng.below(100);
        let actor = self.rng.below(ACTORS.len());
        match roll {
            0..=21 => self.draw_advance(),
            22..=49 => self.draw_mint(),
            50..=65 => match self.pick_credential() {
                Some(credential) => {
                    let scope = self
                        .rng
                        .one_in(3)
                        .then(|| SCOPES[self.rng.below(SCOPES.len())]);
                    Action::Resolve { credential, scope }
                }
                None => self.draw_mint(),
            },
            66..=72 => match self.pick_credential() {
                Some(credential) => Action::TouchCredential { actor, credential },
                None => self.draw_mint(),
            },
            73..=80 => Action::TouchThread {
                actor,
                thread: self.pick_thread(),
            },
            81..=86 => match self.pick_credential() {
                Some(credential) => Action::RevokeCredential { actor, credential },
                None => self.draw_mint(),
            },
            87..=91 => Action::RevokeThread {
                actor,
                thread: self.pick_thread(),
            },
            92..=94 => Action::RevokeAll {
                actor,
                instance: self
                    .rng
                    .below(3)
                    .checked_sub(1)
                    .map(|_| self.rng.below(INSTANCES)),
            },
            _ => Action::Sweep,
        }
    }
}
