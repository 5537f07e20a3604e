use super::*;

#[test]
fn the_surplus_is_split_once_across_holders() {
    let holders = [("n1", 12), ("n2", 11), ("n3", 10)];
    let shares: Vec<u32> = ["n1", "n2", "n3"]
        .iter()
        .map(|me| trim_share(&holders, 30, me))
        .collect();
    assert_eq!(shares.iter().sum::<u32>(), 3, "{shares:?}");
    assert_eq!(
        shares,
        [2, 1, 0],
        "rounding leftovers go to the biggest holder"
    );
    let skewed = [("n1", 20), ("n2", 15), ("n3", 0)];
    let shares: Vec<u32> = ["n1", "n2", "n3"]
        .iter()
        .map(|me| trim_share(&skewed, 30, me))
        .collect();
    assert_eq!(shares, [3, 2, 0]);
    assert_eq!(trim_share(&holders, 33, "n1"), 0);
    assert_eq!(trim_share(&[("n1", 5)], 0, "n1"), 5);
    assert_eq!(trim_share(&[("a", 1), ("b", 1), ("c", 1)], 1, "c"), 0);
    assert_eq!(
        ["a", "b", "c"]
            .iter()
            .map(|me| trim_share(&[("a", 1), ("b", 1), ("c", 1)], 1, me))
            .sum::<u32>(),
        2
    );
}

const NOW_MS: u64 = 1_700_000_000_000;

fn id(node: &str, generation: u64) -> ChitchatId {
    let port = 7000 + node.bytes().map(u16::from).sum::<u16>();
    ChitchatId::new(node.to_owned(), generation, ([127, 0, 0, 1], port).into())
}

fn config() -> ClusterConfig {
    ClusterConfig {
        listen: "127.0.0.1:7946".parse().unwrap(),
        advertise: "127.0.0.1:7946".parse().unwrap(),
        seeds: Vec::new(),
        cluster_id: "test".to_owned(),
        gossip_interval: Duration::from_millis(500),
        keys: Vec::new(),
        failure_threshold: 8.0,
        dead_node_grace: Duration::from_secs(60),
        probers_per_backend: 2,
        published_clients: 100,
        max_clock_skew: Duration::from_secs(60),
    }
}

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn client(ip: &str) -> ClientKey {
    ClientKey::new(ip.parse().unwrap(), 64)
}

fn limited(limit: u32) -> Arc<ListenerSettings> {
    Arc::new(ListenerSettings {
        max_connections_per_client: Some(limit),
        ..ListenerSettings::default()
    })
}

/// A round of node `me` among `nodes` ((id, live, age, values)), with listener `web` (its
/// settings and this node's counts) and `backends`.
struct Scene {
    me: ChitchatId,
    nodes: Vec<(ChitchatId, bool, Duration, BTreeMap<String, String>)>,
    settings: Arc<ListenerSettings>,
    local: HashMap<ClientKey, u32>,
    backends: Vec<LocalBackend>,
    trimmed: HashSet<(String, ClientKey)>,
    config: ClusterConfig,
}

impl Scene {
    fn new(me: &str) -> Scene {
        let me = id(me, 1);
        Scene {
            nodes: vec![(me.clone(), true, Duration::ZERO, BTreeMap::new())],
            me,
            settings: Arc::new(ListenerSettings::default()),
            local: HashMap::new(),
            backends: Vec::new(),
            trimmed: HashSet::new(),
            config: config(),
        }
    }

    fn peer(mut self, id: ChitchatId, live: bool, pairs: &[(&str, &str)]) -> Scene {
        self.nodes
            .push((id, live, Duration::from_millis(100), values(pairs)));
        self
    }

    fn observe(&self) -> Observation {
        let input = RoundInput {
            self_id: &self.me,
            nodes: self
                .nodes
                .iter()
                .map(|(id, live, age, state)| NodeInput {
                    id,
                    live: *live,
                    age: *age,
                    state,
                })
                .collect(),
            self_state: MemberState::Alive,
            self_ready: true,
            listeners: vec![LocalListener {
                name: "web",
                settings: Arc::clone(&self.settings),
                clients: &self.local,
            }],
            backends: self.backends.clone(),
            recently_trimmed: &self.trimmed,
            config: &self.config,
            now_ms: NOW_MS,
        };
        observe(&input)
    }
}

