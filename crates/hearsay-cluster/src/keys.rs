//! The gossip key schema: every key a node sets in its own chitchat state, with the encoding of
//! its value next to it. Keys and values from peers are parsed strictly: a key names at most what
//! a config file could (listener and pool names as the config allows them, backend addresses
//! valid `host:port` of bounded length), so a peer cannot grow the state with arbitrary keys.
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `node:admin`, `node:version`, `node:listeners` | text | what `ListMembers` shows |
//! | `node:state` | `alive` / `draining` / `left` | graceful shutdown, announced |
//! | `node:ready` | `1` / `0` | listeners bound |
//! | `set:l:<listener>`, `set:b:<pool>/<backend>` | JSON `Entry`: stamped fields | replicated settings, merged field by field by every node |
//! | `set:t:telemetry` | JSON `Entry`: stamped fields | the replicated telemetry settings (`sample_ratio`); older nodes read no `set:t:` key |
//! | `t:<replicated key>` | JSON `TraceNote`: stamp, `traceparent`, write time | the trace context of the entry's latest traced write (older nodes read no `t:` key) |
//! | `c:<listener>/<client key>` | `<count>` / `<count>e` | this node's open connections of one client it leads / echoes (see `client_counts`) |
//! | `h:<pool>/<backend>` | `1` / `0` | this node's active-check verdict (assigned probers only) |
//! | `e:<pool>/<backend>` | `<until>,<since>` unix ms | this node's passive ejection: until then, begun then |
//! | `p:<pool>/<backend>` | unix ms | start of this prober's latest passing check (while its verdict is healthy and some node ejects the backend) |
//!
//! The wire format is shared with every node of the cluster, older builds included: a change
//! here must keep reading what they write.

use std::net::IpAddr;

use hearsay_proxy::ClientKey;
use serde::{Deserialize, Serialize};

use crate::client_counts::Role;
use crate::hlc::{Stamp, MAX_AHEAD_MS};

/// Replicated listener settings: `set:l:<listener>`.
pub const LISTENER_PREFIX: &str = "set:l:";
/// Replicated backend membership, state and weight: `set:b:<pool>/<backend>`.
pub const BACKEND_PREFIX: &str = "set:b:";
/// Replicated telemetry settings: `set:t:telemetry` (one key: the settings are node-wide).
pub const TELEMETRY_PREFIX: &str = "set:t:";
/// The one telemetry key.
pub const TELEMETRY_KEY: &str = "set:t:telemetry";
/// The trace context of a replicated entry's latest traced write: `t:<replicated key>`.
pub const TRACE_PREFIX: &str = "t:";
/// A client's open connections on this node: `c:<listener>/<client key>`.
pub const COUNT_PREFIX: &str = "c:";
/// This node's active-check verdict of a backend: `h:<pool>/<backend>`.
pub const VERDICT_PREFIX: &str = "h:";
/// This node's passive ejection of a backend: `e:<pool>/<backend>`.
pub const EJECTION_PREFIX: &str = "e:";
/// The start of this prober's latest passing check of a backend: `p:<pool>/<backend>`.
pub const PASS_PREFIX: &str = "p:";
/// The node's admin API address.
pub const KEY_ADMIN: &str = "node:admin";
/// The node's hearsay version.
pub const KEY_VERSION: &str = "node:version";
/// The node's listeners, comma-separated.
pub const KEY_LISTENERS: &str = "node:listeners";
/// [`Announced`].
pub const KEY_STATE: &str = "node:state";
/// `1` once the node's listeners are bound and serving, else `0`.
pub const KEY_READY: &str = "node:ready";

/// The longest backend address a key may carry (a DNS name of 253 bytes and a port).
const MAX_ADDRESS_LEN: usize = 260;

/// What a replicated key (`set:`) is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Listener(&'a str),
    Backend { pool: &'a str, address: &'a str },
    Telemetry,
}

pub fn listener_key(name: &str) -> String {
    format!("{LISTENER_PREFIX}{name}")
}

pub fn backend_key(pool: &str, address: &str) -> String {
    format!("{BACKEND_PREFIX}{pool}/{address}")
}

/// A replicated key: names as the config file allows them, so a peer's key can never name more
/// than a config could (bounded length, no control characters).
pub fn parse_key(key: &str) -> Option<Target<'_>> {
    if key == TELEMETRY_KEY {
        return Some(Target::Telemetry);
    }
    if let Some(name) = key.strip_prefix(LISTENER_PREFIX) {
        return hearsay_config::valid_name(name).then_some(Target::Listener(name));
    }
    let id = key.strip_prefix(BACKEND_PREFIX)?;
    let (pool, address) = parse_backend_id(id)?;
    Some(Target::Backend { pool, address })
}

