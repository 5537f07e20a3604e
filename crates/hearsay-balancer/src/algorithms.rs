//! The balancing algorithms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::{mix, stable_hash};

/// Virtual nodes per unit of weight on the consistent-hash ring.
const VIRTUAL_NODES_PER_WEIGHT: u64 = 100;

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    /// Smooth weighted round robin (as NGINX): weights respected, picks interleaved.
    WeightedRoundRobin,
    /// Fewest in-flight requests per unit of weight.
    LeastConnections,
    /// Power of two choices: two random candidates, the one with fewer in-flight requests.
    P2c,
    /// The client key hashed onto a ring of virtual nodes: a client sticks to a backend, and only
    /// the clients of a leaving backend move.
    ConsistentHash,
}

impl Algorithm {
    /// Every algorithm with the name the config file uses for it.
    pub const ALL: [(&'static str, Algorithm); 5] = [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("p2c", Algorithm::P2c),
        ("consistent_hash", Algorithm::ConsistentHash),
    ];

    pub fn as_str(self) -> &'static str {
        Algorithm::ALL
            .iter()
            .find(|(_, algorithm)| *algorithm == self)
            .map_or("round_robin", |(name, _)| name)
    }
}

/// What the balancer knows of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Stable identity (e.g. [`stable_hash`] of the address): state follows the backend, not
    /// its position in the list.
    pub id: u64,
    pub weight: u32,
    pub in_flight: u64,
}

/// The selection structures of one backend *set* (ids and weights, in order): built when the
/// set changes, never per pick. Which members may be picked right now (health, operator state,
/// "already tried") is a filter applied while walking them ([`Balancer::pick`]), as Pingora's
/// `Backends::select_with` does.
#[derive(Debug)]
pub struct Selection {
    /// (id, weight) per member, in the set's order.
    members: Vec<(u64, u32)>,
    /// Consistent hash only: sorted (point, member index).
    ring: Vec<(u64, usize)>,
}

impl Selection {
    pub fn new(algorithm: Algorithm, members: impl IntoIterator<Item = (u64, u32)>) -> Selection {
        let members: Vec<(u64, u32)> = members.into_iter().collect();
        let ring = if algorithm == Algorithm::ConsistentHash {
            ring(&members)
        } else {
            Vec::new()
        };
        Selection { members, ring }
    }

    /// How many members the set has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Picks backends by one algorithm, keeping what state the algorithm needs across picks (and
/// across changes of the set).
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    next: AtomicUsize,
    /// Smooth weighted round robin: current weight per backend id.
    current_weights: Mutex<HashMap<u64, i64>>,
}

/// The members a pick may choose, walked in the set's order.
struct Eligible<'a> {
    eligible: &'a [bool],
    count: usize,
}

impl Eligible<'_> {
    /// Index (in the set) of the `nth` eligible member.
    fn nth(&self, nth: usize) -> usize {
        if self.count == self.eligible.len() {
            // Every member may be picked (the usual case): no walk.
            return if nth < self.count { nth } else { 0 };
        }
        self.indices().nth(nth).unwrap_or(0)
    }

    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.eligible
            .iter()
            .enumerate()
            .filter(|(_, eligible)| **eligible)
            .map(|(index, _)| index)
    }
}

