//! Who is online: user id -> that user's sessions, sharded behind parking_lot read-write locks.
//!
//! Owns insertion with the multi-login policy, idempotent removal by connection id, and
//! lookups for relay. Under a lock it only reads and edits maps: no I/O, no channel sends, no
//! wake-ups; callers act on the returned sessions after the lock is released.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::mailbox::{ConnId, SessionHandle};
use crate::metrics::{add, Metrics};
use crate::policy::{MultiLoginPolicy, PlatformSet};

const SHARDS: usize = 64;

type Shard = HashMap<Arc<str>, Vec<Arc<SessionHandle>>>;

/// The user -> sessions map.
pub(crate) struct Registry {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// Bumped by every edit, under the edited user's shard lock: one user's edits get
    /// increasing versions in the order they were made (presence pushes are ordered by it).
    version: AtomicU64,
}

/// The result of a registration.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    /// False when the session had already ended: it was not inserted.
    pub(crate) inserted: bool,
    /// Older sessions the policy removed; the caller kicks them.
    pub(crate) kicked: Vec<Arc<SessionHandle>>,
    /// The user's online platforms right after this edit (read under the same lock).
    pub(crate) platforms: PlatformSet,
    /// The edit's version (see [`Registry::platforms_of`]).
    pub(crate) version: u64,
}

/// One session of a user, as `online` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OnlineSession {
    /// The session's platform id.
    pub platform: u8,
    /// The session's connection id.
    pub conn: ConnId,
    /// Whether the client said it is in the background.
    pub background: bool,
}

