//! The order one connection tries the set's addresses in: from where `--balance` starts it (the
//! first address for priority, one further along for each connection for round-robin), the
//! healthy addresses first and the ones marked down after them, so a down address is tried only
//! when every healthy one failed: when all are down, all are tried, in order.
//!
//! Pure: no I/O, no clock, no locks.

/// `addrs` rotated to begin at `start` (modulo their number), healthy ones first, each group in
/// that order.
pub(super) fn order<A: Clone>(addrs: &[A], start: usize, is_down: impl Fn(&A) -> bool) -> Vec<A> {
    if addrs.is_empty() {
        return Vec::new();
    }
    let start = start % addrs.len();
    let rotated = addrs[start..].iter().chain(&addrs[..start]);
    let (up, down): (Vec<&A>, Vec<&A>) = rotated.partition(|a| !is_down(a));
    up.into_iter().chain(down).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keeps_the_order_and_puts_the_down_ones_last() {
        let all = ["a", "b", "c"];
        assert_eq!(order(&all, 0, |_| false), ["a", "b", "c"]);
        assert_eq!(order(&all, 0, |a| *a == "a"), ["b", "c", "a"]);
        assert_eq!(order(&all, 0, |a| *a != "c"), ["c", "a", "b"]);
        assert_eq!(
            order(&all, 0, |_| true),
            ["a", "b", "c"],
            "all down: all, in order"
        );
    }

    #[test]
    fn round_robin_starts_one_further_each_time() {
        let all = ["a", "b", "c"];
        assert_eq!(order(&all, 1, |_| false), ["b", "c", "a"]);
        assert_eq!(order(&all, 5, |_| false), ["c", "a", "b"]);
        assert_eq!(order(&all, 2, |a| *a == "c"), ["a", "b", "c"]);
        assert!(order::<&str>(&[], 3, |_| false).is_empty());
    }
}
