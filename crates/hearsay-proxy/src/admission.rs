//! Per-client admission: which client key a connection counts against, and a table of open
//! connections per key that refuses the one that would go over the limit.
//!
//! The table is sharded so accepts on different threads rarely meet on one lock; each accept and
//! each close takes one shard lock once.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use hearsay_config::canonical_ip;

const SHARDS: usize = 16;

/// What a per-client limit counts by: an IPv4 address, or an IPv6 address masked to a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `address`: IPv4 (including IPv4-mapped IPv6) as is, IPv6 masked to
    /// `ipv6_prefix` bits (one host usually owns a whole /64).
    pub fn new(address: IpAddr, ipv6_prefix: u8) -> ClientKey {
        match canonical_ip(address) {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
        }
    }

    pub fn address(&self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Open connections per client key, for one listener.
#[derive(Debug, Default)]
pub struct ClientTable {
    shards: [Mutex<HashMap<ClientKey, u32>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// One admitted connection's place in a [`ClientTable`]; dropping it gives the place back.
#[derive(Debug)]
pub struct Admission {
    table: Arc<ClientTable>,
    key: ClientKey,
}

impl ClientTable {
    pub fn new() -> Arc<ClientTable> {
        Arc::new(ClientTable::default())
    }

    fn shard(&self, key: &ClientKey) -> &Mutex<HashMap<ClientKey, u32>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Counts one more connection for `key` unless it already holds `limit` (`None` = no limit).
    pub fn try_admit(self: &Arc<Self>, key: ClientKey, limit: Option<u32>) -> Option<Admission> {
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = shard.entry(key).or_insert(0);
        if limit.is_some_and(|limit| *count >= limit) {
            if *count == 0 {
                shard.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(Admission {
            table: Arc::clone(self),
            key,
        })
    }

    /// Open connections of `key`.
    pub fn count(&self, key: &ClientKey) -> u32 {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        shard.get(key).copied().unwrap_or(0)
    }

    /// Every client key with at least `threshold` open connections (in no order).
    pub fn at_least(&self, threshold: u32) -> Vec<(ClientKey, u32)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|poison| poison.into_inner());
                shard
                    .iter()
                    .filter(|(_, count)| **count >= threshold)
                    .map(|(key, count)| (*key, *count))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every client key with its open connections, highest first.
    pub fn top(&self, limit: usize) -> Vec<(ClientKey, u32)> {
        let mut all: Vec<(ClientKey, u32)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|poison| poison.into_inner());
                shard
                    .iter()
                    .map(|(key, count)| (*key, *count))
                    .collect::<Vec<_>>()
            })
            .collect();
        let busiest_first =
            |a: &(ClientKey, u32), b: &(ClientKey, u32)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        // The cluster asks for the top few of possibly many clients every gossip round: select
        // them, then sort only those.
        if limit < all.len() {
            all.select_nth_unstable_by(limit, busiest_first);
            all.truncate(limit);
        }
        all.sort_by(busiest_first);
        all
    }

    fn release(&self, key: &ClientKey) {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = shard.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(key);
            }
        }
    }
}

impl Admission {
    pub fn key(&self) -> ClientKey {
        self.key
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.table.release(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_group_ipv6_by_prefix_and_keep_ipv4_whole() {
        let cases: &[(&str, u8, &str)] = &[
            ("192.0.2.7", 64, "192.0.2.7"),
            ("::ffff:192.0.2.7", 64, "192.0.2.7"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 48, "2001:db8:1::"),
            (
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                128,
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
            ),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 1, "::"),
            ("::1", 64, "::"),
        ];
        for (address, prefix, expected) in cases {
            let key = ClientKey::new(address.parse().unwrap(), *prefix);
            assert_eq!(
                key.address(),
                expected.parse::<IpAddr>().unwrap(),
                "{address}/{prefix}"
            );
        }
    }

    #[test]
    fn the_table_refuses_the_connection_over_the_limit_and_frees_places_on_drop() {
        let table = ClientTable::new();
        let a = ClientKey::new("192.0.2.1".parse().unwrap(), 64);
        let b = ClientKey::new("192.0.2.2".parse().unwrap(), 64);
        let first = table.try_admit(a, Some(2)).unwrap();
        let second = table.try_admit(a, Some(2)).unwrap();
        assert!(
            table.try_admit(a, Some(2)).is_none(),
            "third connection of a is over the limit"
        );
        assert!(
            table.try_admit(b, Some(2)).is_some(),
            "another client is not affected"
        );
        assert_eq!(table.count(&a), 2);
        drop(first);
        assert_eq!(table.count(&a), 1);
        let third = table.try_admit(a, Some(2)).unwrap();
        assert!(table.try_admit(a, None).is_some(), "no limit admits anyway");
        drop((second, third));
        assert_eq!(table.count(&a), 0);
        assert!(
            table.top(10).is_empty(),
            "keys with no connections are forgotten"
        );
    }

    #[test]
    fn a_zero_limit_refuses_without_leaving_an_entry() {
        let table = ClientTable::new();
        let a = ClientKey::new("192.0.2.1".parse().unwrap(), 64);
        assert!(table.try_admit(a, Some(0)).is_none());
        assert!(table.top(10).is_empty());
    }

    #[test]
    fn top_lists_the_busiest_clients_first() {
        let table = ClientTable::new();
        let keys: Vec<ClientKey> = (1..=3)
            .map(|i| ClientKey::new(format!("192.0.2.{i}").parse().unwrap(), 64))
            .collect();
        let mut held = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            for _ in 0..=index {
                held.push(table.try_admit(*key, None).unwrap());
            }
        }
        let top = table.top(2);
        assert_eq!(top, vec![(keys[2], 3), (keys[1], 2)]);
    }
}
