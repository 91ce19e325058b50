//! Which buffered task a worker starts next. Pure: the runtime passes in how long the oldest
//! buffered task of each priority class has waited; no clock, no queues here.
//!
//! Rule: the highest-priority class with a buffered task goes first, except that a task of a
//! lower class that has waited longer than the starvation limit goes ahead of it. When several
//! tasks have waited past the limit, the one that waited longest goes first (ties favour the
//! higher class), so every wait stays bounded. Within a class tasks run in arrival order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Chooses the priority class (index into the highest-first class list) whose oldest buffered
/// task starts next. `oldest_wait[i]` is how long the oldest buffered task of class `i` has
/// waited locally, `None` when nothing of class `i` is buffered.
pub fn choose_class(oldest_wait: &[Option<Duration>], starvation: Duration) -> Option<usize> {
    let highest = oldest_wait.iter().position(Option::is_some)?;
    let starved = oldest_wait
        .iter()
        .enumerate()
        .skip(highest)
        .filter_map(|(class, wait)| wait.filter(|w| *w > starvation).map(|w| (class, w)))
        // max_by_key keeps the last maximum; reverse so equal waits favour the higher class.
        .rev()
        .max_by_key(|(_, w)| *w);
    Some(starved.map_or(highest, |(class, _)| class))
}

/// Deliveries received but not started, one FIFO per priority class (highest first).
#[derive(Debug)]
pub struct Buffer<T> {
    classes: Vec<VecDeque<(Instant, T)>>,
}

impl<T> Buffer<T> {
    pub fn new(classes: usize) -> Self {
        Self { classes: (0..classes).map(|_| VecDeque::new()).collect() }
    }

    pub fn push(&mut self, class: usize, received_at: Instant, item: T) {
        self.classes[class].push_back((received_at, item));
    }

    pub fn len(&self) -> usize {
        self.classes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the task that should start next (see [`choose_class`]).
    pub fn pop_next(&mut self, now: Instant, starvation: Duration) -> Option<(usize, T)> {
        let waits: Vec<Option<Duration>> =
            self.classes.iter().map(|q| q.front().map(|(at, _)| now.saturating_duration_since(*at))).collect();
        let class = choose_class(&waits, starvation)?;
        self.classes[class].pop_front().map(|(_, item)| (class, item))
    }

    /// Keeps only the tasks for which `keep` is true, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for class in &mut self.classes {
            class.retain(|(_, item)| keep(item));
        }
    }

    /// Empties the buffer (shutdown: everything goes back to the broker).
    pub fn drain(&mut self) -> Vec<T> {
        self.classes.iter_mut().flat_map(|q| q.drain(..).map(|(_, item)| item)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Option<Duration> {
        Some(Duration::from_secs(secs))
    }

    #[test]
    fn choose_class_table() {
        let limit = Duration::from_secs(60);
        type Case<'a> = (&'a [Option<Duration>], Option<usize>, &'a str);
        let cases: &[Case] = &[
            (&[], None, "no classes"),
            (&[None, None, None], None, "nothing buffered"),
            (&[s(0), s(0), s(0)], Some(0), "highest first"),
            (&[None, s(5), s(50)], Some(1), "highest non-empty class"),
            (&[s(1), None, s(59)], Some(0), "low below the limit waits"),
            (&[s(1), None, s(60)], Some(0), "exactly the limit is not starving"),
            (&[s(1), None, s(61)], Some(2), "starved low goes first"),
            (&[s(1), s(70), s(90)], Some(2), "longest starved wins"),
            (&[s(1), s(90), s(90)], Some(1), "equal starvation favours the higher class"),
            (&[s(100), s(61), None], Some(0), "among starved tasks the longest wait goes first"),
            (&[s(61), s(100), None], Some(1), "a longer-starved lower class goes ahead of a starved higher one"),
            (&[None, s(200), s(100)], Some(1), "highest non-empty class waited longest"),
            (&[s(30), s(61), s(65)], Some(2), "oldest starved lower class"),
        ];
        for (waits, expected, why) in cases {
            assert_eq!(choose_class(waits, limit), *expected, "{why}");
        }
    }

    #[test]
    fn buffer_is_fifo_within_a_class_and_prioritised_across() {
        let now = Instant::now();
        let mut b = Buffer::new(2);
        b.push(1, now, "low-1");
        b.push(1, now, "low-2");
        b.push(0, now, "high-1");
        let limit = Duration::from_secs(60);
        let order: Vec<_> = std::iter::from_fn(|| b.pop_next(now, limit)).collect();
        assert_eq!(order, vec![(0, "high-1"), (1, "low-1"), (1, "low-2")]);
        assert!(b.is_empty());
    }

    #[test]
    fn buffer_lets_a_starved_task_through() {
        let start = Instant::now();
        let later = start + Duration::from_secs(61);
        let mut b = Buffer::new(2);
        b.push(1, start, "old-low");
        b.push(0, later, "new-high");
        assert_eq!(b.pop_next(later, Duration::from_secs(60)), Some((1, "old-low")));
        assert_eq!(b.drain(), vec!["new-high"]);
    }

    #[test]
    fn retain_drops_only_what_it_is_told_and_keeps_the_order() {
        let now = Instant::now();
        let mut b = Buffer::new(2);
        for (class, item) in [(0, 1), (1, 2), (0, 3), (1, 4), (0, 5)] {
            b.push(class, now, item);
        }
        b.retain(|item| item % 2 == 1);
        assert_eq!(b.len(), 3);
        assert_eq!(b.drain(), vec![1, 3, 5]);
    }
}
