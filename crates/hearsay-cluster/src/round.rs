//! One gossip round, observed: what this node decides from every node's gossip state and its own
//! local state, without touching either. [`observe`] is pure (hand-built node states in tests,
//! no chitchat instance); the cluster loop then *applies* the [`Observation`] (remote client
//! counts, trims, shared health and ejections into the proxy, peers' entries into the store) and
//! *publishes* it (this node's own chitchat state).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chitchat::ChitchatId;
use hearsay_config::{ClusterConfig, ListenerSettings};
use hearsay_proxy::ClientKey;

use crate::client_counts::{self, LocalCounts, Role};
use crate::keys::TraceNote;
use crate::keys::{
    self, Announced, BACKEND_PREFIX, COUNT_PREFIX, EJECTION_PREFIX, KEY_ADMIN, KEY_LISTENERS,
    KEY_READY, KEY_STATE, KEY_VERSION, LISTENER_PREFIX, PASS_PREFIX, TELEMETRY_PREFIX,
    VERDICT_PREFIX,
};
use crate::replicated::Entry;
use crate::shared_health;
use crate::views::{BackendView, Member, MemberState};

/// The peers' total connections per client on one listener (the proxy's `RemoteClients`).
pub(crate) type RemoteClients = HashMap<ClientKey, u32>;

/// Largest count believed from a peer.
const MAX_PEER_COUNT: u32 = 10_000_000;
/// Longest ejection believed from a peer.
const MAX_PEER_EJECTION: Duration = Duration::from_secs(3600);

/// One node's gossip key/values as the round reads them (chitchat's `NodeState`, or a map in
/// tests). Keys marked for deletion are not seen.
pub(crate) trait NodeValues {
    fn value(&self, key: &str) -> Option<&str>;
    fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a;
}

impl NodeValues for chitchat::NodeState {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key)
    }

    fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.iter_prefix(prefix)
            .map(|(key, value)| (key, value.value.as_str()))
    }
}

impl NodeValues for BTreeMap<String, String> {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }

    fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(move |(key, _)| key.starts_with(prefix))
        .map(|(key, value)| (key.as_str(), value.as_str()))
    }
}

/// A node chitchat knows of (this one included).
pub(crate) struct NodeInput<'a, S> {
    pub id: &'a ChitchatId,
    /// Live by chitchat's failure detector.
    pub live: bool,
    /// How long since its heartbeat last moved, as seen here.
    pub age: Duration,
    pub state: &'a S,
}

/// One of this node's listeners.
pub(crate) struct LocalListener<'a, C> {
    pub name: &'a str,
    pub settings: Arc<ListenerSettings>,
    /// This node's open connections per client.
    pub clients: &'a C,
}

/// One of this node's backends, as it stands before the round.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalBackend {
    pub pool: String,
    pub address: String,
    pub health_check: bool,
    pub unejects_on_healthy_check: bool,
    /// This node's own active-check verdict (healthy?, why).
    pub verdict: Option<(bool, String)>,
    /// This node's own passive ejection: time left, start (unix ms).
    pub ejection: Option<(Duration, u64)>,
    /// Start of this node's latest passing check (unix ms).
    pub last_pass: Option<u64>,
    /// The active-check health in force.
    pub checked_healthy: bool,
}

/// Everything a round reads.
pub(crate) struct RoundInput<'a, S, C> {
    pub self_id: &'a ChitchatId,
    /// Every node chitchat knows of, this one included.
    pub nodes: Vec<NodeInput<'a, S>>,
    pub self_state: MemberState,
    pub self_ready: bool,
    pub listeners: Vec<LocalListener<'a, C>>,
    pub backends: Vec<LocalBackend>,
    /// Clients trimmed lately: no second trim until peers have seen the first.
    pub recently_trimmed: &'a HashSet<(String, ClientKey)>,
    pub config: &'a ClusterConfig,
    pub now_ms: u64,
}

