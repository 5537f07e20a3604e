//! Replicated settings: listener settings and backend states written through the admin API, a
//! node's config file or a reset, on any node. The unit of replication is the single setting: every
//! field of an entry carries its own [`Stamp`] (and who wrote it), and a merge keeps, field by
//! field, the higher stamp. So two writes to different settings on the two sides of a partition
//! both survive, and two writes to the same setting resolve to the later one on every node.
//! Every node keeps the merged entries in its own gossip state (so a write outlives its writer)
//! and in `<data_dir>/cluster-state.json` (so it outlives a full-cluster restart), together with
//! the config file's values it last read (the *baseline*: a value that changed in the file since
//! then is a new write, stamped at start-up).
//!
//! Gossip keys: `set:l:<listener>` and `set:b:<pool>/<address>`; values are JSON. Values from
//! peers are untrusted: they are parsed strictly, every field is checked against the same ranges
//! as the config file, and the value is dropped (with a log line) when anything does not fit.
//! Entries of hearsay versions before per-field stamps (one stamp per entry) are still read:
//! every field they carry gets the entry's stamp.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearsay_config::{BackendStateConfig, Config, ListenerSettings};
use hearsay_proxy::{BackendState, PoolError, Proxy};
use serde::{Deserialize, Serialize};

use crate::hlc::{Hlc, Stamp};
use crate::keys::{backend_key, listener_key, parse_key, Target, TraceNote, TELEMETRY_KEY};

/// Longest value accepted from a peer. The longest entry a node writes (six fields with a
/// 128-character node id and an IPv6 peer address each) is about 2 KB.
const MAX_VALUE_LEN: usize = 4096;
/// Longest admin client address kept with a write.
const MAX_PEER_LEN: usize = 64;
const STATE_FILE: &str = "cluster-state.json";
/// The state file's format since per-field stamps (format 1, one stamp per entry, had no marker).
const STATE_FORMAT: u32 = 2;

/// Who wrote a replicated value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A value changed in a node's config file, written when that node started.
    File,
    /// An admin call (`UpdateListener`, `AddBackend`, `RemoveBackend`, `SetBackendState`).
    Admin,
    /// `ResetListener` / `ResetBackends`: the resetting node's config file values.
    Reset,
}

/// Who writes, for the record kept with every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    /// The admin client's address, when the write came through the admin API.
    pub peer: Option<String>,
}

impl Origin {
    pub fn admin(peer: Option<String>) -> Origin {
        Origin {
            source: Source::Admin,
            peer: peer.map(Origin::bounded),
        }
    }

    pub fn reset(peer: Option<String>) -> Origin {
        Origin {
            source: Source::Reset,
            peer: peer.map(Origin::bounded),
        }
    }

    /// Cut to what peers accept, so a write is never refused for its client's address.
    fn bounded(peer: String) -> String {
        peer.chars().take(MAX_PEER_LEN).collect()
    }

    pub fn file() -> Origin {
        Origin {
            source: Source::File,
            peer: None,
        }
    }
}

/// One replicated setting: its value, its version and who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field<T> {
    pub value: T,
    pub stamp: Stamp,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl<T> Field<T> {
    fn new(value: T, stamp: &Stamp, origin: &Origin) -> Field<T> {
        Field {
            value,
            stamp: stamp.clone(),
            source: origin.source,
            peer: origin.peer.clone(),
        }
    }

    fn is_plausible(&self, now_ms: u64) -> Result<(), String> {
        if !self.stamp.is_plausible(now_ms) {
            return Err(format!("implausible version {:?}", self.stamp));
        }
        if self
            .peer
            .as_ref()
            .is_some_and(|peer| peer.len() > MAX_PEER_LEN)
        {
            return Err("peer address too long".to_owned());
        }
        Ok(())
    }
}

/// Keeps `theirs` in `mine` if its stamp is higher. Returns whether `mine` changed.
fn merge_field<T: Clone>(mine: &mut Option<Field<T>>, theirs: Option<&Field<T>>) -> bool {
    match (mine.as_ref(), theirs) {
        (_, None) => false,
        (Some(current), Some(offered)) if current.stamp >= offered.stamp => false,
        (_, Some(offered)) => {
            *mine = Some(offered.clone());
            true
        }
    }
}

/// A listener setting the cluster replicates (the rest of a listener stays per node, from its
/// config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerField {
    KeepaliveTimeout,
    HeaderTimeout,
    BodyTimeout,
    MaxRequestsPerConnection,
    MaxConnectionAge,
    MaxConnectionsPerClient,
}

impl ListenerField {
    pub const ALL: [ListenerField; 6] = [
        ListenerField::KeepaliveTimeout,
        ListenerField::HeaderTimeout,
        ListenerField::BodyTimeout,
        ListenerField::MaxRequestsPerConnection,
        ListenerField::MaxConnectionAge,
        ListenerField::MaxConnectionsPerClient,
    ];