#[test]
fn members_show_each_node_once_and_only_live_announced_ones_count() {
    let scene = Scene::new("a")
        .peer(
            id("b", 1),
            true,
            &[("node:state", "alive"), ("node:ready", "1")],
        )
        .peer(id("c", 1), false, &[("node:state", "alive")])
        .peer(id("d", 1), true, &[("node:state", "left")])
        .peer(id("e", 1), true, &[("node:state", "draining")])
        // A restarted node: its old generation is dead, its new one alive.
        .peer(id("f", 1), false, &[])
        .peer(id("f", 2), true, &[("node:admin", "127.0.0.1:9000")]);
    let observation = scene.observe();
    let states: Vec<(&str, u64, MemberState, bool)> = observation
        .members
        .iter()
        .map(|m| (&*m.node_id, m.generation, m.state, m.ready))
        .collect();
    assert_eq!(
        states,
        [
            ("a", 1, MemberState::Alive, true),
            ("b", 1, MemberState::Alive, true),
            ("c", 1, MemberState::Dead, false),
            ("d", 1, MemberState::Left, false),
            ("e", 1, MemberState::Draining, false),
            ("f", 2, MemberState::Alive, false),
        ]
    );
    assert_eq!(observation.members[5].admin_address, "127.0.0.1:9000");
    let mut counting: Vec<&str> = observation.ages.keys().map(String::as_str).collect();
    counting.sort_unstable();
    assert_eq!(counting, ["b", "e", "f"], "alive and draining peers count");
}

#[test]
fn peers_entries_that_differ_are_offered_dead_writers_included_malformed_ones_not() {
    use crate::replicated::{ListenerField, Origin, Write};
    let entry = |value: u64, millis: u64| {
        Write::Listener {
            name: "web".to_owned(),
            field: ListenerField::KeepaliveTimeout,
            value,
        }
        .to_entry(
            &crate::hlc::Stamp {
                millis,
                counter: 0,
                node: "b".to_owned(),
            },
            &Origin::admin(None),
        )
        .to_json()
    };
    let ours = entry(30_000, NOW_MS - 10);
    let theirs = entry(5_000, NOW_MS - 5);
    let mut scene = Scene::new("a")
        .peer(id("b", 1), false, &[("set:l:web", &theirs)])
        .peer(id("c", 1), true, &[("set:l:web", &ours)])
        .peer(
            id("d", 1),
            true,
            &[("set:l:api", "{not json"), ("set:l:we b", &theirs)],
        );
    scene.nodes[0].3 = values(&[("set:l:web", &ours)]);
    let observation = scene.observe();
    assert_eq!(observation.offered.len(), 1, "{:?}", observation.offered);
    assert_eq!(observation.offered[0].0, "set:l:web");
    assert_eq!(observation.offered[0].1.to_json(), theirs);
}

