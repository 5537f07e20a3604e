//! Replicated entries: listener settings and backend operator states written through the admin
//! API on any node. Each is versioned by a [`Stamp`]; the highest stamp wins on every node. Every
//! node keeps the winning entries in its own gossip state (so an entry outlives its writer) and
//! in `<data_dir>/cluster-state.json` (so it outlives a full-cluster restart).
//!
//! Gossip keys: `set:l:<listener>` and `set:b:<pool>/<address>`; values are JSON. Values from
//! peers are untrusted: they are parsed strictly, checked against the same ranges as the config
//! file, and dropped (with a warning) when they do not fit.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearsay_config::ListenerSettings;
use hearsay_proxy::{BackendState, PoolError, Proxy};
use serde::{Deserialize, Serialize};

use crate::hlc::{Hlc, Stamp};

pub const LISTENER_PREFIX: &str = "set:l:";
pub const BACKEND_PREFIX: &str = "set:b:";
/// Longest value accepted from a peer.
const MAX_VALUE_LEN: usize = 4096;
const STATE_FILE: &str = "cluster-state.json";

/// The settings of a listener that the admin API can change (the rest stays per node, from the
/// config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerValue {
    pub keepalive_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    /// 0 = unlimited.
    pub max_requests_per_connection: u64,
    /// 0 = unlimited.
    pub max_connection_age_ms: u64,
    /// 0 = unlimited.
    pub max_connections_per_client: u32,
}

impl ListenerValue {
    pub fn of(settings: &ListenerSettings) -> ListenerValue {
        let millis = |duration: Duration| duration.as_millis().min(u128::from(u64::MAX)) as u64;
        ListenerValue {
            keepalive_timeout_ms: millis(settings.keepalive_timeout),
            header_timeout_ms: millis(settings.header_timeout),
            body_timeout_ms: millis(settings.body_timeout),
            max_requests_per_connection: settings.max_requests_per_connection.unwrap_or(0),
            max_connection_age_ms: settings.max_connection_age.map_or(0, millis),
            max_connections_per_client: settings.max_connections_per_client.unwrap_or(0),
        }
    }