    /// The name in the config file and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            ListenerField::KeepaliveTimeout => "keepalive_timeout",
            ListenerField::HeaderTimeout => "header_timeout",
            ListenerField::BodyTimeout => "body_timeout",
            ListenerField::MaxRequestsPerConnection => "max_requests_per_connection",
            ListenerField::MaxConnectionAge => "max_connection_age",
            ListenerField::MaxConnectionsPerClient => "max_connections_per_client",
        }
    }

    pub fn from_name(name: &str) -> Option<ListenerField> {
        ListenerField::ALL
            .into_iter()
            .find(|field| field.name() == name)
    }

    /// The field's value in `settings` as replicated: durations in milliseconds, 0 = unlimited.
    pub fn get(self, settings: &ListenerSettings) -> u64 {
        let millis = |duration: Duration| duration.as_millis().min(u128::from(u64::MAX)) as u64;
        match self {
            ListenerField::KeepaliveTimeout => millis(settings.keepalive_timeout),
            ListenerField::HeaderTimeout => millis(settings.header_timeout),
            ListenerField::BodyTimeout => millis(settings.body_timeout),
            ListenerField::MaxRequestsPerConnection => {
                settings.max_requests_per_connection.unwrap_or(0)
            }
            ListenerField::MaxConnectionAge => settings.max_connection_age.map_or(0, millis),
            ListenerField::MaxConnectionsPerClient => {
                u64::from(settings.max_connections_per_client.unwrap_or(0))
            }
        }
    }

    /// Sets the field in `settings`, unchecked (see [`ListenerField::check`]).
    pub fn set(self, settings: &mut ListenerSettings, value: u64) {
        match self {
            ListenerField::KeepaliveTimeout => {
                settings.keepalive_timeout = Duration::from_millis(value)
            }
            ListenerField::HeaderTimeout => settings.header_timeout = Duration::from_millis(value),
            ListenerField::BodyTimeout => settings.body_timeout = Duration::from_millis(value),
            ListenerField::MaxRequestsPerConnection => {
                settings.max_requests_per_connection = (value != 0).then_some(value)
            }
            ListenerField::MaxConnectionAge => {
                settings.max_connection_age = (value != 0).then(|| Duration::from_millis(value))
            }
            ListenerField::MaxConnectionsPerClient => {
                settings.max_connections_per_client =
                    (value != 0).then(|| u32::try_from(value).unwrap_or(u32::MAX))
            }
        }
    }

    /// Whether `value` is in the range the config file allows for this field.
    pub fn check(self, value: u64) -> Result<(), String> {
        if self == ListenerField::MaxConnectionsPerClient && value > u64::from(u32::MAX) {
            return Err(format!("{}: {value} is out of range", self.name()));
        }
        let mut settings = ListenerSettings::default();
        self.set(&mut settings, value);
        let problems = hearsay_config::settings_problems(&settings);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "))
        }
    }

    /// A value as an operator reads it (`75s`, `unlimited`, `100`).
    pub fn display(self, value: u64) -> String {
        let duration = || hearsay_config::format_duration(Duration::from_millis(value));
        match self {
            ListenerField::KeepaliveTimeout
            | ListenerField::HeaderTimeout
            | ListenerField::BodyTimeout => duration(),
            _ if value == 0 => "unlimited".to_owned(),
            ListenerField::MaxConnectionAge => duration(),
            _ => value.to_string(),
        }
    }
}

/// A listener's replicated fields; a field absent here has this node's config file value.
pub type ListenerEntry = BTreeMap<ListenerField, Field<u64>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendStateValue {
    Enabled,
    Draining,
    Disabled,
}

impl From<BackendState> for BackendStateValue {
    fn from(state: BackendState) -> BackendStateValue {
        match state {
            BackendState::Enabled => BackendStateValue::Enabled,
            BackendState::Draining => BackendStateValue::Draining,
            BackendState::Disabled => BackendStateValue::Disabled,
        }
    }
}

impl From<BackendStateValue> for BackendState {
    fn from(state: BackendStateValue) -> BackendState {
        match state {
            BackendStateValue::Enabled => BackendState::Enabled,
            BackendStateValue::Draining => BackendState::Draining,
            BackendStateValue::Disabled => BackendState::Disabled,
        }
    }
}

/// A backend's replicated fields: whether it is in its pool (`false` is the tombstone a removal
/// leaves), its operator state and its weight. A field absent here has this node's config file
/// value (a backend the file does not name is not in the pool, enabled, weight 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Field<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Field<BackendStateValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Field<u32>>,
}

/// A backend field's name in the admin API.
pub const BACKEND_FIELDS: [&str; 3] = ["member", "state", "weight"];

