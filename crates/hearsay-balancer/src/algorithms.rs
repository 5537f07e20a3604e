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

/// What the balancer knows of one eligible backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Stable identity (e.g. [`stable_hash`] of the address): state follows the backend, not
    /// its position in the list.
    pub id: u64,
    pub weight: u32,
    pub in_flight: u64,
}

/// Picks backends by one algorithm, keeping what state the algorithm needs.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    next: AtomicUsize,
    /// Smooth weighted round robin: current weight per backend id.
    current_weights: Mutex<HashMap<u64, i64>>,
    /// Consistent hash: the ring for the candidate set it was built for.
    ring: Mutex<Option<Ring>>,
}

#[derive(Debug)]
struct Ring {
    /// The candidate ids (and weights) the ring was built from.
    members: Vec<(u64, u32)>,
    /// Sorted (point, candidate id).
    points: Vec<(u64, u64)>,
}

impl Balancer {
    pub fn new(algorithm: Algorithm) -> Balancer {
        Balancer {
            algorithm,
            next: AtomicUsize::new(0),
            current_weights: Mutex::new(HashMap::new()),
            ring: Mutex::new(None),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The index in `candidates` of the backend to use. `key` is the client key's hash (used by
    /// consistent hashing); `random` yields random numbers (used by p2c).
    pub fn pick(
        &self,
        candidates: &[Candidate],
        key: u64,
        random: &mut dyn FnMut() -> u64,
    ) -> Option<usize> {
        match candidates.len() {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        Some(match self.algorithm {
            Algorithm::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % candidates.len(),
            Algorithm::WeightedRoundRobin => self.smooth_weighted(candidates),
            Algorithm::LeastConnections => self.least_connections(candidates),
            Algorithm::P2c => p2c(candidates, random),
            Algorithm::ConsistentHash => self.consistent_hash(candidates, key),
        })
    }

    /// NGINX's smooth weighted round robin: every candidate gains its weight, the highest wins and
    /// pays back the total.
    fn smooth_weighted(&self, candidates: &[Candidate]) -> usize {
        let mut current = self
            .current_weights
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if current.len() > candidates.len() * 4 + 16 {
            // Forget backends long gone, so the map stays bounded.
            current.retain(|id, _| candidates.iter().any(|candidate| candidate.id == *id));
        }
        let total: i64 = candidates
            .iter()
            .map(|candidate| i64::from(candidate.weight))
            .sum();
        let mut best = 0;
        let mut best_weight = i64::MIN;
        for (index, candidate) in candidates.iter().enumerate() {
            let weight = current.entry(candidate.id).or_insert(0);
            *weight += i64::from(candidate.weight);
            if *weight > best_weight {
                best_weight = *weight;
                best = index;
            }
        }
        if let Some(weight) = current.get_mut(&candidates[best].id) {
            *weight -= total;
        }
        best
    }

    /// Lowest in_flight / weight; ties go round robin so equal backends share the load.
    fn least_connections(&self, candidates: &[Candidate]) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best = start % candidates.len();
        for offset in 1..candidates.len() {
            let index = (start + offset) % candidates.len();
            let (a, b) = (&candidates[index], &candidates[best]);
            // a.in_flight / a.weight < b.in_flight / b.weight, without division.
            if u128::from(a.in_flight) * u128::from(b.weight.max(1))
                < u128::from(b.in_flight) * u128::from(a.weight.max(1))
            {
                best = index;
            }
        }
        best
    }

    fn consistent_hash(&self, candidates: &[Candidate], key: u64) -> usize {
        let members: Vec<(u64, u32)> = candidates.iter().map(|c| (c.id, c.weight)).collect();
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if ring.as_ref().is_none_or(|ring| ring.members != members) {
            *ring = Some(Ring::build(members));
        }
        let ring = ring.as_ref().expect("built above");
        let point = mix(key);
        let slot = ring.points.partition_point(|(p, _)| *p < point);
        let (_, id) = ring.points[slot % ring.points.len()];
        candidates
            .iter()
            .position(|candidate| candidate.id == id)
            .unwrap_or(0)
    }
}

impl Ring {
    fn build(members: Vec<(u64, u32)>) -> Ring {
        let mut points: Vec<(u64, u64)> = members
            .iter()
            .flat_map(|(id, weight)| {
                (0..u64::from((*weight).max(1)) * VIRTUAL_NODES_PER_WEIGHT).map(move |replica| {
                    let mut bytes = [0u8; 16];
                    bytes[..8].copy_from_slice(&id.to_le_bytes());
                    bytes[8..].copy_from_slice(&replica.to_le_bytes());
                    (stable_hash(&bytes), *id)
                })
            })
            .collect();
        points.sort_unstable();
        Ring { members, points }
    }
}

fn p2c(candidates: &[Candidate], random: &mut dyn FnMut() -> u64) -> usize {
    let len = candidates.len() as u64;
    let first = (random() % len) as usize;
    // A second, different candidate.
    let second = ((first as u64 + 1 + random() % (len - 1)) % len) as usize;
    let (a, b) = (&candidates[first], &candidates[second]);
    if u128::from(b.in_flight) * u128::from(a.weight.max(1))
        < u128::from(a.in_flight) * u128::from(b.weight.max(1))
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

    fn distribution(balancer: &Balancer, candidates: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; candidates.len()];
        let mut random = rng(7);
        for request in 0..picks {
            let key = mix(request as u64);
            counts[balancer.pick(candidates, key, &mut random).unwrap()] += 1;
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
            assert_eq!(balancer.pick(&[], 1, &mut random), None, "{algorithm:?}");
            assert_eq!(
                balancer.pick(&candidates(&[3]), 1, &mut random),
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
            .map(|_| balancer.pick(&candidates, 0, &mut random).unwrap())
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
            assert_eq!(balancer.pick(&backends, 0, &mut random), Some(1));
        }
        backends[1].in_flight = 2; // 2 per weight, now the weight-2 backend wins
        assert_eq!(balancer.pick(&backends, 0, &mut random), Some(2));
    }

    #[test]
    fn p2c_never_picks_the_busier_of_its_two_choices() {
        let balancer = Balancer::new(Algorithm::P2c);
        let mut backends = candidates(&[1, 1]);
        backends[0].in_flight = 10;
        let mut random = rng(3);
        for _ in 0..50 {
            assert_eq!(balancer.pick(&backends, 0, &mut random), Some(1));
        }
    }

    #[test]
    fn consistent_hash_keeps_clients_and_moves_only_those_of_a_leaving_backend() {
        let balancer = Balancer::new(Algorithm::ConsistentHash);
        let all = candidates(&[1, 1, 1, 1, 1]);
        let mut random = rng(1);
        let keys: Vec<u64> = (0..5000u64)
            .map(|client| stable_hash(&client.to_le_bytes()))
            .collect();
        let before: Vec<u64> = keys
            .iter()
            .map(|key| all[balancer.pick(&all, *key, &mut random).unwrap()].id)
            .collect();
        // Sticky: same key, same backend.
        for (key, id) in keys.iter().zip(&before).take(100) {
            assert_eq!(all[balancer.pick(&all, *key, &mut random).unwrap()].id, *id);
        }
        let leaving = all[2].id;
        let remaining: Vec<Candidate> = all.iter().copied().filter(|c| c.id != leaving).collect();
        let mut moved_others = 0;
        for (key, id) in keys.iter().zip(&before) {
            let now = remaining[balancer.pick(&remaining, *key, &mut random).unwrap()].id;
            if *id != leaving && now != *id {
                moved_others += 1;
            }
        }
        assert_eq!(moved_others, 0, "only the leaving backend's clients move");
    }
}