#[test]
fn a_peers_trace_note_is_offered_with_its_entry_and_a_bad_one_is_dropped() {
    use crate::keys::{encode_trace, TraceNote};
    use crate::replicated::{ListenerField, Origin, Write};
    let stamp = crate::hlc::Stamp {
        millis: NOW_MS - 5,
        counter: 0,
        node: "b".to_owned(),
    };
    let entry = Write::Listener {
        name: "web".to_owned(),
        field: ListenerField::KeepaliveTimeout,
        value: 7_000,
    }
    .to_entry(&stamp, &Origin::admin(None))
    .to_json();
    let note = TraceNote {
        stamp: stamp.clone(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        written_ms: NOW_MS - 5,
    };
    let note_text = encode_trace(&note);
    let offered = |own: &[(&str, &str)], peer: &[(&str, &str)]| {
        let mut scene = Scene::new("a").peer(id("b", 1), true, peer);
        scene.nodes[0].3 = values(own);
        scene.observe().offered
    };
    // A new entry with its note: offered together.
    let found = offered(&[], &[("set:l:web", &entry), ("t:set:l:web", &note_text)]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2.as_ref(), Some(&note));
    // Without a note (an older writer, or an untraced write): offered alone.
    let found = offered(&[], &[("set:l:web", &entry)]);
    assert_eq!((found.len(), found[0].2.as_ref()), (1, None));
    // A malformed note does not cost the entry.
    let found = offered(&[], &[("set:l:web", &entry), ("t:set:l:web", "{bad")]);
    assert_eq!((found.len(), found[0].2.as_ref()), (1, None));
    // The same entry with a note we lack: offered again, for the note.
    let found = offered(
        &[("set:l:web", &entry)],
        &[("set:l:web", &entry), ("t:set:l:web", &note_text)],
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2.as_ref(), Some(&note));
    // Both known: nothing to do.
    let both = [("set:l:web", &*entry), ("t:set:l:web", &*note_text)];
    assert!(offered(&both, &both).is_empty());
}

#[test]
fn live_peers_counts_add_up_and_a_dead_peers_stop_counting() {
    let mut scene = Scene::new("a")
        .peer(
            id("b", 1),
            true,
            &[("c:web/192.0.2.1", "3"), ("c:web/192.0.2.2", "1e")],
        )
        .peer(
            id("c", 1),
            true,
            &[("c:web/192.0.2.1", "2e"), ("c:web/192.0.2.9", "99999999")],
        )
        .peer(id("d", 1), false, &[("c:web/192.0.2.1", "50")])
        .peer(
            id("e", 1),
            true,
            &[("c:other/192.0.2.1", "7"), ("c:web/nonsense", "7")],
        );
    scene.settings = limited(10);
    scene.local.insert(client("192.0.2.1"), 1);
    let observation = scene.observe();
    let (name, remote) = &observation.remote[0];
    assert_eq!(name, "web");
    assert_eq!(
        remote.get(&client("192.0.2.1")),
        Some(&5),
        "3 + 2; the dead peer's 50 not"
    );
    assert_eq!(remote.get(&client("192.0.2.2")), Some(&1));
    assert_eq!(
        remote.get(&client("192.0.2.9")),
        Some(&MAX_PEER_COUNT),
        "clamped"
    );
    assert_eq!(remote.len(), 3, "{remote:?}");
    // b leads 192.0.2.1, so this node echoes its count; 192.0.2.2 is only echoed by b.
    assert_eq!(
        observation.publish,
        values(&[("c:web/192.0.2.1", "1e")]),
        "an echo of what a peer leads"
    );
}

#[test]
fn this_node_leads_a_client_at_the_publish_threshold_and_nothing_without_a_limit() {
    let mut scene = Scene::new("a").peer(id("b", 1), true, &[]);
    scene.local.insert(client("192.0.2.1"), 3);
    scene.local.insert(client("192.0.2.2"), 2);
    let observation = scene.observe();
    assert!(
        observation.publish.is_empty(),
        "no limit, nothing published"
    );
    // Limit 10 over 2 live nodes: pigeonhole 6, publish threshold 3.
    scene.settings = limited(10);
    let observation = scene.observe();
    assert_eq!(observation.publish, values(&[("c:web/192.0.2.1", "3")]));
    assert_eq!(observation.published_clients[0].threshold, 3);
    scene.config.published_clients = 0;
    let observation = scene.observe();
    assert!(observation.publish.is_empty());
    assert_eq!(observation.published_clients[0].left_out, 1);
}

#[test]
fn a_client_over_its_cap_is_trimmed_by_share_once_counts_are_fresh() {
    let mut scene = Scene::new("a").peer(id("b", 1), true, &[("c:web/192.0.2.1", "3")]);
    scene.settings = limited(5);
    scene.local.insert(client("192.0.2.1"), 4);
    let observation = scene.observe();
    // 7 held, limit 5: a surplus of 2; by share a closes 1 (4·2/7), b none (3·2/7), and the
    // one rounding leaves goes to the biggest holder, a.
    assert_eq!(
        observation.trims,
        [Trim {
            listener: "web".to_owned(),
            client: client("192.0.2.1"),
            share: 2,
            limit: 5,
            holders: vec![("b".to_owned(), 3), ("a".to_owned(), 4)],
        }]
    );
    // Not again while peers may not have seen the first trim.
    scene
        .trimmed
        .insert(("web".to_owned(), client("192.0.2.1")));
    assert!(scene.observe().trims.is_empty());
    scene.trimmed.clear();
    // Not on a stale count: b not heard from for longer than three rounds.
    scene.nodes[1].2 = scene.config.gossip_interval * 3 + Duration::from_millis(1);
    assert!(scene.observe().trims.is_empty());
    // Not within the limit.
    scene.nodes[1].2 = Duration::ZERO;
    scene.local.insert(client("192.0.2.1"), 1);
    assert!(scene.observe().trims.is_empty());
}

fn backend(verdict: Option<bool>) -> LocalBackend {
    LocalBackend {
        pool: "app".to_owned(),
        address: "10.0.0.1:80".to_owned(),
        health_check: true,
        unejects_on_healthy_check: true,
        verdict: verdict.map(|healthy| (healthy, "status 503".to_owned())),
        ejection: None,
        last_pass: None,
        checked_healthy: true,
    }
}

#[test]
fn the_probers_verdict_decides_health_and_a_prober_publishes_its_own() {
    // Two probers per backend among two nodes: both probe.
    let mut scene = Scene::new("a").peer(id("b", 1), true, &[("h:app/10.0.0.1:80", "0")]);
    scene.backends = vec![backend(Some(false))];
    let observation = scene.observe();
    let round = &observation.backends[0];
    assert_eq!(round.probes_here, Some(true));
    assert_eq!(round.probers.len(), 2);
    let change = round.health_change.as_ref().expect("unhealthy now");
    assert!(!change.healthy);
    assert_eq!(change.unhealthy_on, ["b", "a"]);
    assert!(change.reason.ends_with(": status 503"), "{}", change.reason);
    assert_eq!(observation.publish, values(&[("h:app/10.0.0.1:80", "0")]));
    assert_eq!(round.views.len(), 1);
    assert_eq!(round.views[0].verdict, Some(false));
    // One unhealthy vote of two is a tie: healthy, so nothing changes.
    scene.backends = vec![backend(Some(true))];
    assert_eq!(scene.observe().backends[0].health_change, None);
    // A dead peer's verdict does not count.
    scene.nodes[1].1 = false;
    scene.backends = vec![backend(None)];
    assert_eq!(scene.observe().backends[0].health_change, None);
}

#[test]
fn ejections_are_honoured_until_a_check_begun_after_them_passes() {
    let until = (NOW_MS + 30_000).to_string();
    let ejection = format!("{until},{}", NOW_MS - 1_000);
    let far = format!("{},{}", NOW_MS + 86_400_000, NOW_MS - 1_000);
    let mut scene = Scene::new("a")
        .peer(id("b", 1), true, &[("e:app/10.0.0.1:80", &ejection)])
        .peer(id("c", 1), true, &[("e:app/10.0.0.1:80", &far)])
        .peer(id("d", 1), false, &[("e:app/10.0.0.1:80", &far)]);
    scene.config.probers_per_backend = 4;
    let mut local = backend(Some(true));
    local.ejection = Some((Duration::from_millis(4_500), NOW_MS - 500));
    local.last_pass = Some(NOW_MS - 2_000);
    scene.backends = vec![local];
    let observation = scene.observe();
    let round = &observation.backends[0];
    assert_eq!(
        round.remote_ejection,
        Some(MAX_PEER_EJECTION),
        "clamped, dead d ignored"
    );
    assert_eq!(round.ejected_by, ["b", "c"]);
    assert_eq!(round.lift_local, None, "the pass began before the ejection");
    let own = format!(
        "{},{}",
        (NOW_MS + 4_500).div_ceil(1000) * 1000,
        NOW_MS - 500
    );
    assert_eq!(
        observation.publish,
        values(&[
            ("e:app/10.0.0.1:80", &own),
            ("h:app/10.0.0.1:80", "1"),
            ("p:app/10.0.0.1:80", &(NOW_MS - 2_000).to_string()),
        ])
    );

    // A peer's check begun after every ejection passed: all lifted, ours no longer published.
    let pass = (NOW_MS - 100).to_string();
    scene.nodes[1]
        .3
        .insert("p:app/10.0.0.1:80".to_owned(), pass.clone());
    let observation = scene.observe();
    let round = &observation.backends[0];
    assert_eq!(round.remote_ejection, None);
    assert_eq!(round.lift_local, Some(NOW_MS - 100));
    assert!(!observation.publish.contains_key("e:app/10.0.0.1:80"));

    // A pass from the far future is not believed; an unhealthy verdict lifts nothing.
    scene.nodes[1].3.insert(
        "p:app/10.0.0.1:80".to_owned(),
        (NOW_MS + 3_600_000).to_string(),
    );
    assert_eq!(scene.observe().backends[0].lift_local, None);
    scene.nodes[1]
        .3
        .insert("p:app/10.0.0.1:80".to_owned(), pass);
    scene.nodes[1]
        .3
        .insert("h:app/10.0.0.1:80".to_owned(), "0".to_owned());
    scene.nodes[2]
        .3
        .insert("h:app/10.0.0.1:80".to_owned(), "0".to_owned());
    let observation = scene.observe();
    let round = &observation.backends[0];
    assert_eq!(round.health_change.as_ref().map(|c| c.healthy), Some(false));
    assert_eq!(round.lift_local, None);
    assert!(round.remote_ejection.is_some());
}