/// A share of traces, `0.0..=1.0` (checked where it is made or parsed, so never NaN: it can be
/// compared as its bits).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl Ratio {
    /// The ratio when it is a share, else why not (the admin API's message).
    pub fn checked(value: f64) -> Result<Ratio, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Ratio(value))
        } else {
            Err(format!(
                "sample_ratio: {value} is out of range (0.0 to 1.0: the share of new traces recorded)"
            ))
        }
    }
}

impl PartialEq for Ratio {
    fn eq(&self, other: &Ratio) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Ratio {}

/// The node-wide telemetry settings the cluster replicates. A field absent here has this node's
/// config file value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<Field<Ratio>>,
}

/// A replicated entry: one listener's or one backend's stamped fields, or the telemetry
/// settings'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    Listener(ListenerEntry),
    Backend(BackendEntry),
    Telemetry(TelemetryEntry),
}

impl Entry {
    /// Parses a gossip value for `key`, refusing anything that does not fit the key. A value in
    /// the format of older hearsay versions (one stamp per entry) is converted.
    pub fn parse(key: &str, text: &str, now_ms: u64) -> Result<Entry, String> {
        if text.len() > MAX_VALUE_LEN {
            return Err(format!("value of {} bytes is too long", text.len()));
        }
        let entry = match serde_json::from_str::<Entry>(text) {
            Ok(entry) => entry,
            Err(error) => match serde_json::from_str::<legacy::Entry>(text) {
                Ok(old) => old.into_entry(),
                Err(_) => return Err(error.to_string()),
            },
        };
        entry.check(now_ms)?;
        match (&entry, parse_key(key)) {
            (Entry::Listener(_), Some(Target::Listener(_)))
            | (Entry::Backend(_), Some(Target::Backend { .. }))
            | (Entry::Telemetry(_), Some(Target::Telemetry)) => Ok(entry),
            _ => Err("value does not match its key".to_owned()),
        }
    }