impl Balancer {
    pub fn new(algorithm: Algorithm) -> Balancer {
        Balancer {
            algorithm,
            next: AtomicUsize::new(0),
            current_weights: Mutex::new(HashMap::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The index in `selection` of the member to use, among those `eligible` says may be picked
    /// (one flag per member; missing flags count as not eligible); `None` when none may. `key`
    /// is the client key's hash (consistent hashing), `in_flight` a member's load (least
    /// connections, p2c), `random` yields random numbers (p2c). Picks as if the selection held
    /// only the eligible members.
    pub fn pick(
        &self,
        selection: &Selection,
        eligible: &[bool],
        key: u64,
        in_flight: &dyn Fn(usize) -> u64,
        random: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        let eligible = &eligible[..eligible.len().min(selection.len())];
        let eligible = Eligible {
            eligible,
            count: eligible.iter().filter(|eligible| **eligible).count(),
        };
        match eligible.count {
            0 => return None,
            1 => return Some(eligible.nth(0)),
            _ => {}
        }
        Some(match self.algorithm {
            Algorithm::RoundRobin => {
                eligible.nth(self.next.fetch_add(1, Ordering::Relaxed) % eligible.count)
            }
            Algorithm::WeightedRoundRobin => self.smooth_weighted(selection, &eligible),
            Algorithm::LeastConnections => self.least_connections(selection, &eligible, in_flight),
            Algorithm::P2c => p2c(selection, &eligible, in_flight, random),
            Algorithm::ConsistentHash => consistent_hash(selection, eligible.eligible, key),
        })
    }

    /// NGINX's smooth weighted round robin: every candidate gains its weight, the highest wins and
    /// pays back the total.
    fn smooth_weighted(&self, selection: &Selection, eligible: &Eligible<'_>) -> usize {
        let mut current = self
            .current_weights
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if current.len() > eligible.count * 4 + 16 {
            // Forget backends long gone, so the map stays bounded.
            current.retain(|id, _| {
                eligible
                    .indices()
                    .any(|index| selection.members[index].0 == *id)
            });
        }
        let total: i64 = eligible
            .indices()
            .map(|index| i64::from(selection.members[index].1))
            .sum();
        let mut best = 0;
        let mut best_weight = i64::MIN;
        for index in eligible.indices() {
            let (id, weight) = selection.members[index];
            let current = current.entry(id).or_insert(0);
            *current += i64::from(weight);
            if *current > best_weight {
                best_weight = *current;
                best = index;
            }
        }
        if let Some(weight) = current.get_mut(&selection.members[best].0) {
            *weight -= total;
        }
        best
    }

    /// Lowest in_flight / weight; ties go round robin so equal backends share the load.
    fn least_connections(
        &self,
        selection: &Selection,
        eligible: &Eligible<'_>,
        in_flight: &dyn Fn(usize) -> u64,
    ) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % eligible.count;
        let load = |index: usize| (in_flight(index), selection.members[index].1);
        // The eligible members in turn, from the start'th.
        let mut order = eligible
            .indices()
            .skip(start)
            .chain(eligible.indices().take(start));
        let mut best = order.next().unwrap_or(0);
        for index in order {
            let ((a_load, a_weight), (b_load, b_weight)) = (load(index), load(best));
            // a.in_flight / a.weight < b.in_flight / b.weight, without division.
            if u128::from(a_load) * u128::from(b_weight.max(1))
                < u128::from(b_load) * u128::from(a_weight.max(1))
            {
                best = index;
            }
        }
        best
    }
}

/// The ring of a consistent-hash set: `VIRTUAL_NODES_PER_WEIGHT` points per unit of weight.
fn ring(members: &[(u64, u32)]) -> Vec<(u64, usize)> {
    let mut points: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .flat_map(|(index, (id, weight))| {
            (0..u64::from((*weight).max(1)) * VIRTUAL_NODES_PER_WEIGHT).map(move |replica| {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&id.to_le_bytes());
                bytes[8..].copy_from_slice(&replica.to_le_bytes());
                (stable_hash(&bytes), index)
            })
        })
        .collect();
    // Ties between points (vanishingly rare) go to the lower id, whatever the set's order.
    points.sort_unstable_by_key(|(point, index)| (*point, members[*index].0));
    points
}

/// The first eligible member clockwise from the key's point: the member a ring of only the
/// eligible members would give, so a member that is skipped moves only its own clients.
fn consistent_hash(selection: &Selection, eligible: &[bool], key: u64) -> usize {
    let ring = &selection.ring;
    let point = mix(key);
    let slot = ring.partition_point(|(p, _)| *p < point);
    (0..ring.len())
        .map(|step| ring[(slot + step) % ring.len()].1)
        .find(|index| eligible.get(*index).copied().unwrap_or(false))
        .unwrap_or(0)
}

fn p2c(
    selection: &Selection,
    eligible: &Eligible<'_>,
    in_flight: &dyn Fn(usize) -> u64,
    random: &mut dyn FnMut() -> u64,
) -> usize {
    let len = eligible.count as u64;
    let first = (random() % len) as usize;
    // A second, different candidate.
    let second = ((first as u64 + 1 + random() % (len - 1)) % len) as usize;
    let (first, second) = (eligible.nth(first), eligible.nth(second));
    let (a_load, a_weight) = (in_flight(first), selection.members[first].1);
    let (b_load, b_weight) = (in_flight(second), selection.members[second].1);
    if u128::from(b_load) * u128::from(a_weight.max(1))
        < u128::from(a_load) * u128::from(b_weight.max(1))
    {
        second
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(index, weight)| Candidate {
                id: stable_hash(format!("10.0.0.{index}:80").as_bytes()),
                weight: *weight,
                in_flight: 0,
            })
            .collect()
    }

