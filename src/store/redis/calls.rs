//! The store API on Redis: each call one function of `library.lua`, its
//! reply read back into the store's types.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::reply::{
    array, dead_reply, id_at, integer, live_reply, number, refusal, tag, text, unreadable,
};
use super::{fcall, keys, RedisStore, PRUNE_BATCH};
use crate::store::types::{
    Budget, CredentialRevocation, CredentialView, Deadlines, Minted, NewCredential, Reach,
    Rejection, RevokeAllTarget, ThreadRevocation, ThreadTouch, Touched,
};
use crate::token::{CredentialId, TokenDigest};

impl RedisStore {
    /// Unlists up to a batch of dead credentials (the backend's sweeper);
    /// returns how many it looked at.
    pub async fn prune(&self) -> Result<u64, Rejection> {
        let reply = self
            .call(
                fcall("ca1_prune", &[])
                    .arg(self.time_arg())
                    .arg(PRUNE_BATCH)
                    .arg(self.retention())
                    .to_owned(),
            )
            .await?;
        Ok(integer(&reply).unwrap_or(0).max(0) as u64)
    }

    /// See [`super::Store::resolve_with`]: one function call.
    pub async fn resolve_with<T>(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
        answer: impl FnOnce(CredentialView<'_>) -> T,
    ) -> Result<T, Rejection> {
        let reply = self
            .call(
                fcall(
                    "ca1_resolve",
                    &[
                        keys::credential(digest),
                        keys::generations(keys::bucket(digest)),
                    ],
                )
                .arg(self.time_arg())
                .arg(required_scope.unwrap_or(""))
                .arg(self.retention())
                .to_owned(),
            )
            .await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "L" => {
                let live = live_reply(parts)?;
                Ok(answer(CredentialView {
                    credential_id: live.credential_id,
                    thread_id: &live.thread_id,
                    provider_instance_id: &live.instance_id,
                    provider_kind: (!live.kind.is_empty()).then_some(live.kind.as_str()),
                    minted_by: &live.owner,
                    created_at: live.created_at,
                    deadlines: live.deadlines,
                    scopes: &live.scopes,
                    labels: &live.labels,
                }))
            }
            "S" => Err(Rejection::ScopeMissing {
                credential_id: id_at(parts, 1)?,
                thread_id: Arc::from(text(parts, 2)?),
                scope: required_scope.unwrap_or("").into(),
            }),
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::mint`]: one function call checks the instance's
    /// owner, the thread's limit, the caller's quota and the budgets, then
    /// replaces and writes in one atomic step.
    pub async fn mint(
        &self,
        digest: TokenDigest,
        new: NewCredential<'_>,
    ) -> Result<Minted, Rejection> {
        let config = &self.shared.config;
        let credential_id = CredentialId::generate_routed(keys::bucket(&digest));
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let clamp = |asked: Option<Duration>, limit: Duration| {
            asked.map_or(millis(limit), |d| millis(d.min(limit)).max(1))
        };
        let scopes = new.scopes.join("\n");
        let labels: String = new
            .labels
            .iter()
            .map(|(k, v)| format!("{k}\t{v}\n"))
            .collect();
        let bytes = new.thread_id.len()
            + new.provider_instance_id.len()
            + new.provider_kind.map_or(0, str::len)
            + new.scopes.iter().map(|s| s.len()).sum::<usize>()
            + new
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let owner_hash = keys::name_digest(new.minted_by);
        let instance_hash = keys::name_digest(new.provider_instance_id);
        let command = fcall(
            "ca1_mint",
            &[
                keys::credential(&digest),
                keys::credential_id(&credential_id),
                keys::generations(keys::bucket(&digest)),
                keys::thread(new.thread_id),
                keys::thread_tomb(new.thread_id),
                keys::instance_claims(new.provider_instance_id),
            ],
        )
        .arg(self.time_arg())
        .arg(credential_id.to_string())
        .arg(new.thread_id)
        .arg(new.provider_instance_id)
        .arg(new.provider_kind.unwrap_or(""))
        .arg(new.minted_by)
        .arg(reach_arg(new.reach))
        .arg(clamp(new.idle_timeout, config.idle_timeout))
        .arg(clamp(new.max_lifetime, config.max_lifetime))
        .arg(
            config
                .absolute_lifetime
                .map_or(String::new(), |d| millis(d).to_string()),
        )
        .arg(scopes)
        .arg(labels)
        .arg(bytes)
        .arg(if new.replace_previous { "1" } else { "0" })
        .arg(config.max_credentials_per_thread)
        .arg(new.owner_quota.map_or(String::new(), |q| q.to_string()))
        .arg(config.max_credentials)
        .arg(config.max_credential_bytes)
        .arg(self.retention())
        .arg(owner_hash)
        .arg(instance_hash)
        .arg(if matches!(new.reach, Reach::All) {
            "0"
        } else {
            "1"
        })
        .to_owned();
        let reply = self.call_write(command).await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "OK" => Ok(Minted {
                credential_id,
                deadlines: Deadlines {
                    expires_at: number(parts, 2)?,
                    idle_expires_at: number(parts, 3)?,
                },
                replaced: number(parts, 4)?,
            }),
            "T" => Err(Rejection::ThreadLimit {
                thread_id: Arc::from(new.thread_id),
                limit: number(parts, 1)?,
            }),
            "Q" => Err(Rejection::OwnerQuota {
                owner: Arc::from(new.minted_by),
                limit: number(parts, 1)?,
            }),
            "B" => Err(Rejection::StoreBudget {
                budget: if text(parts, 1)? == "bytes" {
                    Budget::Bytes
                } else {
                    Budget::Credentials
                },
                limit: number(parts, 2)?,
            }),
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::touch_credential`].
    pub async fn touch_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<Touched, Rejection> {
        let reply = self
            .call(self.by_id("ca1_touch_credential", credential_id, reach))
            .await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "L" => Ok(Touched {
                credential_id: id_at(parts, 1)?,
                deadlines: Deadlines {
                    expires_at: number(parts, 2)?,
                    idle_expires_at: number(parts, 3)?,
                },
            }),
            _ => Err(refusal(parts, Some(*credential_id))?),
        }
    }

