//! Who watches whom: watched user id -> the sessions subscribed to its online status (2005),
//! sharded behind parking_lot read-write locks.
//!
//! Owns the subscription map and the `presence_subscriptions` gauge. The per-session list of
//! watched users is not here: it belongs to the session's reactor (the dispatcher), which is the
//! only thread that subscribes or unsubscribes a session, and which removes everything with
//! [`Presence::unsubscribe_all`] when the session ends. Under a lock it only reads and edits
//! maps: no I/O, no channel sends, no wake-ups, no other lock. Callers push to the subscribers
//! [`Presence::subscribers_of`] copied out after the lock is released.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::mailbox::{ConnId, SessionHandle};
use crate::metrics::{add, Metrics};

const SHARDS: usize = 64;

type Shard = HashMap<Arc<str>, HashMap<ConnId, Arc<SessionHandle>>>;

/// The watched user -> subscribers map.
pub(crate) struct Presence {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
}

impl Presence {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Presence {
        Presence { shards: (0..SHARDS).map(|_| RwLock::default()).collect(), hasher: RandomState::new(), metrics }
    }

    fn shard(&self, user: &str) -> &RwLock<Shard> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    /// `session` starts watching `user`. Returns whether it was new (false: already watching).
    pub(crate) fn subscribe(&self, user: &Arc<str>, session: &Arc<SessionHandle>) -> bool {
        let mut shard = self.shard(user).write();
        let added = shard.entry(user.clone()).or_default().insert(session.conn, session.clone()).is_none();
        drop(shard);
        if added {
            add(&self.metrics.presence_subscriptions, 1);
        }
        added
    }

    /// `session` stops watching `user`. Returns whether it was watching.
    pub(crate) fn unsubscribe(&self, user: &str, session: &SessionHandle) -> bool {
        let removed = Self::remove(&mut self.shard(user).write(), user, session.conn);
        if removed {
            add(&self.metrics.presence_subscriptions, -1);
        }
        removed
    }

    /// `session` has ended: it stops watching every user in `users` (its own list).
    pub(crate) fn unsubscribe_all(&self, session: &SessionHandle, users: &[Arc<str>]) {
        let mut removed = 0;
        for user in users {
            removed += i64::from(Self::remove(&mut self.shard(user).write(), user, session.conn));
        }
        add(&self.metrics.presence_subscriptions, -removed);
    }

    fn remove(shard: &mut Shard, user: &str, conn: ConnId) -> bool {
        let Some(subscribers) = shard.get_mut(user) else { return false };
        let removed = subscribers.remove(&conn).is_some();
        if subscribers.is_empty() {
            shard.remove(user);
        }
        removed
    }

    /// Appends the sessions watching `user` to `out` (clones of the handles; the lock is released
    /// on return). Cheap when nobody watches `user`: one read lock and one lookup.
    pub(crate) fn subscribers_of(&self, user: &str, out: &mut Vec<Arc<SessionHandle>>) {
        if let Some(subscribers) = self.shard(user).read().get(user) {
            out.extend(subscribers.values().cloned());
        }
    }

    /// Users watched by at least one session (sum over shards; for tests).
    #[cfg(test)]
    pub(crate) fn watched_users(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::tests::{handle, mailbox};
    use crate::policy::Platform;

    fn conns(p: &Presence, user: &str) -> Vec<ConnId> {
        let mut out = Vec::new();
        p.subscribers_of(user, &mut out);
        let mut conns: Vec<ConnId> = out.iter().map(|s| s.conn).collect();
        conns.sort();
        conns
    }

    #[test]
    fn subscribe_is_idempotent_and_unsubscribe_removes_only_that_session() {
        let (mb, _rx, _poll) = mailbox(8, 1000);
        let p = Presence::new(Arc::new(Metrics::default()));
        let (a, b) = (handle("a", Platform::Ios, 1, &mb), handle("b", Platform::Web, 2, &mb));
        let u: Arc<str> = "u".into();
        assert!(p.subscribe(&u, &a));
        assert!(!p.subscribe(&u, &a), "already watching");
        assert!(p.subscribe(&u, &b));
        assert_eq!(conns(&p, "u"), [1, 2]);
        assert_eq!(p.metrics.snapshot().presence_subscriptions, 2);
        assert!(p.unsubscribe("u", &a));
        assert!(!p.unsubscribe("u", &a), "not watching any more: a no-op");
        assert!(!p.unsubscribe("nobody", &a));
        assert_eq!(conns(&p, "u"), [2]);
        assert!(p.unsubscribe("u", &b));
        assert!(conns(&p, "u").is_empty());
        assert_eq!(p.watched_users(), 0, "an unwatched user leaves no entry behind");
        assert_eq!(p.metrics.snapshot().presence_subscriptions, 0);
    }

    #[test]
    fn unsubscribe_all_removes_a_sessions_every_subscription_and_nothing_else() {
        let (mb, _rx, _poll) = mailbox(8, 1000);
        let p = Presence::new(Arc::new(Metrics::default()));
        let (a, b) = (handle("a", Platform::Ios, 1, &mb), handle("b", Platform::Web, 2, &mb));
        let users: Vec<Arc<str>> = (0..100).map(|i| format!("u{i}").into()).collect();
        for u in &users {
            p.subscribe(u, &a);
        }
        p.subscribe(&users[7], &b);
        assert_eq!(p.metrics.snapshot().presence_subscriptions, 101);
        p.unsubscribe_all(&a, &users);
        assert_eq!(p.metrics.snapshot().presence_subscriptions, 1);
        assert_eq!(conns(&p, "u7"), [2]);
        assert_eq!(p.watched_users(), 1);
        p.unsubscribe_all(&b, &users[7..8]);
        assert_eq!((p.watched_users(), p.metrics.snapshot().presence_subscriptions), (0, 0));
    }
}
