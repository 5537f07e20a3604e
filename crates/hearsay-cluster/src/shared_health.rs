//! Shared health: which nodes probe a backend, and the verdict every node derives from theirs.
//!
//! Probers: each backend is probed by the `k` live nodes with the highest rendezvous score
//! `hash(node id, pool/backend)`, so probe load on a backend does not grow with the cluster, and
//! a node joining or leaving moves only the backends it gains or loses.
//!
//! Verdict: a backend is unhealthy when more than half of its assigned probers that have a
//! verdict say so (a tie counts as healthy). When none of the assigned probers has a verdict yet
//! (they just took over from a prober that died), the verdicts of any live node that still has
//! one are used the same way; with no verdict at all the backend is healthy. Every node computes
//! this from the same gossiped verdicts, so all nodes agree once gossip has converged.
//!
//! Early end of passive ejections: a node's passive ejection of a backend (its own, and every
//! peer's it honours) ends before its time when the pool unejects on a healthy check, the
//! cluster's verdict is healthy, and a prober passed a check it *began* after the ejection began
//! (unix ms on both sides, so node clocks must agree, as NTP keeps them, within a check interval
//! or so). Each ejecting node lifts its own and stops publishing it; the others stop honouring it
//! as soon as they see the same passing check, so no node waits for the ejecting node's
//! withdrawal.

use hearsay_balancer::stable_hash;

/// The `k` node ids (of `nodes`) that probe `backend`, highest score first.
pub fn probers<'a>(nodes: &[&'a str], backend: &str, k: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &'a str)> = nodes
        .iter()
        .map(|node| {
            let mut key = Vec::with_capacity(node.len() + backend.len() + 1);
            key.extend_from_slice(node.as_bytes());
            key.push(0);
            key.extend_from_slice(backend.as_bytes());
            (stable_hash(&key), *node)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(k).map(|(_, node)| node).collect()
}

/// What the cluster says of a backend, from `(node id, healthy)` verdicts of live nodes.
pub fn verdict(probers: &[&str], verdicts: &[(&str, bool)]) -> Option<bool> {
    let assigned: Vec<bool> = verdicts
        .iter()
        .filter(|(node, _)| probers.contains(node))
        .map(|(_, healthy)| *healthy)
        .collect();
    let votes = if assigned.is_empty() {
        verdicts.iter().map(|(_, healthy)| *healthy).collect()
    } else {
        assigned
    };
    if votes.is_empty() {
        return None;
    }
    let unhealthy = votes.iter().filter(|healthy| !**healthy).count();
    Some(unhealthy * 2 <= votes.len())
}

/// Whether a passive ejection that began at `since` (unix ms; `None`: unknown) is over early:
/// the pool unejects on a healthy check, the cluster's verdict is healthy, and the latest
/// passing check (`passed`, its start in unix ms) began after the ejection.
pub fn ejection_lifted(
    uneject_on_healthy_check: bool,
    healthy: bool,
    since: Option<u64>,
    passed: Option<u64>,
) -> bool {
    uneject_on_healthy_check
        && healthy
        && matches!((since, passed), (Some(since), Some(passed)) if since < passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_begun_after_an_ejection_lifts_it_when_the_verdict_is_healthy() {
        // (uneject, healthy verdict, ejection since, latest pass, lifted)
        let cases: &[(bool, bool, Option<u64>, Option<u64>, bool)] = &[
            (true, true, Some(1_000), Some(1_001), true),
            (true, true, Some(1_000), Some(1_000), false),
            (true, true, Some(1_000), Some(999), false),
            (true, true, Some(1_000), None, false),
            (true, true, None, Some(5_000), false),
            (true, false, Some(1_000), Some(2_000), false),
            (false, true, Some(1_000), Some(2_000), false),
        ];
        for (uneject, healthy, since, passed, lifted) in cases {
            assert_eq!(
                ejection_lifted(*uneject, *healthy, *since, *passed),
                *lifted,
                "{uneject} {healthy} {since:?} {passed:?}"
            );
        }
    }

    #[test]
    fn probers_are_stable_and_bounded() {
        let nodes = ["n1", "n2", "n3", "n4", "n5"];
        let chosen = probers(&nodes, "app/10.0.0.1:80", 2);
        assert_eq!(chosen.len(), 2);
        assert_eq!(
            chosen,
            probers(&["n5", "n4", "n3", "n2", "n1"], "app/10.0.0.1:80", 2)
        );
        assert_eq!(probers(&nodes, "app/x:1", 9).len(), 5);
        // A node that is not a prober leaving changes nothing.
        let outsider = nodes.iter().find(|n| !chosen.contains(n)).unwrap();
        let remaining: Vec<&str> = nodes.iter().copied().filter(|n| n != outsider).collect();
        assert_eq!(probers(&remaining, "app/10.0.0.1:80", 2), chosen);
        // Load spreads: over many backends every node probes some.
        let mut counts = std::collections::HashMap::new();
        for i in 0..100 {
            for node in probers(&nodes, &format!("app/10.0.0.{i}:80"), 2) {
                *counts.entry(node).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.len(), 5);
        assert!(counts.values().all(|count| *count > 20), "{counts:?}");
    }

    #[test]
    fn the_majority_of_assigned_probers_decides() {
        let probers = ["a", "b", "c"];
        assert_eq!(
            verdict(&probers, &[("a", false), ("b", false), ("c", true)]),
            Some(false)
        );
        assert_eq!(
            verdict(&probers, &[("a", false), ("b", true), ("c", true)]),
            Some(true)
        );
        assert_eq!(
            verdict(&probers, &[("a", false), ("b", true)]),
            Some(true),
            "tie is healthy"
        );
        assert_eq!(verdict(&probers, &[("a", false)]), Some(false));
        // A non-prober's stale verdict does not outvote the probers...
        assert_eq!(verdict(&probers, &[("a", true), ("z", false)]), Some(true));
        // ...but is used when no prober has one yet.
        assert_eq!(verdict(&probers, &[("z", false)]), Some(false));
        assert_eq!(verdict(&probers, &[]), None);
    }
}
