//! The roster of listed locks: what a listing source (the Web API account, one Nuki Bridge)
//! owns. A source that lists locks owns exactly the locks its last successful listing named:
//! it records them, removes the ones it listed before and no longer lists (whichever source
//! created them), and nothing else of it may change any other lock. A bridge's callbacks, which
//! no signature protects, are accepted only for the locks of that bridge's roster.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

/// The locks one source listed last.
#[derive(Debug, Default)]
pub struct Roster {
    listed: RwLock<HashSet<u64>>,
}

impl Roster {
    /// A roster that starts with `ids` (the state file's locks, for the Web API account: its
    /// first poll removes those it does not list).
    pub fn with(ids: impl IntoIterator<Item = u64>) -> Self {
        Self {
            listed: RwLock::new(ids.into_iter().collect()),
        }
    }

    /// Whether the last listing named `id`.
    pub fn lists(&self, id: u64) -> bool {
        self.read().contains(&id)
    }

    /// Runs `change` when the last listing named `id`, and holds the roster while it runs, so
    /// that a listing that drops `id` at the same time waits for it: a change never lands on
    /// a lock the source has just removed. `None` when `id` is not listed.
    pub fn if_listed<T>(&self, id: u64, change: impl FnOnce() -> T) -> Option<T> {
        let listed = self.read();
        listed.contains(&id).then(change)
    }

    /// Replaces the listing with `listed`; the ids listed before and no longer, to remove.
    pub fn replace(&self, listed: HashSet<u64>) -> Vec<u64> {
        let mut current = self.listed.write().unwrap_or_else(PoisonError::into_inner);
        let gone = current.difference(&listed).copied().collect();
        *current = listed;
        gone
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<u64>> {
        self.listed.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_replaces_the_last_and_names_what_left() {
        let roster = Roster::with([1, 2, 3]);
        let mut gone = roster.replace(HashSet::from([2, 3, 4]));
        gone.sort_unstable();
        assert_eq!(gone, [1]);
        assert!(roster.lists(4) && !roster.lists(1));
        assert_eq!(roster.if_listed(4, || "changed"), Some("changed"));
        assert_eq!(roster.if_listed(1, || "changed"), None);
        assert_eq!(roster.replace(HashSet::new()).len(), 3);
        assert!(!roster.lists(2));
    }
}