    /// A deterministic random source (xorshift).
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed.max(1);
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// One pick among `candidates`, all eligible, as a pool would make it.
    fn pick(
        balancer: &Balancer,
        candidates: &[Candidate],
        key: u64,
        random: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        let selection = Selection::new(
            balancer.algorithm(),
            candidates.iter().map(|c| (c.id, c.weight)),
        );
        let eligible = vec![true; candidates.len()];
        balancer.pick(
            &selection,
            &eligible,
            key,
            &|index| candidates[index].in_flight,
            random,
        )
    }

    fn distribution(balancer: &Balancer, candidates: &[Candidate], picks: usize) -> Vec<usize> {
        let selection = Selection::new(
            balancer.algorithm(),
            candidates.iter().map(|c| (c.id, c.weight)),
        );
        let eligible = vec![true; candidates.len()];
        let in_flight = |index: usize| candidates[index].in_flight;
        let mut counts = vec![0; candidates.len()];
        let mut random = rng(7);
        for request in 0..picks {
            let key = mix(request as u64);
            let index = balancer.pick(&selection, &eligible, key, &in_flight, &mut random);
            counts[index.unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn no_candidate_no_pick_and_one_candidate_always() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2c,
            Algorithm::ConsistentHash,
        ] {
            let balancer = Balancer::new(algorithm);
            let mut random = rng(1);
            assert_eq!(pick(&balancer, &[], 1, &mut random), None, "{algorithm:?}");
            assert_eq!(
                pick(&balancer, &candidates(&[3]), 1, &mut random),
                Some(0),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn distribution_follows_weights() {
        // (algorithm, weights, picks, tolerance as a share of the expected count)
        let cases: &[(Algorithm, &[u32], f64)] = &[
            (Algorithm::RoundRobin, &[1, 1, 1], 0.0),
            (Algorithm::WeightedRoundRobin, &[5, 1, 1], 0.0),
            (Algorithm::WeightedRoundRobin, &[3, 2, 1], 0.0),
            (Algorithm::LeastConnections, &[1, 1, 1, 1], 0.0),
            (Algorithm::P2c, &[1, 1, 1, 1], 0.1),
            (Algorithm::ConsistentHash, &[1, 1, 1], 0.15),
            (Algorithm::ConsistentHash, &[2, 1, 1], 0.15),
        ];
        for (algorithm, weights, tolerance) in cases {
            let balancer = Balancer::new(*algorithm);
            let candidates = candidates(weights);
            let total_weight: u32 = weights.iter().sum();
            let picks = 600 * total_weight as usize;
            let counts = distribution(&balancer, &candidates, picks);
            for (index, weight) in weights.iter().enumerate() {
                let expected = picks as f64 * f64::from(*weight) / f64::from(total_weight);
                let off = (counts[index] as f64 - expected).abs() / expected;
                assert!(
                    off <= *tolerance + 1e-9,
                    "{algorithm:?} {weights:?}: {counts:?}, backend {index} off by {off:.3}"
                );
            }
        }
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let balancer = Balancer::new(Algorithm::WeightedRoundRobin);
        let candidates = candidates(&[5, 1, 1]);
        let mut random = rng(1);
        let picks: Vec<usize> = (0..7)
            .map(|_| pick(&balancer, &candidates, 0, &mut random).unwrap())
            .collect();
        // NGINX's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_per_weight() {
        let balancer = Balancer::new(Algorithm::LeastConnections);
        let mut backends = candidates(&[1, 1, 2]);
        backends[0].in_flight = 3;
        backends[1].in_flight = 1;
        backends[2].in_flight = 3; // 1.5 per weight
        let mut random = rng(1);
        for _ in 0..5 {
            assert_eq!(pick(&balancer, &backends, 0, &mut random), Some(1));
        }
        backends[1].in_flight = 2; // 2 per weight, now the weight-2 backend wins
        assert_eq!(pick(&balancer, &backends, 0, &mut random), Some(2));
    }

    #[test]
    fn p2c_never_picks_the_busier_of_its_two_choices() {
        let balancer = Balancer::new(Algorithm::P2c);
        let mut backends = candidates(&[1, 1]);
        backends[0].in_flight = 10;
        let mut random = rng(3);
        for _ in 0..50 {
            assert_eq!(pick(&balancer, &backends, 0, &mut random), Some(1));
        }
    }

    #[test]
    fn consistent_hash_keeps_clients_and_moves_only_those_of_a_leaving_backend() {
        let balancer = Balancer::new(Algorithm::ConsistentHash);
        let all = candidates(&[1, 1, 1, 1, 1]);
        // The backend id each key goes to, with one selection built for `set`, as a pool builds
        // it per backend set.
        let ids = |set: &[Candidate], keys: &[u64]| -> Vec<u64> {
            let selection = Selection::new(
                Algorithm::ConsistentHash,
                set.iter().map(|c| (c.id, c.weight)),
            );
            let eligible = vec![true; set.len()];
            let mut random = rng(1);
            keys.iter()
                .map(|key| {
                    let index = balancer.pick(&selection, &eligible, *key, &|_| 0, &mut random);
                    set[index.unwrap()].id
                })
                .collect()
        };
        let keys: Vec<u64> = (0..5000u64)
            .map(|client| stable_hash(&client.to_le_bytes()))
            .collect();
        let before = ids(&all, &keys);
        // Sticky: same key, same backend.
        assert_eq!(ids(&all, &keys[..100]), before[..100]);
        let leaving = all[2].id;
        let remaining: Vec<Candidate> = all.iter().copied().filter(|c| c.id != leaving).collect();
        let after = ids(&remaining, &keys);
        let mut moved_others = 0;
        for (id, now) in before.iter().zip(&after) {
            if *id != leaving && now != id {
                moved_others += 1;
            }
        }
        assert_eq!(moved_others, 0, "only the leaving backend's clients move");
    }

    #[test]
    fn a_filtered_member_is_picked_as_if_the_set_did_not_hold_it() {
        // Every algorithm: the same picks from a selection of all five with two filtered out as
        // from a selection built of the other three (same weights, loads and random numbers).
        let weights = [2, 1, 3, 1, 2];
        let loads = [4u64, 0, 2, 9, 1];
        let kept = [0, 2, 4];
        for (_, algorithm) in Algorithm::ALL {
            let all = candidates(&weights);
            let with_filter = Balancer::new(algorithm);
            let rebuilt = Balancer::new(algorithm);
            let whole = Selection::new(algorithm, all.iter().map(|c| (c.id, c.weight)));
            let few = Selection::new(algorithm, kept.iter().map(|i| (all[*i].id, all[*i].weight)));
            let eligible: Vec<bool> = (0..all.len()).map(|i| kept.contains(&i)).collect();
            let (mut random_a, mut random_b) = (rng(5), rng(5));
            for request in 0..200u64 {
                let key = mix(request);
                let a = with_filter
                    .pick(&whole, &eligible, key, &|i| loads[i], &mut random_a)
                    .unwrap();
                let b = rebuilt
                    .pick(&few, &[true; 3], key, &|i| loads[kept[i]], &mut random_b)
                    .unwrap();
                assert_eq!(a, kept[b], "{algorithm:?}, request {request}");
            }
            // Nothing eligible: no pick.
            assert_eq!(
                with_filter.pick(&whole, &[false; 5], 1, &|_| 0, &mut random_a),
                None
            );
        }
    }

    #[test]
    fn consistent_hash_skipping_a_member_moves_only_its_clients() {
        let balancer = Balancer::new(Algorithm::ConsistentHash);
        let all = candidates(&[1, 1, 1, 1, 1]);
        let selection = Selection::new(
            Algorithm::ConsistentHash,
            all.iter().map(|c| (c.id, c.weight)),
        );
        let mut random = rng(1);
        let mut eligible = vec![true; all.len()];
        let keys: Vec<u64> = (0..5000u64)
            .map(|client| stable_hash(&client.to_le_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|key| {
                balancer
                    .pick(&selection, &eligible, *key, &|_| 0, &mut random)
                    .unwrap()
            })
            .collect();
        eligible[2] = false;
        for (key, was) in keys.iter().zip(&before) {
            let now = balancer
                .pick(&selection, &eligible, *key, &|_| 0, &mut random)
                .unwrap();
            if *was != 2 {
                assert_eq!(now, *was, "only the skipped member's clients move");
            } else {
                assert_ne!(now, 2);
            }
        }
    }
}