    /// `base` with these values, checked against the config file's ranges.
    pub fn applied_to(&self, base: &ListenerSettings) -> Result<ListenerSettings, String> {
        let settings = ListenerSettings {
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_requests_per_connection: (self.max_requests_per_connection != 0)
                .then_some(self.max_requests_per_connection),
            max_connection_age: (self.max_connection_age_ms != 0)
                .then(|| Duration::from_millis(self.max_connection_age_ms)),
            max_connections_per_client: (self.max_connections_per_client != 0)
                .then_some(self.max_connections_per_client),
            ..base.clone()
        };
        let problems = hearsay_config::settings_problems(&settings);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendStateValue {
    Enabled,
    Draining,
    Disabled,
    /// Removed from the pool (`RemoveBackend`).
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendValue {
    pub state: BackendStateValue,
    /// Weight for a backend this entry adds to the pool.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Value {
    Listener(ListenerValue),
    Backend(BackendValue),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub stamp: Stamp,
    pub value: Value,
}

impl Entry {
    /// Parses a gossip value for `key`, refusing anything that does not fit the key.
    pub fn parse(key: &str, text: &str, now_ms: u64) -> Result<Entry, String> {
        if text.len() > MAX_VALUE_LEN {
            return Err(format!("value of {} bytes is too long", text.len()));
        }
        let entry: Entry = serde_json::from_str(text).map_err(|error| error.to_string())?;
        if !entry.stamp.is_plausible(now_ms) {
            return Err(format!("implausible version {:?}", entry.stamp));
        }
        match (&entry.value, parse_key(key)) {
            (Value::Listener(_), Some(Target::Listener(_)))
            | (Value::Backend(_), Some(Target::Backend { .. })) => Ok(entry),
            _ => Err("value does not match its key".to_owned()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("entries serialize")
    }
}

/// What a replicated key is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Listener(&'a str),
    Backend { pool: &'a str, address: &'a str },
}

pub fn listener_key(name: &str) -> String {
    format!("{LISTENER_PREFIX}{name}")
}

pub fn backend_key(pool: &str, address: &str) -> String {
    format!("{BACKEND_PREFIX}{pool}/{address}")
}

pub fn parse_key(key: &str) -> Option<Target<'_>> {
    if let Some(name) = key.strip_prefix(LISTENER_PREFIX) {
        return (!name.is_empty()).then_some(Target::Listener(name));
    }
    let (pool, address) = key.strip_prefix(BACKEND_PREFIX)?.split_once('/')?;
    (!pool.is_empty() && !address.is_empty()).then_some(Target::Backend { pool, address })
}

/// Why an entry could not be applied on this node.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("this node has no listener {0}")]
    NoListener(String),
    #[error("this node has no pool {0}")]
    NoPool(String),
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("malformed key {0}")]
    BadKey(String),
}

/// Applies an entry to the node's data plane (including open connections). Returns whether
/// anything changed.
pub fn apply(proxy: &Proxy, key: &str, entry: &Entry) -> Result<bool, ApplyError> {
    match (parse_key(key), &entry.value) {
        (Some(Target::Listener(name)), Value::Listener(value)) => {
            let listener = proxy
                .listener(name)
                .ok_or_else(|| ApplyError::NoListener(name.to_owned()))?;
            let settings = value
                .applied_to(&listener.settings())
                .map_err(ApplyError::Invalid)?;
            Ok(listener
                .apply_replicated(settings, entry.stamp.version())
                .is_some())
        }
        (Some(Target::Backend { pool, address }), Value::Backend(value)) => {
            let pool_name = pool;
            let pool = proxy
                .pools()
                .iter()
                .find(|candidate| candidate.name == pool_name)
                .ok_or_else(|| ApplyError::NoPool(pool_name.to_owned()))?;
            let state = match value.state {
                BackendStateValue::Removed => {
                    return match pool.remove_backend(address) {
                        Ok(_) => Ok(true),
                        Err(PoolError::NoSuchBackend { .. }) => Ok(false),
                        Err(error) => Err(error.into()),
                    };
                }
                BackendStateValue::Enabled => BackendState::Enabled,
                BackendStateValue::Draining => BackendState::Draining,
                BackendStateValue::Disabled => BackendState::Disabled,
            };
            let mut changed = false;
            if pool.backend(address).is_none() {
                pool.add_backend(address, value.weight.clamp(1, 1000))?;
                changed = true;
            }
            let (_, old) = pool.set_backend_state(address, state)?;
            Ok(changed || old != state)
        }
        _ => Err(ApplyError::BadKey(key.to_owned())),
    }
}

/// The winning entries this node knows, its clock, and where they are persisted.
#[derive(Debug)]
pub struct Store {
    pub entries: BTreeMap<String, Entry>,
    pub clock: Hlc,
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    entries: BTreeMap<String, Entry>,
}

impl Store {
    /// Loads `<data_dir>/cluster-state.json` (an absent file is an empty store).
    pub fn load(data_dir: &Path) -> Result<Store, String> {
        let path = data_dir.join(STATE_FILE);
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: StateFile = serde_json::from_str(&text).map_err(|error| {
                    format!(
                        "{} is not a valid hearsay state file ({error}); move it away to start \
                         from the config file alone",
                        path.display()
                    )
                })?;
                file.entries
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let mut clock = Hlc::default();
        for entry in entries.values() {
            clock.observe(&entry.stamp);
        }
        Ok(Store {
            entries,
            clock,
            path,
        })
    }