/// What a round decides.
#[derive(Debug, Default)]
pub(crate) struct Observation {
    /// Peers' replicated entries whose text differs from ours (dead peers' too: entries outlive
    /// their writers), for the store to merge.
    /// With each, the trace note the same peer gossips beside it (`t:<key>`), if any.
    pub offered: Vec<(String, Entry, Option<TraceNote>)>,
    /// Every member, a restarted node once (its newest generation), by node id.
    pub members: Vec<Member>,
    /// Peers whose counts and verdicts count (alive or draining) → how long since heard.
    pub ages: HashMap<String, Duration>,
    /// listener → client → each counting peer's published count.
    pub clients: HashMap<String, HashMap<ClientKey, Vec<(String, u32)>>>,
    /// Per local listener: the peers' total per client (what admission adds to its own).
    pub remote: Vec<(String, RemoteClients)>,
    /// Surplus connections this node closes.
    pub trims: Vec<Trim>,
    /// Per local backend, in the input's order.
    pub backends: Vec<BackendRound>,
    /// Per local listener with a limit: what the cap on published counts left out.
    pub published_clients: Vec<PublishedClients>,
    /// This node's published counts, verdicts, ejections and passing checks (not `node:` keys,
    /// not entries): every key here is set, every earlier one not here is deleted.
    pub publish: BTreeMap<String, String>,
}

/// One client over its cluster-wide cap: this node closes `share` of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trim {
    pub listener: String,
    pub client: ClientKey,
    pub share: u32,
    pub limit: u32,
    /// Every holder's count, this node's last.
    pub holders: Vec<(String, u32)>,
}

/// The client counts published for one listener with a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishedClients {
    pub listener: String,
    pub published: usize,
    pub left_out: usize,
    pub threshold: u32,
}

/// What the round decides for one backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct BackendRound {
    /// Whether this node probes it (`None` without active checks: not assigned).
    pub probes_here: Option<bool>,
    /// The shared verdict, when it changes the health in force.
    pub health_change: Option<HealthChange>,
    /// This node's own ejection ends: a check begun (at this unix ms) after it passed.
    pub lift_local: Option<u64>,
    /// The longest peers' ejection honoured (`None` lifts a remote ejection).
    pub remote_ejection: Option<Duration>,
    /// The peers ejecting it (honoured or not).
    pub ejected_by: Vec<String>,
    /// Every counting peer's view of it, by node id.
    pub views: Vec<BackendView>,
    pub probers: Vec<String>,
}

/// A backend's active-check health changes by the cluster's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthChange {
    pub healthy: bool,
    pub reason: String,
    pub unhealthy_on: Vec<String>,
}

/// What live peers published about backends (keyed by `pool/backend`).
#[derive(Debug, Default)]
struct PeerBackends {
    verdicts: HashMap<String, Vec<(String, bool)>>,
    /// The peers ejecting a backend, with the end and start of each ejection.
    ejections: HashMap<String, Vec<PeerEjection>>,
    /// The start of the latest passing check a peer reported.
    passes: HashMap<String, u64>,
}

/// A peer's passive ejection of a backend.
#[derive(Debug)]
struct PeerEjection {
    node: String,
    /// Unix ms.
    until: u64,
    /// Unix ms; `None` from a node that does not say (no check lifts it).
    since: Option<u64>,
}

/// What the peers' client counts say, per listener.
#[derive(Debug, Default)]
struct PeerClients {
    clients: HashMap<String, HashMap<ClientKey, Vec<(String, u32)>>>,
    /// The clients some live peer leads (this node echoes its count of them).
    led_by_peers: HashMap<String, HashSet<ClientKey>>,
}

/// The round's decisions from the nodes' states and this node's own.
pub(crate) fn observe<S: NodeValues, C: LocalCounts>(input: &RoundInput<'_, S, C>) -> Observation {
    let offered = offered_entries(input);
    let (members, counting) = members(input);
    let ages: HashMap<String, Duration> = counting
        .iter()
        .map(|node| (node.id.node_id.to_string(), node.age))
        .collect();
    let peer_clients = peer_clients(input, &counting);
    let peer_backends = peer_backends(input, &counting);
    let mut live_ids: Vec<&str> = counting.iter().map(|node| &*node.id.node_id).collect();
    live_ids.push(&input.self_id.node_id);
    live_ids.sort_unstable();
    live_ids.dedup();

    let mut observation = Observation {
        offered,
        members,
        ..Observation::default()
    };
    for listener in &input.listeners {
        let peers = peer_clients.clients.get(listener.name);
        let remote = peers
            .map(|per_key| {
                per_key
                    .iter()
                    .map(|(key, per_node)| {
                        let total = per_node
                            .iter()
                            .map(|(_, count)| *count)
                            .fold(0u32, u32::saturating_add);
                        (*key, total)
                    })
                    .collect()
            })
            .unwrap_or_default();
        observation.remote.push((listener.name.to_owned(), remote));
        if let Some(peers) = peers {
            observation
                .trims
                .extend(trims(input, listener, peers, &ages));
        }
    }
    for backend in &input.backends {
        let id = keys::backend_id(&backend.pool, &backend.address);
        let round = backend_round(input, backend, &id, &counting, &live_ids, &peer_backends);
        publish_backend(
            input.now_ms,
            backend,
            &id,
            &round,
            &peer_backends,
            &mut observation.publish,
        );
        observation.backends.push(round);
    }
    publish_clients(
        input,
        &peer_clients.led_by_peers,
        live_ids.len(),
        &mut observation,
    );
    observation.ages = ages;
    observation.clients = peer_clients.clients;
    observation
}

