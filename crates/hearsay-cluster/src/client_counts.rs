//! Which client counts a node publishes for one listener with a per-client limit (pure: the
//! cluster loop feeds it this node's counts and what the peers publish).
//!
//! The pigeonhole bound: a client holding more than the limit L across N live nodes holds at
//! least t = ⌈(L+1)/N⌉ on some node. So a node *leads* every client whose count here reaches the
//! publish threshold, and every other node, seeing a lead, *echoes* its own count of that client
//! (when it holds any), so the client's whole cluster total is known everywhere within a few
//! rounds. A client no node leads holds fewer than the threshold everywhere, so its total is at
//! most L: the cap holds for every client without publishing it. The publish threshold is half
//! of t (rounded up, at least 1): publication starts while a client still needs about L/2 more
//! connections to pass its cap, which leaves time for the echoes to travel.
//!
//! Leads per node are at most its connections / threshold; echoes at most its connections and at
//! most the peers' leads. A hard cap per listener (`cluster.published_clients`) bounds what one
//! node publishes whatever happens: leads first (busiest first), then echoes.

use std::collections::HashSet;
use std::net::IpAddr;

use hearsay_proxy::{ClientKey, ClientTable};

/// Why a node publishes a client's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Its count here reached the publish threshold.
    Lead,
    /// A live peer leads it: this node's count completes the total.
    Echo,
}

/// What a node publishes for one listener.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Leads (busiest first), then echoes (busiest first).
    pub entries: Vec<(ClientKey, u32, Role)>,
    /// Entries the cap left out (0 unless the cap bit).
    pub left_out: usize,
}

/// This node's open connections per client, as [`select`] reads them.
pub trait LocalCounts {
    /// Every client with at least `threshold` connections here.
    fn at_least(&self, threshold: u32) -> Vec<(ClientKey, u32)>;
    fn count(&self, key: &ClientKey) -> u32;
}

impl LocalCounts for ClientTable {
    fn at_least(&self, threshold: u32) -> Vec<(ClientKey, u32)> {
        ClientTable::at_least(self, threshold)
    }

    fn count(&self, key: &ClientKey) -> u32 {
        ClientTable::count(self, key)
    }
}

impl LocalCounts for std::collections::HashMap<ClientKey, u32> {
    fn at_least(&self, threshold: u32) -> Vec<(ClientKey, u32)> {
        self.iter()
            .filter(|(_, count)| **count >= threshold)
            .map(|(key, count)| (*key, *count))
            .collect()
    }

    fn count(&self, key: &ClientKey) -> u32 {
        self.get(key).copied().unwrap_or(0)
    }
}

/// The least a client must hold on one of `nodes` nodes to hold more than `limit` in all.
pub fn pigeonhole_threshold(limit: u32, nodes: usize) -> u32 {
    let nodes = u64::try_from(nodes.max(1)).unwrap_or(u64::MAX);
    u32::try_from((u64::from(limit) + 1).div_ceil(nodes)).unwrap_or(u32::MAX)
}

/// The count at which a node leads a client: half the pigeonhole threshold, rounded up.
pub fn publish_threshold(limit: u32, nodes: usize) -> u32 {
    pigeonhole_threshold(limit, nodes).div_ceil(2).max(1)
}