/// A backend's id in gossip keys and views: `<pool>/<backend>`.
pub fn backend_id(pool: &str, address: &str) -> String {
    format!("{pool}/{address}")
}

/// `(pool, address)` of a backend id, when both are what a config could name.
pub fn parse_backend_id(id: &str) -> Option<(&str, &str)> {
    let (pool, address) = id.split_once('/')?;
    (hearsay_config::valid_name(pool)
        && address.len() <= MAX_ADDRESS_LEN
        && hearsay_config::valid_backend_address(address))
    .then_some((pool, address))
}

/// The trace key of a replicated entry: `t:<replicated key>`.
pub fn trace_key(entry_key: &str) -> String {
    let mut key = String::new();
    write_trace_key(&mut key, entry_key);
    key
}

/// [`trace_key`] into `key` (its old content replaced), reusing its room.
pub fn write_trace_key(key: &mut String, entry_key: &str) {
    key.clear();
    key.push_str(TRACE_PREFIX);
    key.push_str(entry_key);
}

/// Longest trace value accepted from a peer (a 128-character node id and a `traceparent` take
/// about 250 bytes).
const MAX_TRACE_LEN: usize = 512;

/// The trace context of a replicated write (`t:<replicated key>`), gossiped beside the entry so
/// that every node applying the write records its span in the writer's trace. A value of its
/// own, not a field of the entry: older nodes refuse an entry with a field they do not know, and
/// never read a `t:` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceNote {
    /// The write's stamp: the note is about the fields carrying it.
    pub stamp: Stamp,
    /// The W3C `traceparent` of the span the write was made under (the admin RPC's).
    pub traceparent: String,
    /// When the write was made, by the writer's wall clock (unix ms).
    pub written_ms: u64,
}

/// A trace value: JSON (unknown fields are ignored, so a later version can add some).
pub fn encode_trace(note: &TraceNote) -> String {
    serde_json::to_string(note).expect("trace notes serialize")
}

/// Parses a peer's trace value strictly: bounded, a believable stamp and write time, a valid
/// `traceparent`.
pub fn decode_trace(value: &str, now_ms: u64) -> Option<TraceNote> {
    if value.len() > MAX_TRACE_LEN {
        return None;
    }
    let note: TraceNote = serde_json::from_str(value).ok()?;
    (note.stamp.is_plausible(now_ms)
        && note.written_ms <= now_ms.saturating_add(MAX_AHEAD_MS)
        && hearsay_proxy::trace::parse_traceparent(note.traceparent.as_bytes()).is_some())
    .then_some(note)
}

/// A per-backend key (`h:`, `e:`, `p:`): `<prefix><pool>/<backend>`.
pub fn backend_state_key(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}")
}

/// The backend id of a per-backend key with `prefix`, when it names one a config could.
pub fn parse_backend_state_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let id = key.strip_prefix(prefix)?;
    parse_backend_id(id).map(|_| id)
}

/// A client count key: `c:<listener>/<client key>`.
pub fn count_key(listener: &str, client: &ClientKey) -> String {
    format!("{COUNT_PREFIX}{listener}/{client}")
}

/// `(listener, client address)` of a client count key.
pub fn parse_count_key(key: &str) -> Option<(&str, IpAddr)> {
    let (listener, client) = key.strip_prefix(COUNT_PREFIX)?.split_once('/')?;
    if !hearsay_config::valid_name(listener) {
        return None;
    }
    Some((listener, client.parse().ok()?))
}

/// A client count value: `<count>` for a lead, `<count>e` for an echo.
pub fn encode_count(count: u32, role: Role) -> String {
    match role {
        Role::Lead => count.to_string(),
        Role::Echo => format!("{count}e"),
    }
}

/// Parses a client count value strictly (a bare count, from any node, is a lead).
pub fn decode_count(value: &str) -> Option<(u32, Role)> {
    let (digits, role) = match value.strip_suffix('e') {
        Some(digits) => (digits, Role::Echo),
        None => (value, Role::Lead),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, role))
}

/// An active-check verdict value: `1` healthy, `0` unhealthy.
pub fn encode_verdict(healthy: bool) -> &'static str {
    if healthy {
        "1"
    } else {
        "0"
    }
}