impl Registry {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            metrics,
            version: AtomicU64::new(0),
        }
    }

    fn shard(&self, user: &str) -> &RwLock<Shard> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    /// Inserts `session` unless it has already ended, removing (and returning) the user's
    /// sessions that `policy` says the new login kicks.
    pub(crate) fn register(&self, session: &Arc<SessionHandle>, policy: MultiLoginPolicy) -> Registered {
        let mut shard = self.shard(&session.user).write();
        // Decided under the lock the unregister role also takes: if the reactor ended (or
        // cancelled) the session before this point, its unregister may already have run and
        // found nothing to remove, so it must not be inserted now.
        if !session.try_flag_registered() {
            return Registered::default();
        }
        let list = shard.entry(session.user.clone()).or_default();
        let was_empty = list.is_empty();
        let mut kicked = Vec::new();
        list.retain(|old| {
            let keep = !policy.kicks(old.platform, session.platform);
            if !keep {
                kicked.push(old.clone());
            }
            keep
        });
        list.push(session.clone());
        let platforms = list.iter().map(|s| s.platform).collect();
        let version = self.next_version();
        drop(shard);
        add(&self.metrics.registry_sessions, 1 - kicked.len() as i64);
        if was_empty {
            add(&self.metrics.online_users, 1);
        }
        Registered { inserted: true, kicked, platforms, version }
    }

    /// Removes `session` if it is still registered; never removes another connection of the
    /// same user and platform. Returns the user's online platforms right after the removal and
    /// the edit's version, or `None` if the session was not there (nothing changed).
    pub(crate) fn unregister(&self, session: &SessionHandle) -> Option<(PlatformSet, u64)> {
        let mut shard = self.shard(&session.user).write();
        let list = shard.get_mut(&*session.user)?;
        let i = list.iter().position(|s| s.conn == session.conn)?;
        list.swap_remove(i);
        let platforms: PlatformSet = list.iter().map(|s| s.platform).collect();
        let version = self.next_version();
        let now_empty = list.is_empty();
        if now_empty {
            shard.remove(&*session.user);
        }
        drop(shard);
        add(&self.metrics.registry_sessions, -1);
        if now_empty {
            add(&self.metrics.online_users, -1);
        }
        Some((platforms, version))
    }

    /// Called under a shard's write lock.
    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Relaxed) + 1
    }

    /// The online platforms of `user`, for presence answers, and a version that every earlier
    /// edit of `user` is at or below and every later one above: read under the user's shard
    /// lock, which every edit of `user` holds while it takes its version.
    pub(crate) fn platforms_of(&self, user: &str) -> (PlatformSet, u64) {
        let shard = self.shard(user).read();
        let platforms = shard.get(user).map(|list| list.iter().map(|s| s.platform).collect()).unwrap_or_default();
        (platforms, self.version.load(Relaxed))
    }

    /// Appends the sessions of `user` to `out` (clones of the handles; the lock is released on
    /// return, so the caller may push to them freely).
    pub(crate) fn sessions_of(&self, user: &str, out: &mut Vec<Arc<SessionHandle>>) {
        if let Some(list) = self.shard(user).read().get(user) {
            out.extend(list.iter().cloned());
        }
    }

    /// The sessions of `user`, for presence queries.
    pub(crate) fn online(&self, user: &str) -> Vec<OnlineSession> {
        let shard = self.shard(user).read();
        shard.get(user).map_or_else(Vec::new, |list| {
            list.iter()
                .map(|s| OnlineSession {
                    platform: s.platform.id(),
                    conn: s.conn,
                    background: s.background.load(std::sync::atomic::Ordering::Relaxed),
                })
                .collect()
        })
    }

    /// Sessions in the registry (sum over shards; exact when nothing is registering).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().values().map(Vec::len).sum::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::tests::{handle, mailbox};
    use crate::policy::Platform;
    use MultiLoginPolicy::*;
    use Platform::*;

    fn registry() -> Registry {
        Registry::new(Arc::new(Metrics::default()))
    }

    #[test]
    fn same_terminal_kick_replaces_the_older_session() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let r = registry();
        let a = handle("u", Ios, 1, &mb);
        let b = handle("u", Ios, 2, &mb);
        let c = handle("u", Web, 3, &mb);
        assert!(r.register(&a, SameTerminalKick).kicked.is_empty());
        assert!(r.register(&c, SameTerminalKick).kicked.is_empty());
        let outcome = r.register(&b, SameTerminalKick);
        assert_eq!(outcome.kicked.iter().map(|s| s.conn).collect::<Vec<_>>(), vec![1]);
        assert_eq!(outcome.platforms.ids(), vec![1, 5], "the state after the kick and the insert");
        assert_eq!(r.platforms_of("u").0.ids(), vec![1, 5]);
        assert_eq!(r.unregister(&c).map(|(p, _)| p.ids()), Some(vec![1]));
        assert_eq!(r.platforms_of("nobody").0, PlatformSet::default());
        r.register(&c, NotKick);
        let mut conns: Vec<_> = r.online("u").into_iter().map(|s| s.conn).collect();
        conns.sort();
        assert_eq!(conns, vec![2, 3]);
        let m = r.metrics.snapshot();
        assert_eq!((m.registry_sessions, m.online_users), (2, 1));
    }

    #[test]
    fn stale_unregister_never_removes_the_newer_session() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let r = registry();
        let old = handle("u", Ios, 1, &mb);
        let new = handle("u", Ios, 2, &mb);
        r.register(&old, SameTerminalKick);
        r.register(&new, SameTerminalKick);
        assert!(r.unregister(&old).is_none(), "the kicked session is already gone");
        assert_eq!(r.online("u").len(), 1);
        assert_eq!(r.online("u")[0].conn, 2);
        assert_eq!(r.unregister(&new).map(|(p, _)| p), Some(PlatformSet::default()), "u is offline after it");
        assert!(r.unregister(&new).is_none(), "unregister is idempotent");
        assert_eq!(r.len(), 0);
        let m = r.metrics.snapshot();
        assert_eq!((m.registry_sessions, m.online_users), (0, 0));
    }

    #[test]
    fn an_ended_session_is_never_inserted() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let r = registry();
        let s = handle("u", Ios, 1, &mb);
        s.mark_ended();
        assert!(!r.register(&s, SameTerminalKick).inserted);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn not_kick_keeps_every_login() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let r = registry();
        for conn in 1..=3 {
            assert!(r.register(&handle("u", Ios, conn, &mb), NotKick).kicked.is_empty());
        }
        assert_eq!(r.online("u").len(), 3);
    }

    #[test]
    fn pc_and_other_kicks_only_non_pc_sessions_on_a_non_pc_login() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let r = registry();
        r.register(&handle("u", Windows, 1, &mb), PcAndOther);
        r.register(&handle("u", Ios, 2, &mb), PcAndOther);
        r.register(&handle("u", Web, 3, &mb), PcAndOther);
        assert_eq!(r.online("u").len(), 2, "the web login kicked iOS, not Windows");
        assert!(r.register(&handle("u", Linux, 4, &mb), PcAndOther).kicked.is_empty());
        assert_eq!(r.online("u").len(), 3);
    }
}