    /// Every field believable and in range, and at least one.
    fn check(&self, now_ms: u64) -> Result<(), String> {
        match self {
            Entry::Listener(fields) => {
                if fields.is_empty() {
                    return Err("no field".to_owned());
                }
                for (field, value) in fields {
                    value.is_plausible(now_ms)?;
                    field.check(value.value)?;
                }
            }
            Entry::Backend(backend) => {
                if backend.member.is_none() && backend.state.is_none() && backend.weight.is_none() {
                    return Err("no field".to_owned());
                }
                if let Some(member) = &backend.member {
                    member.is_plausible(now_ms)?;
                }
                if let Some(state) = &backend.state {
                    state.is_plausible(now_ms)?;
                }
                if let Some(weight) = &backend.weight {
                    weight.is_plausible(now_ms)?;
                    if !(1..=1000).contains(&weight.value) {
                        return Err(format!("weight {} is out of range", weight.value));
                    }
                }
            }
            Entry::Telemetry(telemetry) => {
                let Some(ratio) = &telemetry.sample_ratio else {
                    return Err("no field".to_owned());
                };
                ratio.is_plausible(now_ms)?;
                Ratio::checked(ratio.value.0)?;
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("entries serialize")
    }

    /// Takes, field by field, whichever of the two has the higher stamp. Returns whether this
    /// entry changed. Entries of different kinds do not merge.
    pub fn merge(&mut self, other: &Entry) -> bool {
        match (self, other) {
            (Entry::Listener(mine), Entry::Listener(theirs)) => {
                let mut changed = false;
                for (field, offered) in theirs {
                    let mut current = mine.remove(field);
                    changed |= merge_field(&mut current, Some(offered));
                    if let Some(current) = current {
                        mine.insert(*field, current);
                    }
                }
                changed
            }
            (Entry::Backend(mine), Entry::Backend(theirs)) => {
                // Not short-circuited: every field merges.
                let member = merge_field(&mut mine.member, theirs.member.as_ref());
                let state = merge_field(&mut mine.state, theirs.state.as_ref());
                let weight = merge_field(&mut mine.weight, theirs.weight.as_ref());
                member || state || weight
            }
            (Entry::Telemetry(mine), Entry::Telemetry(theirs)) => {
                merge_field(&mut mine.sample_ratio, theirs.sample_ratio.as_ref())
            }
            _ => false,
        }
    }

    /// Every stamp in the entry.
    pub fn stamps(&self) -> Vec<&Stamp> {
        match self {
            Entry::Listener(fields) => fields.values().map(|field| &field.stamp).collect(),
            Entry::Backend(backend) => [
                backend.member.as_ref().map(|field| &field.stamp),
                backend.state.as_ref().map(|field| &field.stamp),
                backend.weight.as_ref().map(|field| &field.stamp),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Entry::Telemetry(telemetry) => telemetry
                .sample_ratio
                .as_ref()
                .map(|field| &field.stamp)
                .into_iter()
                .collect(),
        }
    }

    /// The fields written with `stamp` (one operation), as `(name, value)` for an operator.
    pub fn fields_stamped(&self, stamp: &Stamp) -> Vec<(&'static str, String)> {
        let at = |field_stamp: &Stamp| field_stamp == stamp;
        match self {
            Entry::Listener(fields) => fields
                .iter()
                .filter(|(_, field)| at(&field.stamp))
                .map(|(name, field)| (name.name(), name.display(field.value)))
                .collect(),
            Entry::Backend(backend) => {
                let (pool, address) = (String::new(), String::new());
                let mut found = Vec::new();
                if let Some(member) = backend.member.as_ref().filter(|f| at(&f.stamp)) {
                    found.push(
                        Write::Member {
                            pool: pool.clone(),
                            address: address.clone(),
                            member: member.value,
                        }
                        .describe(),
                    );
                }
                if let Some(state) = backend.state.as_ref().filter(|f| at(&f.stamp)) {
                    found.push(
                        Write::State {
                            pool: pool.clone(),
                            address: address.clone(),
                            state: state.value,
                        }
                        .describe(),
                    );
                }
                if let Some(weight) = backend.weight.as_ref().filter(|f| at(&f.stamp)) {
                    found.push(
                        Write::Weight {
                            pool,
                            address,
                            weight: weight.value,
                        }
                        .describe(),
                    );
                }
                found
            }
            Entry::Telemetry(telemetry) => telemetry
                .sample_ratio
                .iter()
                .filter(|field| at(&field.stamp))
                .map(|field| Write::SampleRatio(field.value).describe())
                .collect(),
        }
    }

    /// The version the admin API shows and `expected_version` compares with: the sum of the
    /// fields' stamp versions. It grows with every write to any field, and is the same on every
    /// node that has the same writes (a single "newest stamp" would not move when a partition
    /// heals and an older write to another field arrives).
    pub fn version(&self) -> u64 {
        self.stamps()
            .into_iter()
            .fold(0u64, |sum, stamp| sum.saturating_add(stamp.version()))
    }
}

/// One setting to write, before it is stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Listener {
        name: String,
        field: ListenerField,
        value: u64,
    },
    /// Adds a backend to its pool (`true`) or removes it (`false`).
    Member {
        pool: String,
        address: String,
        member: bool,
    },
    State {
        pool: String,
        address: String,
        state: BackendStateValue,
    },
    Weight {
        pool: String,
        address: String,
        weight: u32,
    },
    SampleRatio(Ratio),
}

impl Write {
    pub fn key(&self) -> String {
        match self {
            Write::Listener { name, .. } => listener_key(name),
            Write::Member { pool, address, .. }
            | Write::State { pool, address, .. }
            | Write::Weight { pool, address, .. } => backend_key(pool, address),
            Write::SampleRatio(_) => TELEMETRY_KEY.to_owned(),
        }
    }

    /// The entry holding just this write.
    pub fn to_entry(&self, stamp: &Stamp, origin: &Origin) -> Entry {
        match self {
            Write::Listener { field, value, .. } => Entry::Listener(BTreeMap::from([(
                *field,
                Field::new(*value, stamp, origin),
            )])),
            Write::Member { member, .. } => Entry::Backend(BackendEntry {
                member: Some(Field::new(*member, stamp, origin)),
                ..BackendEntry::default()
            }),
            Write::State { state, .. } => Entry::Backend(BackendEntry {
                state: Some(Field::new(*state, stamp, origin)),
                ..BackendEntry::default()
            }),
            Write::Weight { weight, .. } => Entry::Backend(BackendEntry {
                weight: Some(Field::new(*weight, stamp, origin)),
                ..BackendEntry::default()
            }),
            Write::SampleRatio(ratio) => Entry::Telemetry(TelemetryEntry {
                sample_ratio: Some(Field::new(*ratio, stamp, origin)),
            }),
        }
    }

    /// What the write sets, for the log: the field and its new value.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Write::Listener { field, value, .. } => (field.name(), field.display(*value)),
            Write::Member { member, .. } => (
                "member",
                if *member { "in the pool" } else { "removed" }.to_owned(),
            ),
            Write::State { state, .. } => ("state", BackendState::from(*state).as_str().to_owned()),
            Write::Weight { weight, .. } => ("weight", weight.to_string()),
            Write::SampleRatio(ratio) => ("sample_ratio", ratio.0.to_string()),
        }
    }
}

/// A backend as a node's config file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub state: BackendStateValue,
    pub weight: u32,
}

