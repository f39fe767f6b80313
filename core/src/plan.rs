//! The order a deployment's hosts are rolled in: waves of `concurrency`, or one place
//! each in a sliding window's queue.

use crate::store::PlannedHost;
use vesemir_model::deployment::{Amount, Strategy};

/// Orders hosts by name and gives each its wave: the waves' cut for
/// [`Strategy::Waves`], and for a window each host's place in the order it takes them.
pub fn plan(hosts: Vec<PlannedHost>, strategy: Strategy, concurrency: Amount, canary: bool) -> Vec<PlannedHost> {
    match strategy {
        Strategy::Waves => waves(hosts, concurrency, canary),
        // The window keeps its own canary rule: the first host runs alone.
        Strategy::Window => waves(hosts, Amount::Count(1), false),
    }
}

/// Orders hosts by name and cuts them into waves of `concurrency` (at least one host);
/// with `canary`, the first host goes alone in a wave of its own.
pub fn waves(mut hosts: Vec<PlannedHost>, concurrency: Amount, canary: bool) -> Vec<PlannedHost> {
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    hosts.dedup_by(|a, b| a.name == b.name);
    let per_wave = concurrency.of(hosts.len()).max(1);
    let alone = usize::from(canary && !hosts.is_empty());
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let wave = if i < alone { 0 } else { alone + (i - alone) / per_wave };
            PlannedHost { wave: wave as i32, ..h }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<PlannedHost> {
        names.iter().map(|n| PlannedHost::new(n, &format!("10.0.0.{}", n.len()))).collect()
    }

    fn order(planned: &[PlannedHost]) -> Vec<(&str, i32)> {
        planned.iter().map(|h| (h.name.as_str(), h.wave)).collect()
    }

    #[test]
    fn hosts_are_ordered_by_name_and_cut_into_waves() {
        let planned = waves(hosts(&["c", "a", "e", "b", "d"]), Amount::Count(2), false);
        assert_eq!(order(&planned), [("a", 0), ("b", 0), ("c", 1), ("d", 1), ("e", 2)]);
    }

    #[test]
    fn a_percentage_rounds_down_but_never_below_one_host() {
        let planned = waves(hosts(&["a", "b", "c"]), Amount::Percent(10), false);
        assert_eq!(order(&planned), [("a", 0), ("b", 1), ("c", 2)]);
        let planned = waves(hosts(&["a", "b", "c", "d"]), Amount::Percent(50), false);
        assert_eq!(order(&planned), [("a", 0), ("b", 0), ("c", 1), ("d", 1)]);
    }

    #[test]
    fn a_canary_goes_first_alone() {
        let planned = waves(hosts(&["a", "b", "c", "d", "e"]), Amount::Count(2), true);
        assert_eq!(order(&planned), [("a", 0), ("b", 1), ("c", 1), ("d", 2), ("e", 2)]);
        assert!(waves(Vec::new(), Amount::Count(2), true).is_empty());
    }

    #[test]
    fn a_window_takes_hosts_one_place_each() {
        let planned = plan(hosts(&["b", "a", "c"]), Strategy::Window, Amount::Count(2), true);
        assert_eq!(order(&planned), [("a", 0), ("b", 1), ("c", 2)]);
    }

    #[test]
    fn a_host_keeps_its_own_version() {
        let mut two = hosts(&["b", "a"]);
        two[0].version = Some("1.0".into());
        let planned = plan(two, Strategy::Waves, Amount::Count(2), false);
        assert_eq!(planned[1].version.as_deref(), Some("1.0"));
    }
}