/// Replicated entries of other nodes that differ from ours, or whose trace note differs from
/// ours. Once converged every node holds the same text, so only a differing one is parsed.
fn offered_entries<S: NodeValues, C>(
    input: &RoundInput<'_, S, C>,
) -> Vec<(String, Entry, Option<TraceNote>)> {
    let own = input
        .nodes
        .iter()
        .find(|node| node.id == input.self_id)
        .map(|node| node.state);
    let mut offered = Vec::new();
    // The note keys are built in one buffer: a round looks at every entry of every peer.
    let mut note_key = String::new();
    for node in input.nodes.iter().filter(|node| node.id != input.self_id) {
        for prefix in [LISTENER_PREFIX, BACKEND_PREFIX, TELEMETRY_PREFIX] {
            for (key, value) in node.state.prefixed(prefix) {
                keys::write_trace_key(&mut note_key, key);
                let note = node.state.value(&note_key);
                if own.and_then(|own| own.value(key)) == Some(value)
                    && (note.is_none() || own.and_then(|own| own.value(&note_key)) == note)
                {
                    continue;
                }
                match Entry::parse(key, value, input.now_ms) {
                    Ok(entry) => {
                        let note = note.and_then(|note| keys::decode_trace(note, input.now_ms));
                        offered.push((key.to_owned(), entry, note));
                    }
                    Err(error) => {
                        tracing::debug!(node = %node.id.node_id, %key, %error, "ignored a malformed replicated entry")
                    }
                }
            }
        }
    }
    offered
}

/// Every member (a restarted node once, by its newest generation, sorted by id) and the peers
/// that count: alive or draining.
fn members<'i, 'a, S: NodeValues, C>(
    input: &'i RoundInput<'a, S, C>,
) -> (Vec<Member>, Vec<&'i NodeInput<'a, S>>) {
    let mut members: Vec<Member> = Vec::new();
    let mut counting = Vec::new();
    for node in &input.nodes {
        let is_self = node.id == input.self_id;
        let announced = Announced::decode(node.state.value(KEY_STATE));
        let state = if is_self {
            input.self_state
        } else if announced == Announced::Left {
            MemberState::Left
        } else if !node.live {
            MemberState::Dead
        } else if announced == Announced::Draining {
            MemberState::Draining
        } else {
            MemberState::Alive
        };
        if !is_self && matches!(state, MemberState::Alive | MemberState::Draining) {
            counting.push(node);
        }
        members.push(Member {
            node_id: node.id.node_id.to_string(),
            generation: node.id.generation_id,
            state,
            gossip_address: node.id.gossip_advertise_addr,
            admin_address: keys::decode_text(node.state.value(KEY_ADMIN), 128),
            version: keys::decode_text(node.state.value(KEY_VERSION), 64),
            listeners: keys::decode_listeners(node.state.value(KEY_LISTENERS)),
            ready: if is_self {
                input.self_ready
            } else {
                keys::decode_ready(node.state.value(KEY_READY))
            },
            is_self,
        });
    }
    let mut newest: HashMap<String, u64> = HashMap::new();
    for member in &members {
        let generation = newest.entry(member.node_id.clone()).or_insert(0);
        *generation = (*generation).max(member.generation);
    }
    members.retain(|member| newest.get(&member.node_id) == Some(&member.generation));
    members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    (members, counting)
}