/// What a node's config file says about the replicated settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileValues {
    /// listener → field → value.
    pub listeners: BTreeMap<String, BTreeMap<ListenerField, u64>>,
    /// pool → backend address → what the file says of it.
    pub pools: BTreeMap<String, BTreeMap<String, FileBackend>>,
    /// `telemetry.sample_ratio` (`None` in a baseline recorded before it was replicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<Ratio>,
}

impl FileValues {
    pub fn of(config: &Config) -> FileValues {
        FileValues {
            listeners: config
                .listeners
                .iter()
                .map(|listener| {
                    (
                        listener.name.clone(),
                        ListenerField::ALL
                            .into_iter()
                            .map(|field| (field, field.get(&listener.settings)))
                            .collect(),
                    )
                })
                .collect(),
            pools: config
                .pools
                .iter()
                .map(|pool| {
                    (
                        pool.name.clone(),
                        pool.backends
                            .iter()
                            .map(|backend| {
                                let state = match backend.state {
                                    BackendStateConfig::Enabled => BackendStateValue::Enabled,
                                    BackendStateConfig::Draining => BackendStateValue::Draining,
                                    BackendStateConfig::Disabled => BackendStateValue::Disabled,
                                };
                                (
                                    backend.address.clone(),
                                    FileBackend {
                                        state,
                                        weight: backend.weight,
                                    },
                                )
                            })
                            .collect(),
                    )
                })
                .collect(),
            sample_ratio: Some(Ratio(config.telemetry.sample_ratio)),
        }
    }

    /// The writes that carry what changed in the file since `baseline` (the file this node read
    /// before) to the cluster: every listener field whose value differs, every backend added
    /// (member, state, weight), removed (a tombstone) or whose state or weight differs. A listener
    /// or pool the file no longer has writes nothing (this node no longer serves it).
    pub fn changes_since(&self, baseline: &FileValues) -> Vec<Write> {
        let mut writes = Vec::new();
        for (name, fields) in &self.listeners {
            let before = baseline.listeners.get(name);
            for (field, value) in fields {
                if before.and_then(|before| before.get(field)) != Some(value) {
                    writes.push(Write::Listener {
                        name: name.clone(),
                        field: *field,
                        value: *value,
                    });
                }
            }
        }
        for (pool, backends) in &self.pools {
            let empty = BTreeMap::new();
            let before = baseline.pools.get(pool).unwrap_or(&empty);
            for (address, backend) in backends {
                let was = before.get(address);
                if was.is_none() {
                    writes.push(Write::Member {
                        pool: pool.clone(),
                        address: address.clone(),
                        member: true,
                    });
                }
                if was.map(|was| was.state) != Some(backend.state) {
                    writes.push(Write::State {
                        pool: pool.clone(),
                        address: address.clone(),
                        state: backend.state,
                    });
                }
                if was.map(|was| was.weight) != Some(backend.weight) {
                    writes.push(Write::Weight {
                        pool: pool.clone(),
                        address: address.clone(),
                        weight: backend.weight,
                    });
                }
            }
            for address in before
                .keys()
                .filter(|address| !backends.contains_key(*address))
            {
                writes.push(Write::Member {
                    pool: pool.clone(),
                    address: address.clone(),
                    member: false,
                });
            }
        }
        // A baseline recorded before the ratio was replicated says nothing of it: as without a
        // baseline, nothing is known to have changed.
        if let (Some(ratio), Some(before)) = (self.sample_ratio, baseline.sample_ratio) {
            if ratio != before {
                writes.push(Write::SampleRatio(ratio));
            }
        }
        writes
    }
}

/// A listener's settings on this node: `base` (its current settings, for what is not replicated)
/// with, per field, the replicated value or else the file's.
pub fn listener_settings(
    base: &ListenerSettings,
    file: Option<&BTreeMap<ListenerField, u64>>,
    entry: Option<&ListenerEntry>,
) -> ListenerSettings {
    let mut settings = base.clone();
    for field in ListenerField::ALL {
        let value = entry
            .and_then(|entry| entry.get(&field))
            .map(|stamped| stamped.value)
            .or_else(|| file.and_then(|file| file.get(&field).copied()));
        if let Some(value) = value {
            field.set(&mut settings, value);
        }
    }
    settings
}

