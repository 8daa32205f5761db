//! Node selection: which node of a service takes the next call.

use crate::registry::Node;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How the client picks among a service's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Uniformly at random (the default, as in go-micro).
    #[default]
    Random,
    /// Each node in turn.
    RoundRobin,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "random" => Ok(Strategy::Random),
            "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            _ => Err(format!(
                "unknown selector `{s}`, expected one of: `random`, `roundrobin`"
            )),
        }
    }
}

/// Picks nodes by a [`Strategy`].
#[derive(Debug, Default)]
pub struct Selector {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Selector {
    /// A selector using `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            next: AtomicUsize::new(rand::random::<u16>() as usize),
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks one of `nodes` for which `allowed` holds, or `None` if there is none.
    pub fn select<'a>(
        &self,
        nodes: &'a [Node],
        allowed: impl Fn(&Node) -> bool,
    ) -> Option<&'a Node> {
        let count = nodes.iter().filter(|n| allowed(n)).count();
        if count == 0 {
            return None;
        }
        let k = match self.strategy {
            Strategy::Random => rand::random_range(0..count),
            Strategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % count,
        };
        nodes.iter().filter(|n| allowed(n)).nth(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| Node {
                id: i.to_string(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let s = Selector::new(Strategy::RoundRobin);
        let ns = nodes(3);
        let picks: Vec<_> = (0..6)
            .map(|_| s.select(&ns, |_| true).unwrap().id.clone())
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let mut first: Vec<_> = picks[0..3].to_vec();
        first.sort();
        assert_eq!(first, ["0", "1", "2"]);
    }

    #[test]
    fn random_spreads_and_respects_the_filter() {
        let s = Selector::new(Strategy::Random);
        let ns = nodes(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let n = s.select(&ns, |n| n.id != "1").unwrap();
            assert_ne!(n.id, "1");
            seen.insert(n.id.clone());
        }
        assert_eq!(seen.len(), 2);
        assert!(s.select(&ns, |_| false).is_none());
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            "round_robin".parse::<Strategy>().unwrap(),
            Strategy::RoundRobin
        );
        assert!("p3c"
            .parse::<Strategy>()
            .unwrap_err()
            .contains("expected one of"));
    }
}