/// The counting peers' client counts, for this node's listeners.
fn peer_clients<S: NodeValues, C>(
    input: &RoundInput<'_, S, C>,
    counting: &[&NodeInput<'_, S>],
) -> PeerClients {
    let mut peers = PeerClients::default();
    for node in counting {
        for (key, value) in node.state.prefixed(COUNT_PREFIX) {
            let (Some((listener, ip)), Some((count, role))) =
                (keys::parse_count_key(key), keys::decode_count(value))
            else {
                continue;
            };
            let Some(local) = input.listeners.iter().find(|l| l.name == listener) else {
                continue;
            };
            let client = ClientKey::new(ip, local.settings.client_ipv6_prefix);
            if role == Role::Lead {
                peers
                    .led_by_peers
                    .entry(listener.to_owned())
                    .or_default()
                    .insert(client);
            }
            peers
                .clients
                .entry(listener.to_owned())
                .or_default()
                .entry(client)
                .or_default()
                .push((node.id.node_id.to_string(), count.min(MAX_PEER_COUNT)));
        }
    }
    peers
}

/// The counting peers' verdicts, current ejections (clamped) and believable passing checks.
fn peer_backends<S: NodeValues, C>(
    input: &RoundInput<'_, S, C>,
    counting: &[&NodeInput<'_, S>],
) -> PeerBackends {
    let now_ms = input.now_ms;
    // A passing check from the far future would lift every later ejection: refused.
    let latest_believable = now_ms + input.config.max_clock_skew.as_millis() as u64;
    let mut peers = PeerBackends::default();
    for node in counting {
        let name = node.id.node_id.to_string();
        for (key, value) in node.state.prefixed(VERDICT_PREFIX) {
            let (Some(id), Some(healthy)) = (
                keys::parse_backend_state_key(VERDICT_PREFIX, key),
                keys::decode_verdict(value),
            ) else {
                continue;
            };
            let verdicts = peers.verdicts.entry(id.to_owned()).or_default();
            verdicts.push((name.clone(), healthy));
        }
        for (key, value) in node.state.prefixed(EJECTION_PREFIX) {
            let (Some(id), Some((until, since))) = (
                keys::parse_backend_state_key(EJECTION_PREFIX, key),
                keys::decode_ejection(value),
            ) else {
                continue;
            };
            if until > now_ms {
                let until = until.min(now_ms + MAX_PEER_EJECTION.as_millis() as u64);
                let ejection = PeerEjection {
                    node: name.clone(),
                    until,
                    since,
                };
                peers
                    .ejections
                    .entry(id.to_owned())
                    .or_default()
                    .push(ejection);
            }
        }
        for (key, value) in node.state.prefixed(PASS_PREFIX) {
            let (Some(id), Some(passed)) = (
                keys::parse_backend_state_key(PASS_PREFIX, key),
                keys::decode_pass(value),
            ) else {
                continue;
            };
            if passed <= latest_believable {
                let latest = peers.passes.entry(id.to_owned()).or_insert(0);
                *latest = (*latest).max(passed);
            }
        }
    }
    peers
}

/// One backend: its probers, the shared verdict, which passive ejections (this node's and the
/// peers' it honours) a later passing check ended, and every node's view of it.
fn backend_round<S, C>(
    input: &RoundInput<'_, S, C>,
    backend: &LocalBackend,
    id: &str,
    counting: &[&NodeInput<'_, S>],
    live_ids: &[&str],
    peers: &PeerBackends,
) -> BackendRound {
    let self_id = &*input.self_id.node_id;
    let probers = shared_health::probers(live_ids, id, input.config.probers_per_backend);
    let peer_verdicts = peers.verdicts.get(id).map_or(&[][..], Vec::as_slice);
    let mut round = BackendRound::default();
    let mut checked_healthy = backend.checked_healthy;
    if backend.health_check {
        let probes_here = probers.contains(&self_id);
        round.probes_here = Some(probes_here);
        // An unassigned node forgets its verdict.
        let local = backend.verdict.as_ref().filter(|_| probes_here);
        round.health_change = health_change(self_id, backend, &probers, peer_verdicts, local);
        if let Some(change) = &round.health_change {
            checked_healthy = change.healthy;
        }
    }

    // Passive ejections, unless a check begun after them passed.
    let passed = peers.passes.get(id).copied().max(backend.last_pass);
    let lifted = |since: Option<u64>| {
        shared_health::ejection_lifted(
            backend.unejects_on_healthy_check,
            checked_healthy,
            since,
            passed,
        )
    };
    if let Some((_, since)) = backend.ejection {
        if lifted(Some(since)) {
            round.lift_local = Some(passed.unwrap_or(0));
        }
    }
    let peer_ejections = peers.ejections.get(id).map_or(&[][..], Vec::as_slice);
    round.remote_ejection = peer_ejections
        .iter()
        .filter(|ejection| !lifted(ejection.since))
        .map(|ejection| ejection.until)
        .max()
        .map(|until| Duration::from_millis(until.saturating_sub(input.now_ms)));
    round.ejected_by = peer_ejections.iter().map(|e| e.node.clone()).collect();

    let mut views: Vec<BackendView> = counting
        .iter()
        .map(|peer| {
            let node = peer.id.node_id.to_string();
            BackendView {
                prober: probers.contains(&node.as_str()),
                verdict: peer_verdicts
                    .iter()
                    .find(|(n, _)| *n == node)
                    .map(|(_, healthy)| *healthy),
                ejected: peer_ejections.iter().any(|ejection| ejection.node == node),
                node_id: node,
            }
        })
        .collect();
    views.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    views.dedup_by(|a, b| a.node_id == b.node_id);
    round.views = views;
    round.probers = probers.iter().map(|p| (*p).to_owned()).collect();
    round
}

/// The backend's health from the verdicts of its probers (this node's and its peers'), when it
/// differs from the health in force.
fn health_change(
    self_id: &str,
    backend: &LocalBackend,
    probers: &[&str],
    peer_verdicts: &[(String, bool)],
    local: Option<&(bool, String)>,
) -> Option<HealthChange> {
    let mut all: Vec<(&str, bool)> = peer_verdicts
        .iter()
        .map(|(node, healthy)| (node.as_str(), *healthy))
        .collect();
    if let Some((healthy, _)) = local {
        all.push((self_id, *healthy));
    }
    let healthy = shared_health::verdict(probers, &all).unwrap_or(true);
    if healthy == backend.checked_healthy {
        return None;
    }
    let unhealthy_on: Vec<String> = all
        .iter()
        .filter(|(_, healthy)| !healthy)
        .map(|(node, _)| (*node).to_owned())
        .collect();
    let reason = if healthy {
        "passing checks (cluster verdict)".to_owned()
    } else {
        let detail = local
            .filter(|(healthy, _)| !healthy)
            .map(|(_, reason)| format!(": {reason}"))
            .unwrap_or_default();
        format!("failing checks on {}{detail}", unhealthy_on.join(", "))
    };
    Some(HealthChange {
        healthy,
        reason,
        unhealthy_on,
    })
}

/// What this node publishes of a backend once the round is applied: its verdict (a prober),
/// its own ejection with its start, and its latest passing check while some node ejects it.
fn publish_backend(
    now_ms: u64,
    backend: &LocalBackend,
    id: &str,
    round: &BackendRound,
    peers: &PeerBackends,
    publish: &mut BTreeMap<String, String>,
) {
    let probes_here = round.probes_here == Some(true);
    let verdict = backend.verdict.as_ref().filter(|_| probes_here);
    if let Some((healthy, _)) = verdict {
        publish.insert(
            keys::backend_state_key(VERDICT_PREFIX, id),
            keys::encode_verdict(*healthy).to_owned(),
        );
    }
    let ejected_here = backend.ejection.filter(|_| round.lift_local.is_none());
    if let Some((remaining, since)) = ejected_here {
        // Rounded up to the second, so the value does not change every round.
        let until = (now_ms + remaining.as_millis() as u64).div_ceil(1000) * 1000;
        publish.insert(
            keys::backend_state_key(EJECTION_PREFIX, id),
            keys::encode_ejection(until, since),
        );
    }
    // What lifts ejections elsewhere, only while some node ejects the backend.
    let ejected_somewhere = ejected_here.is_some() || peers.ejections.contains_key(id);
    let healthy_here = verdict.is_some_and(|(healthy, _)| *healthy);
    if let Some(passed) = backend.last_pass {
        if ejected_somewhere && healthy_here && probes_here {
            publish.insert(
                keys::backend_state_key(PASS_PREFIX, id),
                keys::encode_pass(passed),
            );
        }
    }
}

/// The client counts this node publishes: per listener with a limit, the clients at or above
/// the publish threshold here and the ones live peers lead ([`client_counts`]), at most
/// `cluster.published_clients`; nothing for a listener without a limit.
fn publish_clients<S, C: LocalCounts>(
    input: &RoundInput<'_, S, C>,
    led_by_peers: &HashMap<String, HashSet<ClientKey>>,
    live_nodes: usize,
    observation: &mut Observation,
) {
    let none = HashSet::new();
    for listener in &input.listeners {
        let settings = &listener.settings;
        let Some(limit) = settings.max_connections_per_client else {
            continue;
        };
        let threshold = client_counts::publish_threshold(limit, live_nodes);
        let selection = client_counts::select(
            listener.clients,
            led_by_peers.get(listener.name).unwrap_or(&none),
            threshold,
            input.config.published_clients,
            |ip| settings.is_exempt(ip),
        );
        observation.published_clients.push(PublishedClients {
            listener: listener.name.to_owned(),
            published: selection.entries.len(),
            left_out: selection.left_out,
            threshold,
        });
        for (key, count, role) in selection.entries {
            observation.publish.insert(
                keys::count_key(listener.name, &key),
                keys::encode_count(count, role),
            );
        }
    }
}

/// Once counts have converged, a client over its cluster-wide cap (gossip lag let it overshoot)
/// loses its newest surplus connections: each holder closes its share of the surplus
/// ([`trim_share`]). Only fresh counts are acted on, and a client once per settling time.
fn trims<S, C: LocalCounts>(
    input: &RoundInput<'_, S, C>,
    listener: &LocalListener<'_, C>,
    peers: &HashMap<ClientKey, Vec<(String, u32)>>,
    ages: &HashMap<String, Duration>,
) -> Vec<Trim> {
    let settings = &listener.settings;
    let Some(limit) = settings.max_connections_per_client else {
        return Vec::new();
    };
    let settle = input.config.gossip_interval * 3;
    let self_id = &*input.self_id.node_id;
    let mut trims = Vec::new();
    for (client, per_node) in peers {
        if settings.is_exempt(client.address()) {
            continue;
        }
        let local = listener.clients.count(client);
        let recently = (listener.name.to_owned(), *client);
        if local == 0 || input.recently_trimmed.contains(&recently) {
            continue;
        }
        // Only act on fresh counts: a peer not heard from lately may have closed some.
        if per_node
            .iter()
            .any(|(node, _)| ages.get(node).is_none_or(|age| *age > settle))
        {
            continue;
        }
        let mut holders: Vec<(&str, u32)> = per_node
            .iter()
            .map(|(node, count)| (node.as_str(), *count))
            .collect();
        holders.push((self_id, local));
        let share = trim_share(&holders, limit, self_id);
        if share == 0 {
            continue;
        }
        trims.push(Trim {
            listener: listener.name.to_owned(),
            client: *client,
            share,
            limit,
            holders: holders
                .into_iter()
                .map(|(node, count)| (node.to_owned(), count))
                .collect(),
        });
    }
    trims
}

/// How many of its connections of one client node `me` closes when the holders' counts add up
/// to more than `limit`: the surplus is split in proportion to what each holder has (rounded
/// down), and what rounding leaves goes one by one to the biggest holders (ties by node id).
/// Every node computes the same split from the same counts, so together they close the surplus
/// once.
pub fn trim_share(holders: &[(&str, u32)], limit: u32, me: &str) -> u32 {
    let total: u64 = holders.iter().map(|(_, count)| u64::from(*count)).sum();
    if total <= u64::from(limit) {
        return 0;
    }
    let surplus = total - u64::from(limit);
    let mut order: Vec<(&str, u32)> = holders.to_vec();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut shares: Vec<u64> = order
        .iter()
        .map(|(_, count)| surplus * u64::from(*count) / total)
        .collect();
    let mut left = surplus - shares.iter().sum::<u64>();
    for (index, (_, count)) in order.iter().enumerate().cycle().take(order.len() * 2) {
        if left == 0 {
            break;
        }
        if shares[index] < u64::from(*count) {
            shares[index] += 1;
            left -= 1;
        }
    }
    order
        .iter()
        .zip(shares)
        .find(|((node, _), _)| *node == me)
        .map_or(0, |(_, share)| share as u32)
}

#[cfg(test)]
mod tests;