/// The counts a node publishes for one listener: every client it holds at least `threshold` of
/// (lead), every client a live peer leads that it holds any of (echo), exempt clients never, at
/// most `cap` entries.
pub fn select(
    local: &impl LocalCounts,
    led_by_peers: &HashSet<ClientKey>,
    threshold: u32,
    cap: usize,
    exempt: impl Fn(IpAddr) -> bool,
) -> Selection {
    let busiest_first = |a: &(ClientKey, u32, Role), b: &(ClientKey, u32, Role)| {
        a.2.cmp(&b.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0))
    };
    let mut entries: Vec<(ClientKey, u32, Role)> = local
        .at_least(threshold.max(1))
        .into_iter()
        .filter(|(key, _)| !exempt(key.address()))
        .map(|(key, count)| (key, count, Role::Lead))
        .collect();
    let leads: HashSet<ClientKey> = entries.iter().map(|(key, _, _)| *key).collect();
    entries.extend(
        led_by_peers
            .iter()
            .filter(|key| !leads.contains(key) && !exempt(key.address()))
            .map(|key| (*key, local.count(key), Role::Echo))
            .filter(|(_, count, _)| *count > 0),
    );
    let left_out = entries.len().saturating_sub(cap);
    if left_out > 0 {
        entries.select_nth_unstable_by(cap, busiest_first);
        entries.truncate(cap);
    }
    entries.sort_by(busiest_first);
    Selection { entries, left_out }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn key(i: u32) -> ClientKey {
        ClientKey::new(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]), 64)
    }

    #[test]
    fn thresholds_follow_the_pigeonhole_bound() {
        // (limit, nodes, pigeonhole, publish)
        let cases = [
            (2, 3, 1, 1),
            (30, 3, 11, 6),
            (100, 3, 34, 17),
            (5, 10, 1, 1),
            (100, 1, 101, 51),
            (9, 10, 1, 1),
            (10, 10, 2, 1),
        ];
        for (limit, nodes, pigeonhole, publish) in cases {
            assert_eq!(
                (
                    pigeonhole_threshold(limit, nodes),
                    publish_threshold(limit, nodes)
                ),
                (pigeonhole, publish),
                "limit {limit}, {nodes} nodes"
            );
            // Below the pigeonhole threshold everywhere, the total is within the limit.
            assert!(u64::from(pigeonhole - 1) * nodes as u64 <= u64::from(limit));
        }
        assert_eq!(pigeonhole_threshold(u32::MAX, 1), u32::MAX, "saturates");
        assert_eq!(pigeonhole_threshold(7, 0), 8, "no nodes counts as one");
    }

    /// Ten nodes, each holding one connection of each of 1,000 clients (a thin spread), limit 5:
    /// every client is over its cap (10 > 5), and no node holds more than one of any (a top-256
    /// per node published a quarter of them). The pigeonhole threshold is 1, so after one round
    /// of select-then-gossip every node knows every client's whole total.
    #[test]
    fn a_thin_spread_over_ten_nodes_is_known_everywhere_after_a_round() {
        const NODES: usize = 10;
        const CLIENTS: u32 = 1_000;
        let limit = 5;
        let tables: Vec<HashMap<ClientKey, u32>> = (0..NODES)
            .map(|_| (0..CLIENTS).map(|i| (key(i), 1)).collect())
            .collect();
        let threshold = publish_threshold(limit, NODES);
        assert_eq!(threshold, 1);
        let mut published: Vec<Selection> = (0..NODES).map(|_| Selection::default()).collect();
        published = (0..NODES)
            .map(|node| {
                let led = led_by_others(&published, node);
                select(&tables[node], &led, threshold, 100_000, |_| false)
            })
            .collect();
        for node in 0..NODES {
            let totals = totals_seen_by(&tables, &published, node);
            assert_eq!(totals.len(), CLIENTS as usize);
            assert!(totals.values().all(|total| *total == NODES as u32));
        }
        // Each node publishes each client once: 1,000 entries, all leads here.
        assert!(published
            .iter()
            .all(|s| s.entries.len() == 1_000 && s.left_out == 0));
    }

    /// Limit 40 over 10 nodes (pigeonhole threshold ⌈41/10⌉ = 5, published from 3): a client
    /// holding 4 on node 0 and 1 on each of the nine others is led by node 0, and the nine echo
    /// their 1 once they see the lead. A client with one connection on one node is published by
    /// nobody.
    #[test]
    fn echoes_follow_a_lead_and_withdraw_with_it() {
        const NODES: usize = 10;
        let limit = 40;
        let threshold = publish_threshold(limit, NODES);
        assert_eq!(threshold, 3);
        let (busy, quiet) = (key(1), key(2));
        let mut tables: Vec<HashMap<ClientKey, u32>> =
            (0..NODES).map(|_| HashMap::from([(busy, 1)])).collect();
        tables[0].insert(busy, 4);
        tables[3].insert(quiet, 1);
        let mut published: Vec<Selection> = (0..NODES).map(|_| Selection::default()).collect();
        let round = |tables: &[HashMap<ClientKey, u32>], published: &mut Vec<Selection>| {
            *published = (0..NODES)
                .map(|node| {
                    let led = led_by_others(published, node);
                    select(&tables[node], &led, threshold, 100_000, |_| false)
                })
                .collect();
        };
        round(&tables, &mut published);
        assert_eq!(published[0].entries, [(busy, 4, Role::Lead)]);
        assert!(published[1..].iter().all(|s| s.entries.is_empty()));
        round(&tables, &mut published);
        assert!(published[1..]
            .iter()
            .all(|s| s.entries == [(busy, 1, Role::Echo)]));
        for node in 0..NODES {
            let totals = totals_seen_by(&tables, &published, node);
            assert_eq!(totals.get(&busy), Some(&13), "node {node}");
            assert_eq!(
                totals.get(&quiet).copied().unwrap_or(0),
                u32::from(node == 3)
            );
        }
        // The lead falls under the threshold: it withdraws, and the echoes follow a round later.
        tables[0].insert(busy, 2);
        round(&tables, &mut published);
        assert!(published[0].entries.is_empty());
        round(&tables, &mut published);
        assert!(published.iter().all(|s| s.entries.is_empty()));
    }

    #[test]
    fn the_cap_keeps_leads_first_and_the_busiest_and_says_what_it_left_out() {
        let local: HashMap<ClientKey, u32> = (0..10).map(|i| (key(i), i + 1)).collect();
        let led: HashSet<ClientKey> = [key(0), key(1), key(50)].into();
        // Threshold 5: leads are clients 4..=9 (counts 5..=10); echoes 0 and 1 (50 has none here).
        let all = select(&local, &led, 5, 100, |_| false);
        assert_eq!(all.left_out, 0);
        assert_eq!(all.entries.len(), 8);
        assert_eq!(all.entries[0], (key(9), 10, Role::Lead));
        assert_eq!(all.entries[6], (key(1), 2, Role::Echo));
        assert_eq!(all.entries[7], (key(0), 1, Role::Echo));
        let capped = select(&local, &led, 5, 3, |_| false);
        assert_eq!(capped.left_out, 5);
        assert_eq!(
            capped.entries,
            [
                (key(9), 10, Role::Lead),
                (key(8), 9, Role::Lead),
                (key(7), 8, Role::Lead)
            ]
        );
        // Exempt clients are never published.
        let exempt = select(&local, &led, 5, 100, |ip| ip == key(9).address());
        assert!(exempt.entries.iter().all(|(k, _, _)| *k != key(9)));
        assert_eq!(exempt.entries.len(), 7);
    }

    fn led_by_others(published: &[Selection], node: usize) -> HashSet<ClientKey> {
        published
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != node)
            .flat_map(|(_, s)| s.entries.iter())
            .filter(|(_, _, role)| *role == Role::Lead)
            .map(|(key, _, _)| *key)
            .collect()
    }

    /// What `node` counts for each client: its own count plus what the others publish.
    fn totals_seen_by(
        tables: &[HashMap<ClientKey, u32>],
        published: &[Selection],
        node: usize,
    ) -> HashMap<ClientKey, u32> {
        let mut totals: HashMap<ClientKey, u32> = tables[node].clone();
        for (other, selection) in published.iter().enumerate() {
            if other == node {
                continue;
            }
            for (key, count, _) in &selection.entries {
                *totals.entry(*key).or_insert(0) += count;
            }
        }
        totals
    }
}