/// A backend on this node: `None` when it is not in its pool, else its state and weight; per
/// field the replicated value, else the file's, else enabled with weight 1.
pub fn backend_target(
    file: Option<&FileBackend>,
    entry: Option<&BackendEntry>,
) -> Option<(BackendStateValue, u32)> {
    let member = entry
        .and_then(|entry| entry.member.as_ref())
        .map_or(file.is_some(), |member| member.value);
    if !member {
        return None;
    }
    let state = entry
        .and_then(|entry| entry.state.as_ref())
        .map(|state| state.value)
        .or(file.map(|file| file.state))
        .unwrap_or(BackendStateValue::Enabled);
    let weight = entry
        .and_then(|entry| entry.weight.as_ref())
        .map(|weight| weight.value)
        .or(file.map(|file| file.weight))
        .unwrap_or(1);
    Some((state, weight))
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

/// Applies an entry (over this node's file values) to the node's data plane, open connections
/// included. Returns whether anything changed.
pub fn apply(
    proxy: &Proxy,
    file: &FileValues,
    key: &str,
    entry: &Entry,
) -> Result<bool, ApplyError> {
    match (parse_key(key), entry) {
        (Some(Target::Listener(name)), Entry::Listener(fields)) => {
            let listener = proxy
                .listener(name)
                .ok_or_else(|| ApplyError::NoListener(name.to_owned()))?;
            let settings =
                listener_settings(&listener.settings(), file.listeners.get(name), Some(fields));
            let problems = hearsay_config::settings_problems(&settings);
            if !problems.is_empty() {
                return Err(ApplyError::Invalid(
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
            Ok(listener
                .apply_replicated(settings, entry.version())
                .is_some())
        }
        (Some(Target::Backend { pool, address }), Entry::Backend(backend)) => {
            let pool_name = pool;
            let pool = proxy
                .pools()
                .iter()
                .find(|candidate| candidate.name == pool_name)
                .ok_or_else(|| ApplyError::NoPool(pool_name.to_owned()))?;
            let in_file = file
                .pools
                .get(pool_name)
                .and_then(|backends| backends.get(address));
            let Some((state, weight)) = backend_target(in_file, Some(backend)) else {
                return match pool.remove_backend(address) {
                    Ok(_) => Ok(true),
                    Err(PoolError::NoSuchBackend { .. }) => Ok(false),
                    Err(error) => Err(error.into()),
                };
            };
            let mut changed = false;
            if pool.backend(address).is_none() {
                pool.add_backend(address, weight)?;
                changed = true;
            }
            let (_, old_weight) = pool.set_backend_weight(address, weight)?;
            let (_, old_state) = pool.set_backend_state(address, state.into())?;
            Ok(changed || old_weight != weight || old_state != state.into())
        }
        (Some(Target::Telemetry), Entry::Telemetry(telemetry)) => {
            let ratio = telemetry_target(file, Some(telemetry));
            let sample_ratio = proxy.sample_ratio();
            let changed = sample_ratio.get().to_bits() != ratio.0.to_bits();
            sample_ratio.set(ratio.0);
            Ok(changed)
        }
        _ => Err(ApplyError::BadKey(key.to_owned())),
    }
}

/// The sample ratio on this node: the replicated value, else the file's, else the default.
pub fn telemetry_target(file: &FileValues, entry: Option<&TelemetryEntry>) -> Ratio {
    entry
        .and_then(|entry| entry.sample_ratio.as_ref())
        .map(|field| field.value)
        .or(file.sample_ratio)
        .unwrap_or(Ratio(hearsay_config::DEFAULT_SAMPLE_RATIO))
}

/// The merged entries this node knows, the file values it last read, its clock, and where they
/// are persisted.
#[derive(Debug)]
pub struct Store {
    pub entries: BTreeMap<String, Entry>,
    /// The config file's values when this node last read it; `None` before the first read with
    /// this data directory (new, wiped, or written by an older hearsay).
    pub baseline: Option<FileValues>,
    /// When the baseline was read (unix ms).
    pub baseline_read_ms: Option<u64>,
    /// The newest config-file write this node has seen for each setting, kept even after a later
    /// write overrode it: a node whose file brings the same edit afterwards (one file rolled out
    /// node by node) then knows the cluster had that edit already and does not write it again.
    pub file_edits: BTreeMap<String, FileEdit>,
    /// The trace note of each entry's latest traced write, gossiped beside it (`t:<key>`); kept
    /// in memory only (a trace is about the moment of the write, not worth a restart).
    pub traces: BTreeMap<String, TraceNote>,
    pub clock: Hlc,
    path: PathBuf,
}

/// A value written from a config file, and when (see [`Store::file_edits`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEdit {
    pub value: String,
    pub stamp: Stamp,
}

/// The [`Store::file_edits`] key of one setting: the entry's key and the field's name.
fn edit_key(key: &str, field: &str) -> String {
    format!("{key}#{field}")
}

/// The fields of `entry` written from a config file: (field name, value as
/// [`Write::describe`] shows it, stamp).
fn file_fields(entry: &Entry) -> Vec<(&'static str, String, &Stamp)> {
    let from_file = |source: Source| source == Source::File;
    match entry {
        Entry::Listener(fields) => fields
            .iter()
            .filter(|(_, field)| from_file(field.source))
            .map(|(name, field)| (name.name(), name.display(field.value), &field.stamp))
            .collect(),
        Entry::Backend(backend) => {
            let mut found = Vec::new();
            if let Some(member) = backend.member.as_ref().filter(|f| from_file(f.source)) {
                let (name, value) = Write::Member {
                    pool: String::new(),
                    address: String::new(),
                    member: member.value,
                }
                .describe();
                found.push((name, value, &member.stamp));
            }
            if let Some(state) = backend.state.as_ref().filter(|f| from_file(f.source)) {
                let (name, value) = Write::State {
                    pool: String::new(),
                    address: String::new(),
                    state: state.value,
                }
                .describe();
                found.push((name, value, &state.stamp));
            }
            if let Some(weight) = backend.weight.as_ref().filter(|f| from_file(f.source)) {
                let (name, value) = Write::Weight {
                    pool: String::new(),
                    address: String::new(),
                    weight: weight.value,
                }
                .describe();
                found.push((name, value, &weight.stamp));
            }
            found
        }
        Entry::Telemetry(telemetry) => telemetry
            .sample_ratio
            .iter()
            .filter(|field| from_file(field.source))
            .map(|field| {
                let (name, value) = Write::SampleRatio(field.value).describe();
                (name, value, &field.stamp)
            })
            .collect(),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    entries: BTreeMap<String, Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    baseline: Option<FileValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    baseline_read_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    file_edits: BTreeMap<String, FileEdit>,
}

/// How [`Store::load`] found the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Absent,
    Current,
    /// Written by a hearsay before per-field stamps; converted.
    Converted,
}

impl Store {
    /// Loads `<data_dir>/cluster-state.json` (an absent file is an empty store; a file of an
    /// older format is converted).
    pub fn load(data_dir: &Path) -> Result<(Store, Loaded), String> {
        let path = data_dir.join(STATE_FILE);
        let (entries, baseline, loaded) = match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<StateFile>(&text) {
                Ok(file) if file.format == STATE_FORMAT => (
                    file.entries,
                    file.baseline
                        .map(|baseline| (baseline, file.baseline_read_ms, file.file_edits)),
                    Loaded::Current,
                ),
                Ok(file) => {
                    return Err(format!(
                        "{} has format {}, which this hearsay does not know (it writes format \
                         {STATE_FORMAT}); move it away to start from the config file alone",
                        path.display(),
                        file.format
                    ))
                }
                Err(error) => match serde_json::from_str::<legacy::StateFile>(&text) {
                    Ok(old) => (
                        old.entries
                            .into_iter()
                            .map(|(key, entry)| (key, entry.into_entry()))
                            .collect(),
                        None,
                        Loaded::Converted,
                    ),
                    Err(_) => {
                        return Err(format!(
                            "{} is not a valid hearsay state file ({error}); move it away to \
                             start from the config file alone",
                            path.display()
                        ))
                    }
                },
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                (BTreeMap::new(), None, Loaded::Absent)
            }
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let mut clock = Hlc::default();
        for entry in entries.values() {
            for stamp in entry.stamps() {
                clock.observe(stamp);
            }
        }
        let (baseline, baseline_read_ms, file_edits) = match baseline {
            Some((baseline, read_ms, edits)) => (Some(baseline), read_ms, edits),
            None => (None, None, BTreeMap::new()),
        };
        Ok((
            Store {
                entries,
                baseline,
                baseline_read_ms,
                file_edits,
                traces: BTreeMap::new(),
                clock,
                path,
            },
            loaded,
        ))
    }

    /// Writes every entry and the baseline atomically (see [`write_atomically`]).
    pub fn persist(&self) -> std::io::Result<()> {
        write_atomically(&self.path, &self.snapshot())
    }

    /// The state file's text for everything the store holds now.
    pub fn snapshot(&self) -> String {
        serde_json::to_string_pretty(&StateFile {
            format: STATE_FORMAT,
            entries: self.entries.clone(),
            baseline: self.baseline.clone(),
            baseline_read_ms: self.baseline_read_ms,
            file_edits: self.file_edits.clone(),
        })
        .expect("entries serialize")
    }

    /// Where the state file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the config file's values at start: what changed in them since the baseline becomes
    /// writes stamped now (source file), which outrank every earlier write; then `file` is the
    /// new baseline. Returns those writes, or `None` without a baseline (nothing can be known to
    /// have changed, so nothing is written and the cluster's values stand).
    pub fn read_file(&mut self, file: &FileValues, now_ms: u64, node: &str) -> Option<Vec<Write>> {
        // A change the cluster already got from another node's file since this node last read
        // its own (the same file rolled out node by node) is not written again: it would undo
        // the runtime changes made since.
        let since = self.baseline_read_ms.unwrap_or(0);
        let writes = self.baseline.as_ref().map(|baseline| {
            file.changes_since(baseline)
                .into_iter()
                .filter(|write| {
                    let (field, value) = write.describe();
                    !self
                        .file_edits
                        .get(&edit_key(&write.key(), field))
                        .is_some_and(|seen| seen.value == value && seen.stamp.millis > since)
                })
                .collect::<Vec<_>>()
        });
        if let Some(writes) = &writes {
            if !writes.is_empty() {
                self.write(writes, now_ms, node, &Origin::file());
            }
        }
        self.baseline = Some(file.clone());
        self.baseline_read_ms = Some(now_ms);
        writes
    }

    /// Merges `entry` into what the store has for `key`. Returns whether anything changed.
    pub fn offer(&mut self, key: &str, entry: &Entry) -> bool {
        for stamp in entry.stamps() {
            self.clock.observe(stamp);
        }
        for (field, value, stamp) in file_fields(entry) {
            let slot = self.file_edits.entry(edit_key(key, field));
            match slot {
                std::collections::btree_map::Entry::Occupied(mut seen) => {
                    if *stamp > seen.get().stamp {
                        seen.insert(FileEdit {
                            value,
                            stamp: stamp.clone(),
                        });
                    }
                }
                std::collections::btree_map::Entry::Vacant(empty) => {
                    empty.insert(FileEdit {
                        value,
                        stamp: stamp.clone(),
                    });
                }
            }
        }
        match self.entries.get_mut(key) {
            Some(current) => current.merge(entry),
            None => {
                self.entries.insert(key.to_owned(), entry.clone());
                true
            }
        }
    }

    /// Stamps `writes` (one stamp for all: they are one operation) and merges them. Returns the
    /// keys written, in order, without repeats.
    pub fn write(
        &mut self,
        writes: &[Write],
        now_ms: u64,
        node: &str,
        origin: &Origin,
    ) -> Vec<String> {
        self.write_stamped(writes, now_ms, node, origin).1
    }

    /// [`Store::write`], with the stamp the writes got.
    pub fn write_stamped(
        &mut self,
        writes: &[Write],
        now_ms: u64,
        node: &str,
        origin: &Origin,
    ) -> (Stamp, Vec<String>) {
        let stamp = self.clock.stamp(now_ms, node);
        let mut keys: Vec<String> = Vec::new();
        for write in writes {
            let key = write.key();
            self.offer(&key, &write.to_entry(&stamp, origin));
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        (stamp, keys)
    }
}

/// Writes `text` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let temporary = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(directory)?.sync_all()?;
    Ok(())
}

/// The formats of hearsay versions before per-field stamps: one stamp for a whole entry.
mod legacy {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{BackendStateValue, Field, ListenerField, Origin, Stamp};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct StateFile {
        pub(super) entries: BTreeMap<String, Entry>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Entry {
        stamp: Stamp,
        value: Value,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    enum Value {
        Listener(ListenerValue),
        Backend(BackendValue),
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ListenerValue {
        keepalive_timeout_ms: u64,
        header_timeout_ms: u64,
        body_timeout_ms: u64,
        max_requests_per_connection: u64,
        max_connection_age_ms: u64,
        max_connections_per_client: u32,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum State {
        Enabled,
        Draining,
        Disabled,
        Removed,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BackendValue {
        state: State,
        weight: u32,
    }

    impl Entry {
        /// Every field the old entry carried, with the old entry's stamp (an admin write: the
        /// old format said nothing else).
        pub(super) fn into_entry(self) -> super::Entry {
            let origin = Origin::admin(None);
            let field = |value| Field::new(value, &self.stamp, &origin);
            match self.value {
                Value::Listener(value) => super::Entry::Listener(
                    [
                        (ListenerField::KeepaliveTimeout, value.keepalive_timeout_ms),
                        (ListenerField::HeaderTimeout, value.header_timeout_ms),
                        (ListenerField::BodyTimeout, value.body_timeout_ms),
                        (
                            ListenerField::MaxRequestsPerConnection,
                            value.max_requests_per_connection,
                        ),
                        (ListenerField::MaxConnectionAge, value.max_connection_age_ms),
                        (
                            ListenerField::MaxConnectionsPerClient,
                            u64::from(value.max_connections_per_client),
                        ),
                    ]
                    .into_iter()
                    .map(|(name, value)| (name, field(value)))
                    .collect(),
                ),
                Value::Backend(value) => {
                    let state = match value.state {
                        State::Enabled => Some(BackendStateValue::Enabled),
                        State::Draining => Some(BackendStateValue::Draining),
                        State::Disabled => Some(BackendStateValue::Disabled),
                        State::Removed => None,
                    };
                    super::Entry::Backend(super::BackendEntry {
                        member: Some(Field::new(state.is_some(), &self.stamp, &origin)),
                        state: state.map(|state| Field::new(state, &self.stamp, &origin)),
                        weight: Some(Field::new(
                            value.weight.clamp(1, 1000),
                            &self.stamp,
                            &origin,
                        )),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
