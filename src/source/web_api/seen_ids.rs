//! A bounded set of the ids already counted from an external log, so that each entry is
//! counted once however often the log shows it: on a page of repeated ids, on an inclusive
//! page boundary, or again in the next read. The oldest ids are forgotten first, once more
//! than `capacity` were seen; the capacity is a multiple of what the log can hold.

use std::collections::{HashSet, VecDeque};

#[derive(Debug)]
pub struct SeenIds {
    capacity: usize,
    ids: HashSet<String>,
    /// The ids in the order they were first seen: the front is forgotten first.
    order: VecDeque<String>,
}

impl SeenIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Notes `id` as seen; true when it was not seen before.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_new_once_and_the_oldest_is_forgotten_first() {
        let mut seen = SeenIds::new(2);
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        assert!(seen.insert("b"));
        assert!(seen.insert("c"));
        assert!(!seen.contains("a") && seen.contains("b") && seen.contains("c"));
        assert!(!seen.insert("c"));
    }
}