    /// See [`super::Store::touch_thread`].
    pub async fn touch_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadTouch, Rejection> {
        let reply = self.thread_call(thread_id, reach, "touch").await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "L" => {
                let total = number(parts, 1)?;
                let listed = parts.get(2).map(array).transpose()?.unwrap_or(&[]);
                let touched = listed
                    .chunks_exact(3)
                    .map(|one| {
                        Ok(Touched {
                            credential_id: id_at(one, 0)?,
                            deadlines: Deadlines {
                                expires_at: number(one, 1)?,
                                idle_expires_at: number(one, 2)?,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, Rejection>>()?;
                Ok(ThreadTouch { touched, total })
            }
            "D" => {
                let mut dead = dead_reply(parts)?;
                if dead.thread_id.is_empty() {
                    dead.thread_id = Arc::from(thread_id);
                }
                Err(Rejection::Dead(dead))
            }
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::revoke_thread`]: in force on every replica once
    /// this returns.
    pub async fn revoke_thread(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
    ) -> Result<ThreadRevocation, Rejection> {
        let reply = self.thread_call(thread_id, reach, "revoke").await?;
        let parts = array(&reply)?;
        match tag(parts)? {
            "R" => Ok(ThreadRevocation {
                revoked: number(parts, 1)?,
                not_owned: number(parts, 2)?,
            }),
            _ => Err(refusal(parts, None)?),
        }
    }

    /// See [`super::Store::revoke_credential`].
    pub async fn revoke_credential(
        &self,
        credential_id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<CredentialRevocation, Rejection> {
        let reply = self
            .call_write(self.by_id("ca1_revoke_credential", credential_id, reach))
            .await?;
        let parts = array(&reply)?;
        let revocation = match tag(parts)? {
            "1" => CredentialRevocation {
                revoked: 1,
                thread_id: Some(Arc::from(text(parts, 1)?)),
                provider_instance_id: Some(Arc::from(text(parts, 2)?)),
            },
            "0" => CredentialRevocation {
                revoked: 0,
                thread_id: Some(Arc::from(text(parts, 1)?)),
                provider_instance_id: None,
            },
            "U" => CredentialRevocation::default(),
            _ => return Err(refusal(parts, Some(*credential_id))?),
        };
        Ok(revocation)
    }

    /// See [`super::Store::revoke_all`]: writes every bucket's copy of the
    /// generations in one function call, whatever the number of
    /// credentials. Answers how many listed credentials the scope held (an
    /// upper bound of the live ones it ended).
    pub async fn revoke_all(&self, target: RevokeAllTarget<'_>) -> Result<u64, Rejection> {
        let (kind, owner, instance) = match target {
            RevokeAllTarget::Everything => ("a", String::new(), String::new()),
            RevokeAllTarget::MintedBy(owner) => ("o", keys::name_digest(owner), String::new()),
            RevokeAllTarget::Instance(instance) => {
                ("i", String::new(), keys::name_digest(instance))
            }
            RevokeAllTarget::MintedByForInstance {
                minted_by,
                provider_instance_id,
            } => (
                "p",
                keys::name_digest(minted_by),
                keys::name_digest(provider_instance_id),
            ),
        };
        let mut all_keys = vec![keys::MASTER_GENERATIONS.to_owned()];
        all_keys.extend((0..keys::BUCKETS).map(keys::generations));
        let reply = self
            .call_write(
                fcall("ca1_revoke_all", &all_keys)
                    .arg(self.time_arg())
                    .arg(kind)
                    .arg(owner)
                    .arg(instance)
                    .arg(self.retention())
                    .to_owned(),
            )
            .await?;
        let parts = array(&reply)?;
        let count = integer(parts.first().ok_or_else(unreadable)?).ok_or_else(unreadable)?;
        Ok(count.max(0) as u64)
    }

    /// A call of `function` on one credential named by its id.
    fn by_id(&self, function: &str, credential_id: &CredentialId, reach: Reach<'_>) -> redis::Cmd {
        fcall(function, &[keys::credential_id(credential_id)])
            .arg(self.time_arg())
            .arg(reach_arg(reach))
            .arg(self.retention())
            .to_owned()
    }

    /// Touch or RevokeThread: one function over the thread's credentials.
    async fn thread_call(
        &self,
        thread_id: &str,
        reach: Reach<'_>,
        mode: &str,
    ) -> Result<Value, Rejection> {
        let command = fcall(
            "ca1_thread",
            &[keys::thread(thread_id), keys::thread_tomb(thread_id)],
        )
        .arg(self.time_arg())
        .arg(reach_arg(reach))
        .arg(self.retention())
        .arg(self.shared.config.touch_reply_limit)
        .arg(mode)
        .to_owned();
        if mode == "revoke" {
            self.call_write(command).await
        } else {
            self.call(command).await
        }
    }
}

/// The caller a reach is limited to, or '' for every caller.
pub(super) fn reach_arg<'a>(reach: Reach<'a>) -> &'a str {
    match reach {
        Reach::All => "",
        Reach::MintedBy(owner) => owner,
    }
}