pub fn decode_verdict(value: &str) -> Option<bool> {
    match value {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// An ejection value (`e:`): `<until>,<since>` in unix ms.
pub fn encode_ejection(until: u64, since: u64) -> String {
    format!("{until},{since}")
}

/// Parses an ejection value. A bare `<until>` (an older node's) is accepted with an unknown
/// start, which no check lifts.
pub fn decode_ejection(value: &str) -> Option<(u64, Option<u64>)> {
    match value.split_once(',') {
        None => Some((value.parse().ok()?, None)),
        Some((until, since)) => {
            let (until, since) = (until.parse::<u64>().ok()?, since.parse::<u64>().ok()?);
            (since <= until).then_some((until, Some(since)))
        }
    }
}

/// A passing check value (`p:`): its start in unix ms.
pub fn encode_pass(started_ms: u64) -> String {
    started_ms.to_string()
}

pub fn decode_pass(value: &str) -> Option<u64> {
    value.parse().ok()
}

/// What a node announces of its own lifecycle (`node:state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    Alive,
    Draining,
    Left,
}

impl Announced {
    pub fn encode(self) -> &'static str {
        match self {
            Announced::Alive => "alive",
            Announced::Draining => "draining",
            Announced::Left => "left",
        }
    }

    /// Anything but `draining` or `left` (a missing key included) is alive.
    pub fn decode(value: Option<&str>) -> Announced {
        match value {
            Some("left") => Announced::Left,
            Some("draining") => Announced::Draining,
            _ => Announced::Alive,
        }
    }
}

/// The readiness value (`node:ready`).
pub fn encode_ready(ready: bool) -> &'static str {
    if ready {
        "1"
    } else {
        "0"
    }
}

pub fn decode_ready(value: Option<&str>) -> bool {
    value == Some("1")
}

/// The listeners value (`node:listeners`), bounded: at most 256 names of at most 128 chars.
pub fn decode_listeners(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .filter(|name| !name.is_empty())
        .take(256)
        .map(|name| name.chars().take(128).collect())
        .collect()
}