    /// Writes every entry atomically: a temporary file, fsync, rename, fsync of the directory.
    pub fn persist(&self) -> std::io::Result<()> {
        let directory = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory)?;
        let temporary = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&StateFile {
            entries: self.entries.clone(),
        })
        .expect("entries serialize");
        {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)?;
        std::fs::File::open(directory)?.sync_all()?;
        Ok(())
    }

    pub fn stamp_of(&self, key: &str) -> Option<&Stamp> {
        self.entries.get(key).map(|entry| &entry.stamp)
    }

    /// Keeps `entry` if it is newer than what the store has. Returns whether it was kept.
    pub fn offer(&mut self, key: &str, entry: &Entry) -> bool {
        self.clock.observe(&entry.stamp);
        match self.entries.get(key) {
            Some(current) if current.stamp >= entry.stamp => false,
            _ => {
                self.entries.insert(key.to_owned(), entry.clone());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(millis: u64, node: &str) -> Stamp {
        Stamp {
            millis,
            counter: 0,
            node: node.into(),
        }
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            parse_key(&listener_key("web")),
            Some(Target::Listener("web"))
        );
        assert_eq!(
            parse_key(&backend_key("app", "[::1]:9000")),
            Some(Target::Backend {
                pool: "app",
                address: "[::1]:9000"
            })
        );
        assert_eq!(parse_key("set:l:"), None);
        assert_eq!(parse_key("set:b:app"), None);
        assert_eq!(parse_key("c:web/1.2.3.4"), None);
    }

    #[test]
    fn peer_values_are_parsed_strictly() {
        let entry = Entry {
            stamp: stamp(1000, "n1"),
            value: Value::Listener(ListenerValue::of(&ListenerSettings::default())),
        };
        let text = entry.to_json();
        assert_eq!(Entry::parse("set:l:web", &text, 1000), Ok(entry.clone()));
        assert!(Entry::parse("set:b:app/1.2.3.4:80", &text, 1000)
            .unwrap_err()
            .contains("does not match"));
        assert!(Entry::parse("set:l:web", "{", 1000).is_err());
        assert!(Entry::parse(
            "set:l:web",
            &text.replace("\"stamp\"", "\"x\":1,\"stamp\""),
            1000
        )
        .is_err());
        assert!(Entry::parse("set:l:web", &" ".repeat(5000), 1000)
            .unwrap_err()
            .contains("too long"));
        let future = Entry {
            stamp: stamp(u64::MAX / 2, "n1"),
            ..entry
        };
        assert!(Entry::parse("set:l:web", &future.to_json(), 1000)
            .unwrap_err()
            .contains("implausible"));
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut value = ListenerValue::of(&ListenerSettings::default());
        value.keepalive_timeout_ms = 5_000_000;
        assert!(value
            .applied_to(&ListenerSettings::default())
            .unwrap_err()
            .contains("keepalive_timeout"));
        value.keepalive_timeout_ms = 300;
        let settings = value.applied_to(&ListenerSettings::default()).unwrap();
        assert_eq!(settings.keepalive_timeout, Duration::from_millis(300));
    }

    #[test]
    fn the_highest_stamp_wins_and_survives_a_reload() {
        let dir = std::env::temp_dir().join(format!("hearsay-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::load(&dir).unwrap();
        let value = Value::Backend(BackendValue {
            state: BackendStateValue::Draining,
            weight: 1,
        });
        let newer = Entry {
            stamp: stamp(2000, "n1"),
            value: value.clone(),
        };
        let older = Entry {
            stamp: stamp(1000, "n9"),
            value: Value::Backend(BackendValue {
                state: BackendStateValue::Removed,
                weight: 1,
            }),
        };
        assert!(store.offer("set:b:app/a:1", &newer));
        assert!(!store.offer("set:b:app/a:1", &older));
        assert!(!store.offer("set:b:app/a:1", &newer));
        store.persist().unwrap();
        let reloaded = Store::load(&dir).unwrap();
        assert_eq!(reloaded.entries, store.entries);
        let mut clock = reloaded.clock;
        assert!(clock.stamp(0, "n2") > newer.stamp);
        std::fs::write(dir.join(STATE_FILE), "not json").unwrap();
        assert!(Store::load(&dir)
            .unwrap_err()
            .contains("not a valid hearsay state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_values_are_refused_without_panicking() {
        let valid = Entry {
            stamp: stamp(1000, "n1"),
            value: Value::Listener(ListenerValue::of(&ListenerSettings::default())),
        }
        .to_json();
        let mut next = crate::test_rng(0x2545_F491_4F6C_DD1D);
        for round in 0..20_000 {
            let mut bytes = valid.clone().into_bytes();
            for _ in 0..=(next() % 3) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            if round % 3 == 0 {
                bytes.truncate((next() as usize) % bytes.len());
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(entry) = Entry::parse("set:l:web", &text, 1000) {
                // Whatever parses must still be checked before use, without panicking.
                if let Value::Listener(value) = &entry.value {
                    let _ = value.applied_to(&ListenerSettings::default());
                }
            }
        }
        for text in [
            "",
            "null",
            "[]",
            "{\"stamp\":1}",
            "{\"stamp\":{\"millis\":-1}}",
        ] {
            assert!(Entry::parse("set:l:web", text, 1000).is_err(), "{text}");
        }
    }
}