/// A free-text value (`node:admin`, `node:version`), cut to `max_chars`.
pub fn decode_text(value: Option<&str>, max_chars: usize) -> String {
    value.unwrap_or_default().chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_keys_round_trip_and_bad_ones_are_refused() {
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
        assert_eq!(listener_key("web"), "set:l:web", "the wire format");
        assert_eq!(backend_key("app", "10.0.0.1:80"), "set:b:app/10.0.0.1:80");
        assert_eq!(parse_key("set:t:telemetry"), Some(Target::Telemetry));
        assert_eq!(parse_key("set:t:"), None);
        assert_eq!(parse_key("set:t:other"), None);
        assert_eq!(parse_key("set:l:"), None);
        assert_eq!(parse_key("set:b:app"), None);
        assert_eq!(parse_key("c:web/1.2.3.4"), None);
        // Names a config file could not hold are refused: a peer cannot grow the state with them.
        let long = "x".repeat(65);
        for bad in [
            format!("set:l:{long}"),
            "set:l:we b".to_owned(),
            "set:l:web\n".to_owned(),
            format!("set:b:{long}/10.0.0.1:80"),
            "set:b:app/not an address".to_owned(),
            format!("set:b:app/{}.example:80", "a".repeat(300)),
            "set:b:app/10.0.0.1".to_owned(),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backend_state_keys_round_trip_and_bad_ones_are_refused() {
        let id = backend_id("app", "10.0.0.1:80");
        for prefix in [VERDICT_PREFIX, EJECTION_PREFIX, PASS_PREFIX] {
            let key = backend_state_key(prefix, &id);
            assert_eq!(parse_backend_state_key(prefix, &key), Some(&*id));
        }
        assert_eq!(backend_state_key(VERDICT_PREFIX, &id), "h:app/10.0.0.1:80");
        assert_eq!(backend_state_key(EJECTION_PREFIX, &id), "e:app/10.0.0.1:80");
        assert_eq!(backend_state_key(PASS_PREFIX, &id), "p:app/10.0.0.1:80");
        assert_eq!(parse_backend_id(&id), Some(("app", "10.0.0.1:80")));
        for bad in [
            "h:app",
            "h:app/",
            "h:/10.0.0.1:80",
            "h:a b/10.0.0.1:80",
            "h:app/10.0.0.1",
            "e:app/10.0.0.1:80",
        ] {
            assert_eq!(
                parse_backend_state_key(VERDICT_PREFIX, bad),
                None,
                "{bad:?}"
            );
        }
        let long = format!("h:app/{}.example:80", "a".repeat(300));
        assert_eq!(parse_backend_state_key(VERDICT_PREFIX, &long), None);
    }

    #[test]
    fn count_keys_round_trip_and_bad_ones_are_refused() {
        let v4 = ClientKey::new("192.0.2.7".parse().unwrap(), 64);
        assert_eq!(count_key("web", &v4), "c:web/192.0.2.7");
        assert_eq!(
            parse_count_key(&count_key("web", &v4)),
            Some(("web", "192.0.2.7".parse().unwrap()))
        );
        let v6 = ClientKey::new("2001:db8::1:2".parse().unwrap(), 64);
        let key = count_key("web", &v6);
        let (listener, ip) = parse_count_key(&key).unwrap();
        assert_eq!((listener, ClientKey::new(ip, 64)), ("web", v6));
        for bad in [
            "c:web",
            "c:web/",
            "c:web/not-an-ip",
            "c:/1.2.3.4",
            "c:we b/1.2.3.4",
            "h:web/1.2.3.4",
        ] {
            assert_eq!(parse_count_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn count_values_say_lead_or_echo_and_are_parsed_strictly() {
        assert_eq!(encode_count(12, Role::Lead), "12");
        assert_eq!(encode_count(0, Role::Echo), "0e");
        assert_eq!(
            decode_count(&encode_count(12, Role::Lead)),
            Some((12, Role::Lead))
        );
        assert_eq!(
            decode_count(&encode_count(0, Role::Echo)),
            Some((0, Role::Echo))
        );
        for bad in [
            "",
            "e",
            "ee",
            "1ee",
            "-1",
            "+1",
            " 1",
            "1 e",
            "0x1",
            "99999999999",
        ] {
            assert_eq!(decode_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn health_values_round_trip_and_are_parsed_strictly() {
        assert_eq!(decode_verdict(encode_verdict(true)), Some(true));
        assert_eq!(decode_verdict(encode_verdict(false)), Some(false));
        for bad in ["", "2", "true", " 1"] {
            assert_eq!(decode_verdict(bad), None, "{bad:?}");
        }
        assert_eq!(encode_ejection(30_000, 1_000), "30000,1000");
        assert_eq!(
            decode_ejection(&encode_ejection(30_000, 1_000)),
            Some((30_000, Some(1_000)))
        );
        assert_eq!(decode_ejection("30000"), Some((30_000, None)));
        for bad in ["", ",", "1,", ",1", "x,1", "1,2,3", "5,9", "-1", "1 ,0"] {
            assert_eq!(decode_ejection(bad), None, "{bad:?}");
        }
        assert_eq!(decode_pass(&encode_pass(1_234)), Some(1_234));
        for bad in ["", "x", "-1", "1.5"] {
            assert_eq!(decode_pass(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn trace_notes_round_trip_and_bad_ones_are_refused() {
        assert_eq!(trace_key("set:l:web"), "t:set:l:web", "the wire format");
        let note = TraceNote {
            stamp: Stamp {
                millis: 1_000,
                counter: 2,
                node: "n1".to_owned(),
            },
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            written_ms: 999,
        };
        let text = encode_trace(&note);
        assert_eq!(
            text,
            r#"{"stamp":{"millis":1000,"counter":2,"node":"n1"},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","written_ms":999}"#,
            "the wire format"
        );
        assert_eq!(decode_trace(&text, 1_000), Some(note.clone()));
        // A later version's extra field is ignored.
        let extended = text.replace("\"written_ms\"", "\"baggage\":\"x\",\"written_ms\"");
        assert_eq!(decode_trace(&extended, 1_000), Some(note.clone()));
        for bad in [
            text.replace("b7ad6b7169203331", "0000000000000000"),
            text.replace("00-0af7", "ff-0af7"),
            text.replace("\"n1\"", "\"\""),
            text.replace("999", "99999999999"),
            text.replace("\"millis\":1000", "\"millis\":99999999999"),
            format!("{text} {}", " ".repeat(600)),
            "{".to_owned(),
            String::new(),
        ] {
            assert_eq!(decode_trace(&bad, 1_000), None, "{bad:?}");
        }
    }

    #[test]
    fn node_values_round_trip() {
        for announced in [Announced::Alive, Announced::Draining, Announced::Left] {
            assert_eq!(Announced::decode(Some(announced.encode())), announced);
        }
        assert_eq!(Announced::decode(None), Announced::Alive);
        assert_eq!(Announced::decode(Some("bogus")), Announced::Alive);
        assert!(decode_ready(Some(encode_ready(true))));
        assert!(!decode_ready(Some(encode_ready(false))));
        assert!(!decode_ready(None));
        assert_eq!(decode_listeners(Some("web,,api")), ["web", "api"]);
        assert_eq!(decode_listeners(Some(&vec!["x"; 300].join(","))).len(), 256);
        assert_eq!(decode_text(Some(&"v".repeat(100)), 64).len(), 64);
    }
}
