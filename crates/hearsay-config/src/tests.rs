//! Table-driven tests of good and bad config files.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Algorithm, Config, ConfigError, OverLimitAction};

const POOL: &str = r#"
[[pool]]
name = "app"
backends = ["127.0.0.1:9001"]
"#;

fn with_listener(listener_body: &str) -> String {
    format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n{listener_body}\n{POOL}")
}

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn the_documented_example_file_is_valid() {
    let text = r#"
[node]
id = "n1"
data_dir = "data/n1"

[runtime]
worker_threads = 1

[[listener]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"
keepalive_timeout = "75s"
header_timeout = "60s"
body_timeout = "60s"
max_requests_per_connection = 0
max_connection_age = "0s"
keepalive_header = true
tcp_keepalive = { idle = "2h", interval = "75s", probes = 10 }
max_connections_per_client = 0
client_ipv6_prefix = 64
over_limit = "http_429"
limit_exempt = ["10.0.0.0/8"]

[[pool]]
name = "app"
algorithm = "round_robin"
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;
    let config = Config::parse(text).unwrap();
    assert_eq!(config.node.id, "n1");
    assert_eq!(config.runtime.worker_threads, 1);
    let listener = config.listener("web").unwrap();
    assert_eq!(listener.settings.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(
        listener.settings.tcp_keepalive.idle,
        Duration::from_secs(7200)
    );
    assert_eq!(listener.settings.max_requests_per_connection, None);
    assert_eq!(listener.settings.max_connection_age, None);
    assert_eq!(listener.settings.max_connections_per_client, None);
    assert_eq!(listener.settings.over_limit, OverLimitAction::Http429);
    assert!(listener.settings.is_exempt("10.1.2.3".parse().unwrap()));
    assert!(!listener.settings.is_exempt("11.1.2.3".parse().unwrap()));
    let pool = config.pool("app").unwrap();
    assert_eq!(pool.algorithm, Algorithm::RoundRobin);
    assert_eq!(pool.backends.len(), 2);
}

#[test]
fn defaults_apply_to_a_minimal_file() {
    let config = Config::parse(&with_listener("")).unwrap();
    let settings = &config.listeners[0].settings;
    assert_eq!(settings.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(settings.header_timeout, Duration::from_secs(60));
    assert_eq!(settings.body_timeout, Duration::from_secs(60));
    assert!(settings.keepalive_header);
    assert_eq!(settings.client_ipv6_prefix, 64);
    assert_eq!(settings.tcp_keepalive.probes, 10);
    assert_eq!(config.node.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.pools[0].connect_timeout, Duration::from_secs(5));
    assert_eq!(config.pools[0].response_timeout, Duration::from_secs(60));
    assert!(config.runtime.worker_threads >= 1);
    assert_eq!(
        config.node.data_dir,
        std::path::Path::new("data").join(&config.node.id)
    );
}

#[test]
fn good_values_are_read() {
    type Check = fn(&Config) -> bool;
    let cases: &[(&str, Check)] = &[
        ("keepalive_timeout = \"0s\"", |c| {
            c.listeners[0].settings.keepalive_timeout.is_zero()
        }),
        ("keepalive_timeout = \"500ms\"", |c| {
            c.listeners[0].settings.keepalive_timeout == Duration::from_millis(500)
        }),
        ("keepalive_timeout = \"1h\"", |c| {
            c.listeners[0].settings.keepalive_timeout == Duration::from_secs(3600)
        }),
        ("max_requests_per_connection = 100", |c| {
            c.listeners[0].settings.max_requests_per_connection == Some(100)
        }),
        ("max_connection_age = \"10m\"", |c| {
            c.listeners[0].settings.max_connection_age == Some(Duration::from_secs(600))
        }),
        ("max_connections_per_client = 3", |c| {
            c.listeners[0].settings.max_connections_per_client == Some(3)
        }),
        ("over_limit = \"close\"", |c| {
            c.listeners[0].settings.over_limit == OverLimitAction::Close
        }),
        ("limit_exempt = [\"192.168.1.7\", \"fd00::/8\"]", |c| {
            let settings = &c.listeners[0].settings;
            settings.is_exempt("192.168.1.7".parse().unwrap())
                && settings.is_exempt("fd00::1".parse().unwrap())
                && settings.is_exempt("::ffff:192.168.1.7".parse().unwrap())
                && !settings.is_exempt("192.168.1.8".parse().unwrap())
        }),
        ("client_ipv6_prefix = 56", |c| {
            c.listeners[0].settings.client_ipv6_prefix == 56
        }),
        ("keepalive_header = false", |c| {
            !c.listeners[0].settings.keepalive_header
        }),
    ];
    for (line, check) in cases {
        let config = Config::parse(&with_listener(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(check(&config), "{line}");
    }
}

#[test]
fn bad_values_are_reported_with_path_and_allowed_range() {
    let cases: &[(&str, &str)] = &[
        (
            "keepalive_timeout = \"5000s\"",
            "listener[0].keepalive_timeout: 5000s is above the maximum 3600s",
        ),
        ("keepalive_timeout = \"soon\"", "listener[0].keepalive_timeout: \"soon\" is not a duration"),
        ("header_timeout = \"0s\"", "listener[0].header_timeout: 0s is below the minimum 1ms"),
        ("body_timeout = \"2h\"", "listener[0].body_timeout: 7200s is above the maximum 3600s"),
        ("max_requests_per_connection = -1", "listener[0].max_requests_per_connection: -1 is out of range"),
        ("client_ipv6_prefix = 129", "listener[0].client_ipv6_prefix: 129 is out of range; allowed 1..=128"),
        ("over_limit = \"drop\"", "listener[0].over_limit: \"drop\" is not an over-limit action; allowed: \"http_429\" or \"close\""),
        ("limit_exempt = [\"10.0.0.0/33\"]", "listener[0].limit_exempt[0]: \"10.0.0.0/33\" is not a network"),
        ("tcp_keepalive = { idle = \"0s\" }", "listener[0].tcp_keepalive.idle: 0s is below the minimum 1s"),
        ("tcp_keepalive = { probes = 500 }", "listener[0].tcp_keepalive.probes: 500 is out of range; allowed 1..=127"),
        ("max_request_header_size = 4096", "listener[0].max_request_header_size: 4096 is out of range; allowed 8192..=1048576"),
        ("keepalive_timout = \"5s\"", "listener[0]: unknown field `keepalive_timout`"),
        ("keepalive_timeout = 5", "listener[0]: invalid type: integer `5`, expected a string"),
    ];
    for (line, expected) in cases {
        let found = problems(&with_listener(line));
        assert!(
            found.iter().any(|problem| problem.starts_with(expected)),
            "{line}: expected {expected:?} in {found:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[node]
id = "bad id!"
shutdown_grace = "forever"

[runtime]
worker_threads = 0

[[listener]]
name = "web"
bind = "localhost"
pool = "nope"
keepalive_timeout = "5000s"

[[listener]]
name = "web"
bind = "127.0.0.1:8081"
pool = "app"
typo = 1

[[pool]]
name = "app"
algorithm = "random"
backends = ["127.0.0.1", { address = "127.0.0.1:9002", weight = 0 }, "127.0.0.1:9002"]

[admin2]
"#;
    let found = problems(text);
    let expected = [
        "admin2: unknown section",
        "node.id: \"bad id!\" is not a valid name",
        "node.shutdown_grace: \"forever\" is not a duration",
        "runtime.worker_threads: 0 is out of range; allowed 1..=1024",
        "pool[0].algorithm: \"random\" is not a balancing algorithm; allowed: round_robin",
        "pool[0].backends[0]: \"127.0.0.1\" is not a backend address",
        "pool[0].backends[1].weight: 0 is out of range",
        "pool[0].backends[2]: \"127.0.0.1:9002\" is listed twice",
        "listener[0].bind: \"localhost\" is not an address",
        "listener[0].keepalive_timeout: 5000s is above the maximum 3600s",
        "listener[0].pool: \"nope\" is not a defined pool; defined: [app]",
        "listener[1]: unknown field `typo`",
    ];
    for expected in expected {
        assert!(
            found.iter().any(|problem| problem.starts_with(expected)),
            "expected {expected:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn structural_mistakes_are_reported() {
    let cases: &[(&str, &str)] = &[
        ("this is not toml", "config is not valid TOML"),
        (POOL, "listener: at least one [[listener]] is required"),
        ("listener = 3\n", "listener: must be an array of tables"),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"h:1\"]",
            "listener[1].name: \"a\" is used by another listener",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = []",
            "pool[0].backends: at least one backend is required",
        ),
        ("[[listener]]\nbind = \"127.0.0.1:1\"\npool = \"p\"", "listener[0].name: is required"),
    ];
    for (text, expected) in cases {
        let found = problems(text);
        assert!(
            found.iter().any(|problem| problem.starts_with(expected)),
            "expected {expected:?} in {found:#?}"
        );
    }
}

#[test]
fn backend_addresses_accept_names_and_ipv6() {
    let text = with_listener("").replace(
        "backends = [\"127.0.0.1:9001\"]",
        "backends = [\"backend-1.internal:80\", \"[::1]:9001\", { address = \"10.0.0.1:80\", weight = 3 }]",
    );
    let config = Config::parse(&text).unwrap();
    let weights: Vec<u32> = config.pools[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [1, 1, 3]);
}

#[test]
fn admin_section_defaults_and_guards() {
    let config = Config::parse(&with_listener("")).unwrap();
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(config.admin.token, None);

    let open = format!("[admin]\nlisten = \"0.0.0.0:9100\"\n{}", with_listener(""));
    let found = problems(&open);
    assert!(
        found.iter().any(|p| p.starts_with(
            "admin.listen: 0.0.0.0:9100 is not a loopback address and no admin token is set"
        )),
        "{found:?}"
    );
    let insecure = format!(
        "[admin]\nlisten = \"0.0.0.0:9100\"\ninsecure = true\n{}",
        with_listener("")
    );
    assert!(Config::parse(&insecure).unwrap().admin.insecure);
    let with_token = format!(
        "[admin]\nlisten = \"0.0.0.0:9100\"\ntoken = \"0123456789abcdef\"\n{}",
        with_listener("")
    );
    let found = problems(&with_token);
    assert_eq!(
        found,
        ["admin.listen: 0.0.0.0:9100 is not a loopback address and the admin API has no TLS: its \
          token and its answers would cross the network in clear text; set admin.tls = { cert = \
          \"...\", key = \"...\" }, or insecure = true"],
    );
    let local_token = format!(
        "[admin]\ntoken = \"0123456789abcdef\"\n{}",
        with_listener("")
    );
    assert_eq!(
        Config::parse(&local_token).unwrap().admin.token.as_deref(),
        Some("0123456789abcdef")
    );
    let short = format!("[admin]\ntoken = \"short\"\n{}", with_listener(""));
    assert!(problems(&short)
        .iter()
        .any(|p| p.starts_with("admin.token: must be at least 16 characters")));
    let missing = format!(
        "[admin]\ntoken_file = \"/nonexistent/token\"\n{}",
        with_listener("")
    );
    assert!(problems(&missing)
        .iter()
        .any(|p| p.starts_with("admin.token_file: cannot read \"/nonexistent/token\"")));
}

#[test]
fn runtime_settings_are_checked_with_the_file_ranges() {
    use crate::{settings_problems, ListenerSettings};
    assert!(settings_problems(&ListenerSettings::default()).is_empty());
    let bad = ListenerSettings {
        keepalive_timeout: Duration::from_secs(5000),
        header_timeout: Duration::ZERO,
        ..ListenerSettings::default()
    };
    let found: Vec<String> = settings_problems(&bad)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [
            "keepalive_timeout: 5000s is above the maximum 3600s",
            "header_timeout: 0s is below the minimum 1ms"
        ]
    );
}

fn with_pool(pool_body: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9001\", {{ address = \"127.0.0.1:9002\", weight = 3, state = \"draining\" }}]\n{pool_body}\n"
    )
}

#[test]
fn pool_settings_are_read() {
    use crate::{BackendStateConfig, HealthCheckKind};
    let config = Config::parse(&with_pool(
        "algorithm = \"least_connections\"\nretries = 2\nidle_timeout = \"10s\"\n\
         [pool.health_check]\nkind = \"http\"\npath = \"/healthz\"\nexpected_status = \"200-204\"\nhost = \"app.internal\"\n\
         interval = \"1s\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 4\n\
         [pool.outlier]\nconsecutive_failures = 3\nbase_ejection = \"10s\"\n",
    ))
    .unwrap();
    let pool = &config.pools[0];
    assert_eq!(pool.algorithm, Algorithm::LeastConnections);
    assert_eq!(pool.retries, 2);
    assert_eq!(pool.idle_timeout, Duration::from_secs(10));
    assert_eq!(pool.backends[1].weight, 3);
    assert_eq!(pool.backends[1].state, BackendStateConfig::Draining);
    let check = pool.health_check.as_ref().unwrap();
    assert_eq!(
        check.kind,
        HealthCheckKind::Http {
            path: "/healthz".into(),
            expected_status: (200, 204),
            host: Some("app.internal".into())
        }
    );
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_secs(1), Duration::from_millis(500))
    );
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 4));
    let outlier = pool.outlier.unwrap();
    assert_eq!(
        (outlier.consecutive_failures, outlier.base_ejection),
        (3, Duration::from_secs(10))
    );
    assert_eq!(outlier.max_ejected_percent, 50);
    assert!(
        outlier.uneject_on_healthy_check,
        "a passing check ends an ejection by default"
    );
    let kept = Config::parse(&with_pool(
        "[pool.outlier]\nuneject_on_healthy_check = false",
    ))
    .unwrap();
    assert!(!kept.pools[0].outlier.unwrap().uneject_on_healthy_check);

    let defaults = Config::parse(&with_pool("")).unwrap();
    let pool = &defaults.pools[0];
    assert_eq!((pool.algorithm, pool.retries), (Algorithm::RoundRobin, 1));
    assert!(pool.health_check.is_none());
    assert_eq!(
        pool.outlier.unwrap().consecutive_failures,
        5,
        "outlier detection on by default"
    );
    let off = Config::parse(&with_pool("[pool.outlier]\nconsecutive_failures = 0")).unwrap();
    assert!(off.pools[0].outlier.is_none());
    for (name, algorithm) in Algorithm::ALL {
        let config = Config::parse(&with_pool(&format!("algorithm = \"{name}\""))).unwrap();
        assert_eq!(config.pools[0].algorithm, algorithm);
    }
}

#[test]
fn bad_pool_settings_are_reported() {
    let cases: &[(&str, &str)] = &[
        ("algorithm = \"random\"", "pool[0].algorithm: \"random\" is not a balancing algorithm; allowed: round_robin, weighted_round_robin, least_connections, p2c, consistent_hash"),
        ("retries = 11", "pool[0].retries: 11 is out of range; allowed 0..=10"),
        ("[pool.health_check]\nkind = \"icmp\"", "pool[0].health_check.kind: \"icmp\" is not a health check kind; allowed: http, tcp"),
        ("[pool.health_check]\nexpected_status = \"700\"", "pool[0].health_check.expected_status: \"700\" is not a status or range"),
        ("[pool.health_check]\npath = \"healthz\"", "pool[0].health_check.path: \"healthz\" is not a request path"),
        ("[pool.health_check]\nkind = \"tcp\"\npath = \"/x\"", "pool[0].health_check.path: only applies to kind = \"http\""),
        ("[pool.health_check]\nunhealthy_threshold = 0", "pool[0].health_check.unhealthy_threshold: 0 is out of range; allowed 1..=100"),
        ("[pool.outlier]\nmax_ejected_percent = 101", "pool[0].outlier.max_ejected_percent: 101 is out of range; allowed 0..=100"),
        ("[pool.outlier]\nbogus = 1", "pool[0]: unknown field `bogus`"),
        ("[pool.outlier]\nuneject_on_healthy_check = \"yes\"", "pool[0]: invalid type: string \"yes\", expected a boolean"),
    ];
    for (body, expected) in cases {
        let found = problems(&with_pool(body));
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{body}: expected {expected:?} in {found:#?}"
        );
    }
    let bad_state = with_pool("").replace("state = \"draining\"", "state = \"paused\"");
    assert!(problems(&bad_state)
        .iter()
        .any(|p| p.starts_with("pool[0].backends[1].state: \"paused\" is not a backend state")));
}

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";

#[test]
fn cluster_section_defaults() {
    assert_eq!(Config::parse(&with_listener("")).unwrap().cluster, None);
    let text = format!(
        "[cluster]\nlisten = \"127.0.0.1:7946\"\nseeds = [\"127.0.0.1:7947\", \"localhost:7948\"]\n{}",
        with_listener("")
    );
    let cluster = Config::parse(&text).unwrap().cluster.unwrap();
    assert_eq!(cluster.listen.to_string(), "127.0.0.1:7946");
    assert_eq!(cluster.advertise, cluster.listen);
    assert_eq!(cluster.seeds, ["127.0.0.1:7947", "localhost:7948"]);
    assert_eq!(cluster.cluster_id, "hearsay");
    assert_eq!(cluster.gossip_interval, Duration::from_millis(200));
    assert!(cluster.keys.is_empty());
    assert_eq!(cluster.failure_threshold, 8.0);
    assert_eq!(cluster.probers_per_backend, 2);
    assert_eq!(cluster.published_clients, 10_000);
    assert_eq!(cluster.max_clock_skew, Duration::from_secs(60));
}

#[test]
fn cluster_keys_are_read_and_checked() {
    let one = format!(
        "[cluster]\nlisten = \"10.1.2.3:7946\"\nsecret = \"{KEY_A}\"\n{}",
        with_listener("")
    );
    let cluster = Config::parse(&one).unwrap().cluster.unwrap();
    assert_eq!(cluster.keys.len(), 1);
    assert_eq!(cluster.keys[0][31], 31);
    assert!(!format!("{cluster:?}").contains(KEY_A));

    let two = format!(
        "[cluster]\nlisten = \"10.1.2.3:7946\"\nsecret = [\"{KEY_A}\", \"{KEY_B}\"]\n{}",
        with_listener("")
    );
    let cluster = Config::parse(&two).unwrap().cluster.unwrap();
    assert_eq!(cluster.keys.len(), 2);
    assert_eq!(cluster.keys[1][0], 32);

    let dir = std::env::temp_dir().join(format!("hearsay-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gossip.key");
    std::fs::write(&file, format!("# current\n{KEY_B}\n\n{KEY_A}\n")).unwrap();
    let from_file = format!(
        "[cluster]\nlisten = \"10.1.2.3:7946\"\nsecret_file = \"{}\"\n{}",
        file.display(),
        with_listener("")
    );
    let cluster = Config::parse(&from_file).unwrap().cluster.unwrap();
    assert_eq!(cluster.keys.len(), 2);
    assert_eq!(cluster.keys[0][0], 32);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_cluster_settings_are_reported() {
    let cases: &[(&str, &str)] = &[
        (
            "listen = \"10.1.2.3:7946\"",
            "cluster.listen: 10.1.2.3:7946 is not a loopback address and no cluster key is set",
        ),
        (
            "seeds = [\"x\"]\nlisten = \"127.0.0.1:1\"",
            "cluster.seeds[0]: \"x\" is not host:port",
        ),
        (
            "listen = \"nope\"",
            "cluster.listen: \"nope\" is not an address",
        ),
        ("", "cluster.listen: is required"),
        (
            "listen = \"127.0.0.1:1\"\nsecret = \"c2hvcnQ=\"",
            "cluster.secret: decodes to 5 bytes, a cluster key is exactly 32",
        ),
        (
            "listen = \"127.0.0.1:1\"\nsecret = \"***\"",
            "cluster.secret: is not base64",
        ),
        (
            "listen = \"127.0.0.1:1\"\nsecret = [\"a\", \"b\", \"c\"]",
            "cluster.secret: 3 keys given; at most 2",
        ),
        (
            "listen = \"127.0.0.1:1\"\nsecret_file = \"/nonexistent/key\"",
            "cluster.secret_file: cannot read \"/nonexistent/key\"",
        ),
        (
            "listen = \"127.0.0.1:1\"\ngossip_interval = \"1ms\"",
            "cluster.gossip_interval: 1ms is below the minimum 20ms",
        ),
        (
            "listen = \"127.0.0.1:1\"\nfailure_threshold = 0.5",
            "cluster.failure_threshold: 0.5 is out of range",
        ),
        (
            "listen = \"127.0.0.1:1\"\nprobers_per_backend = 0",
            "cluster.probers_per_backend: 0 is out of range; allowed 1..=100",
        ),
        (
            "listen = \"0.0.0.0:7946\"\nsecret = \"KEY\"",
            "cluster.advertise: is required when cluster.listen is 0.0.0.0:7946",
        ),
        (
            "listen = \"127.0.0.1:1\"\ngossip = 1",
            "cluster: unknown field `gossip`",
        ),
    ];
    for (body, expected) in cases {
        let text = format!(
            "[cluster]\n{}\n{}",
            body.replace("KEY", KEY_A),
            with_listener("")
        );
        let found = problems(&text);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{body:?}: expected {expected:?} in {found:?}"
        );
    }
}

/// A scratch directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("hearsay-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `problems(text)`, failing instead of hanging when validation blocks (on a FIFO).
fn problems_within_seconds(text: String, fifo: &std::path::Path) -> Vec<String> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(problems(&text));
    });
    match finished.recv_timeout(Duration::from_secs(10)) {
        Ok(found) => found,
        Err(_) => {
            // Let the blocked reader go before failing.
            let _ = std::fs::OpenOptions::new().write(true).open(fifo);
            panic!("validation blocked on the FIFO {}", fifo.display());
        }
    }
}

#[test]
fn token_and_key_files_must_be_small_regular_files() {
    let scratch = Scratch::new("secret-files");
    let large = scratch.0.join("large");
    std::fs::write(&large, "a".repeat(64 * 1024 + 1)).unwrap();
    let large = large.to_str().unwrap().to_owned();
    let fifo = scratch.0.join("fifo");
    let made_fifo = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|status| status.success());

    let token_file = |path: &str| format!("[admin]\ntoken_file = {path:?}\n{}", with_listener(""));
    let secret_file = |path: &str| {
        format!(
            "[cluster]\nlisten = \"127.0.0.1:7946\"\nsecret_file = {path:?}\n{}",
            with_listener("")
        )
    };
    let mut cases = vec![
        (
            token_file("/dev/null"),
            "admin.token_file: \"/dev/null\" is not a regular file".to_owned(),
        ),
        (
            token_file(&large),
            format!("admin.token_file: {large:?} is larger than 64 KiB"),
        ),
        (
            secret_file("/dev/null"),
            "cluster.secret_file: \"/dev/null\" is not a regular file".to_owned(),
        ),
        (
            secret_file(&large),
            format!("cluster.secret_file: {large:?} is larger than 64 KiB"),
        ),
        (
            secret_file(scratch.0.to_str().unwrap()),
            format!(
                "cluster.secret_file: {:?} is not a regular file",
                scratch.0.to_str().unwrap()
            ),
        ),
    ];
    if made_fifo {
        let fifo = fifo.to_str().unwrap();
        cases.push((
            token_file(fifo),
            format!("admin.token_file: {fifo:?} is not a regular file"),
        ));
        cases.push((
            secret_file(fifo),
            format!("cluster.secret_file: {fifo:?} is not a regular file"),
        ));
    }
    for (text, expected) in cases {
        let found = problems_within_seconds(text, &fifo);
        assert!(
            found.iter().any(|p| p == &expected),
            "expected {expected:?} in {found:?}"
        );
    }
}

/// Bytes of an error message that quotes nothing long.
const BOUNDED: usize = 4096;

#[test]
fn long_values_are_cut_in_problem_messages() {
    let long = "x".repeat(1_000_000);
    let cut = format!("\"{}\"… (1000000 bytes)", "x".repeat(80));
    let cases: Vec<(String, String)> = vec![
        (
            with_listener(&format!("over_limit = \"{long}\"")),
            format!("listener[0].over_limit: {cut} is not an over-limit action"),
        ),
        (
            with_listener(&format!("keepalive_timeout = \"{long}\"")),
            format!("listener[0].keepalive_timeout: {cut} is not a duration"),
        ),
        (
            with_listener(&format!("limit_exempt = [\"{long}\"]")),
            format!("listener[0].limit_exempt[0]: {cut} is not a network"),
        ),
        (
            with_listener("").replace("pool = \"app\"", &format!("pool = \"{long}\"")),
            format!("listener[0].pool: {cut} is not a defined pool; defined: [app]"),
        ),
        (
            with_listener("").replace("name = \"web\"", &format!("name = \"{long}\"")),
            format!("listener[0].name: {cut} is not a valid name"),
        ),
        (
            with_listener("").replace("127.0.0.1:9001", &long),
            format!("pool[0].backends[0]: {cut} is not a backend address"),
        ),
        // serde's own messages quote the value or key whole.
        (
            with_listener(&format!("keepalive_header = \"{long}\"")),
            format!("listener[0]: invalid type: string {cut}, expected a boolean"),
        ),
        (
            with_listener(&format!("{long} = 1")),
            format!(
                "listener[0]: unknown field `{}`… (1000000 bytes), expected one of",
                "x".repeat(80)
            ),
        ),
        (
            format!("[{long}]\n{}", with_listener("")),
            format!("{}… (1000000 bytes): unknown section", "x".repeat(80)),
        ),
        (
            format!(
                "[cluster]\nlisten = \"127.0.0.1:7946\"\nseeds = [\"{long}\"]\n{}",
                with_listener("")
            ),
            format!("cluster.seeds[0]: {cut} is not host:port"),
        ),
        (
            format!("[admin]\nlisten = \"{long}\"\n{}", with_listener("")),
            format!("admin.listen: {cut} is not an address"),
        ),
        (
            format!("[admin]\ntoken_file = \"/{long}\"\n{}", with_listener("")),
            format!(
                "admin.token_file: cannot read \"/{}\"… (1000001 bytes): ",
                "x".repeat(79)
            ),
        ),
    ];
    for (text, expected) in cases {
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(
            error.len() < BOUNDED,
            "{} bytes: {}",
            error.len(),
            &error[..BOUNDED]
        );
        assert!(
            error.contains(&expected),
            "expected {expected:?} in {error}"
        );
    }
}

#[test]
fn a_syntax_error_on_a_huge_line_is_shown_around_the_error() {
    let long = "x".repeat(1_000_000);
    let text = format!("[node]\nid = \"{long}\" junk\n");
    let error = Config::parse(&text).unwrap_err().to_string();
    assert!(error.len() < BOUNDED, "{} bytes", error.len());
    assert!(
        error.starts_with(
            "config is not valid TOML: TOML parse error at line 2, column 1000009 \
             (a line of 1000012 bytes)\n"
        ),
        "{error}"
    );
    assert!(
        error.contains(&format!("\n2 | …{}\" junk\n  | ", "x".repeat(38))),
        "{error}"
    );
    assert!(error.ends_with("\nexpected newline, `#`"), "{error}");
    // The caret stands under the error.
    let excerpt = error.lines().nth(2).unwrap();
    let caret = error.lines().nth(3).unwrap();
    assert_eq!(
        excerpt.chars().position(|c| c == 'j'),
        caret.chars().position(|c| c == '^')
    );
    // A short line keeps toml's own message.
    let error = Config::parse("[node]\nid = \"n1\" junk\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("\n2 | id = \"n1\" junk\n"), "{error}");
}

#[test]
fn a_file_with_countless_problems_gets_a_bounded_answer() {
    let bad: Vec<String> = (0..10_000).map(|i| format!("\"bad{i}\"")).collect();
    let text = with_listener(&format!("limit_exempt = [{}]", bad.join(", ")));
    let error = Config::parse(&text).unwrap_err().to_string();
    assert!(error.starts_with("config has 10000 problem(s):"), "{error}");
    assert!(error.ends_with("\n  … and 9900 more"), "{error}");
    assert!(error.len() < 100 * 200, "{} bytes", error.len());
}

#[test]
fn problems_name_each_entry_by_its_place_in_the_file() {
    let text = r#"
[[listener]]
name = "broken"
bind = "127.0.0.1:8080"
pool = "app"
keepalive_timeout = 5

[[listener]]
name = "web"
bind = "127.0.0.1:8081"
pool = "nope"

[[listener]]
name = "web"
bind = "127.0.0.1:8081"
pool = "app"

[[listener]]
name = "admin"
bind = "127.0.0.1:8083"
pool = "typo"

[[pool]]
name = "typo"
retries = "three"

[[pool]]
name = "app"
backends = ["127.0.0.1:9001"]

[[pool]]
name = "app"
backends = ["127.0.0.1:9002"]
"#;
    let found = problems(text);
    let expected = [
        "listener[0]: invalid type: integer `5`, expected a string",
        "pool[0]: invalid type: string \"three\", expected i64",
        "pool[2].name: \"app\" is used by another pool",
        "listener[1].pool: \"nope\" is not a defined pool; defined: [app, app]",
        "listener[2].name: \"web\" is used by another listener",
        "listener[2].bind: 127.0.0.1:8081 is used by another listener",
    ];
    for expected in expected {
        assert!(
            found.iter().any(|problem| problem.starts_with(expected)),
            "expected {expected:?} in {found:#?}"
        );
    }
    // listener[3] names the pool that did not decode: that pool's problem is reported, not a
    // missing pool.
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn the_config_file_is_read_up_to_a_limit() {
    // An endless stream (a device, a pipe) ends at the limit instead of filling the memory.
    let error = Config::load(std::path::Path::new("/dev/zero")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "config file /dev/zero is larger than 64 MiB"
    );
    let error = Config::load(std::path::Path::new("/nonexistent/hearsay.toml")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot read config file /nonexistent/hearsay.toml: "),
        "{error}"
    );
}

/// A CA, and a server certificate it signed, written to a scratch directory.
struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    fn new(name: &str) -> TlsFiles {
        let dir =
            std::env::temp_dir().join(format!("hearsay-config-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["admin.example".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("admin.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("admin.key"), key.serialize_pem()).unwrap();
        std::fs::write(
            dir.join("other.key"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn admin_tls_files_are_read_and_checked() {
    let files = TlsFiles::new("admin");
    let config = |tls: String, rest: &str| {
        format!(
            "[admin]\nlisten = \"0.0.0.0:9100\"\n{rest}tls = {{ {tls} }}\n{}",
            with_listener("")
        )
    };
    let good = format!(
        "cert = \"{}\", key = \"{}\"",
        files.path("admin.crt"),
        files.path("admin.key")
    );

    // TLS and a token: a non-loopback admin API is fine.
    let parsed = Config::parse(&config(good.clone(), "token = \"0123456789abcdef\"\n")).unwrap();
    let tls = parsed.admin.tls.unwrap();
    assert_eq!(tls.cert, PathBuf::from(files.path("admin.crt")));
    assert_eq!(tls.client_ca, None);

    // TLS without a token nor client certificates: anyone could still reconfigure the node.
    let found = problems(&config(good.clone(), ""));
    assert!(
        found.len() == 1 && found[0].contains("no admin token is set"),
        "{found:?}"
    );
    // Client certificates stand in for the token.
    let mtls = format!("{good}, client_ca = \"{}\"", files.path("ca.pem"));
    let parsed = Config::parse(&config(mtls, "")).unwrap();
    assert_eq!(
        parsed.admin.tls.unwrap().client_ca,
        Some(PathBuf::from(files.path("ca.pem")))
    );

    // Files that cannot serve are named.
    let mismatch = format!(
        "cert = \"{}\", key = \"{}\"",
        files.path("admin.crt"),
        files.path("other.key")
    );
    let found = problems(&config(mismatch, "insecure = true\n"));
    assert_eq!(
        found,
        [format!(
            "admin.tls: {}: the key does not belong to the certificate in {}",
            files.path("other.key"),
            files.path("admin.crt")
        )]
    );
    let bad_ca = format!("{good}, client_ca = \"{}\"", files.path("admin.key"));
    let found = problems(&config(bad_ca, "insecure = true\n"));
    assert_eq!(
        found,
        [format!(
            "admin.tls.client_ca: {}: no certificate found (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
            files.path("admin.key")
        )]
    );
    let half = format!("cert = \"{}\"", files.path("admin.crt"));
    let found = problems(&config(half, "insecure = true\n"));
    assert_eq!(
        found,
        ["admin.tls: needs both cert (PEM certificate chain file) and key (PEM private key file)"]
    );
    let unknown = format!("{good}, ciphers = \"weak\"");
    let found = problems(&config(unknown, "insecure = true\n"));
    assert!(
        found.len() == 1 && found[0].starts_with("admin"),
        "{found:?}"
    );
}

fn with_pool_tls(backends: &str, tls: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [{backends}]\ntls = {{ {tls} }}\n"
    )
}

#[test]
fn pool_tls_settings_are_read_and_their_files_checked() {
    let files = TlsFiles::new("pool");
    // `tls = {}`: system roots, SNI from each backend's host, verification on.
    let parsed = Config::parse(&with_pool_tls("\"api.internal:443\"", "")).unwrap();
    let tls = parsed.pools[0].tls.clone().unwrap();
    assert_eq!(tls.server_name, None);
    assert_eq!(
        tls.client,
        hearsay_tls::ClientSettings {
            ca_file: None,
            verify: true,
            client_certificate: None
        }
    );
    assert!(parsed.warnings().is_empty());
    // Without `tls`: plain TCP.
    assert_eq!(
        Config::parse(&with_listener("")).unwrap().pools[0].tls,
        None
    );

    let full = format!(
        "server_name = \"api.internal\", ca_file = \"{}\", cert = \"{}\", key = \"{}\"",
        files.path("ca.pem"),
        files.path("admin.crt"),
        files.path("admin.key")
    );
    let parsed = Config::parse(&with_pool_tls("\"10.0.0.1:443\"", &full)).unwrap();
    let tls = parsed.pools[0].tls.clone().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
    assert_eq!(
        tls.client.ca_file,
        Some(PathBuf::from(files.path("ca.pem")))
    );
    assert_eq!(
        tls.client.client_certificate,
        Some(hearsay_tls::CertificateFiles {
            cert: PathBuf::from(files.path("admin.crt")),
            key: PathBuf::from(files.path("admin.key")),
        })
    );

    // Files that cannot be used are named, under the key that names them.
    let bad = format!(
        "ca_file = \"{}\", cert = \"{}\", key = \"{}\"",
        files.path("missing.pem"),
        files.path("admin.crt"),
        files.path("other.key")
    );
    let found = problems(&with_pool_tls("\"api.internal:443\"", &bad));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with(&format!(
            "pool[0].tls.ca_file: cannot read {}",
            files.path("missing.pem")
        )),
        "{found:?}"
    );
    assert_eq!(
        found[1],
        format!(
            "pool[0].tls.cert: {}: the key does not belong to the certificate in {}",
            files.path("other.key"),
            files.path("admin.crt")
        )
    );
    let half = format!("cert = \"{}\"", files.path("admin.crt"));
    let found = problems(&with_pool_tls("\"api.internal:443\"", &half));
    assert_eq!(found, ["pool[0].tls: a client certificate needs both cert (PEM certificate chain file) and key (PEM private key file)"]);
    let found = problems(&with_pool_tls(
        "\"api.internal:443\"",
        "server_name = \"not a name\"",
    ));
    assert_eq!(
        found,
        ["pool[0].tls.server_name: \"not a name\" is neither a DNS name nor an IP address"]
    );
    let found = problems(&with_pool_tls("\"api.internal:443\"", "verify = \"no\""));
    assert!(
        found.len() == 1 && found[0].starts_with("pool[0]"),
        "{found:?}"
    );
    let contradiction = format!("verify = false, ca_file = \"{}\"", files.path("ca.pem"));
    let found = problems(&with_pool_tls("\"api.internal:443\"", &contradiction));
    assert_eq!(
        found,
        ["pool[0].tls.ca_file: has no effect with verify = false; remove one of them"]
    );
}

#[test]
fn a_pool_that_does_not_verify_its_backends_is_warned_about() {
    let parsed = Config::parse(&with_pool_tls("\"127.0.0.1:8443\"", "verify = false")).unwrap();
    assert!(!parsed.pools[0].tls.as_ref().unwrap().client.verify);
    let warnings = parsed.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .starts_with("pool app: tls.verify = false: backend certificates are NOT checked"),
        "{warnings:?}"
    );
}

#[test]
fn metrics_are_off_unless_an_address_is_set() {
    let config = Config::parse(&with_listener("")).unwrap();
    assert_eq!(config.telemetry.metrics_listen, None);
    let on = format!(
        "[telemetry]\nmetrics_listen = \"127.0.0.1:9464\"\n{}",
        with_listener("")
    );
    assert_eq!(
        Config::parse(&on).unwrap().telemetry.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
}

#[test]
fn bad_metrics_addresses_are_reported() {
    let bad = format!(
        "[telemetry]\nmetrics_listen = \"localhost\"\n{}",
        with_listener("")
    );
    assert_eq!(
        problems(&bad),
        [
            "telemetry.metrics_listen: \"localhost\" is not an address; write it as IP:port, e.g. \
          \"127.0.0.1:9090\" (leave it out to serve no metrics)"
        ]
    );
    let unknown = format!(
        "[telemetry]\nmetrics = \"127.0.0.1:1\"\n{}",
        with_listener("")
    );
    assert!(problems(&unknown)
        .iter()
        .any(|p| p.starts_with("telemetry: unknown field `metrics`")));
    // The admin API's port, and a listener's port on the wildcard address.
    let clash = format!(
        "[admin]\nlisten = \"127.0.0.1:9100\"\n[telemetry]\nmetrics_listen = \"0.0.0.0:9100\"\n{}",
        with_listener("")
    );
    assert_eq!(
        problems(&clash),
        [
            "telemetry.metrics_listen: 0.0.0.0:9100 is the admin API's address (admin.listen = \
          127.0.0.1:9100); pick another port"
        ]
    );
    let listener = format!(
        "[telemetry]\nmetrics_listen = \"127.0.0.1:8080\"\n{}",
        with_listener("")
    );
    assert_eq!(
        problems(&listener),
        ["telemetry.metrics_listen: 127.0.0.1:8080 is listener[0]'s address (listener[0].bind = \
          127.0.0.1:8080); pick another port"]
    );
}

#[test]
fn telemetry_defaults_and_settings() {
    let config = Config::parse(&with_listener("")).unwrap();
    let telemetry = &config.telemetry;
    assert_eq!(telemetry.otlp_endpoint, None);
    assert_eq!(telemetry.sample_ratio, 0.01);
    assert_eq!(telemetry.service_name, "hearsay");
    assert!(!telemetry.otlp_metrics);
    assert_eq!(telemetry.log_format, crate::LogFormat::Text);
    assert_eq!(telemetry.access_log, None);
    let on = format!(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317/\"\nsample_ratio = 1.0\n\
         service_name = \"edge\"\notlp_metrics = true\notlp_metrics_interval = \"5s\"\n\
         log_format = \"json\"\naccess_log = \"/var/log/hearsay/access.log\"\n{}",
        with_listener("")
    );
    let telemetry = Config::parse(&on).unwrap().telemetry;
    assert_eq!(
        telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(telemetry.sample_ratio, 1.0);
    assert_eq!(telemetry.service_name, "edge");
    assert!(telemetry.otlp_metrics);
    assert_eq!(telemetry.otlp_metrics_interval, Duration::from_secs(5));
    assert_eq!(telemetry.log_format, crate::LogFormat::Json);
    assert_eq!(
        telemetry.access_log,
        Some(crate::AccessLog::File("/var/log/hearsay/access.log".into()))
    );
    let stderr = format!(
        "[telemetry]\naccess_log = \"stderr\"\n{}",
        with_listener("")
    );
    assert_eq!(
        Config::parse(&stderr).unwrap().telemetry.access_log,
        Some(crate::AccessLog::Stderr)
    );
}

#[test]
fn bad_telemetry_settings_are_reported() {
    let bad = format!(
        "[telemetry]\notlp_endpoint = \"127.0.0.1:4317\"\nsample_ratio = 1.5\n\
         service_name = \" \"\nlog_format = \"xml\"\naccess_log = \"\"\n{}",
        with_listener("")
    );
    assert_eq!(
        problems(&bad),
        [
            "telemetry.otlp_endpoint: \"127.0.0.1:4317\" is not an OTLP/gRPC endpoint; write it \
             as http://HOST:PORT, e.g. \"http://127.0.0.1:4317\" (https:// for TLS)",
            "telemetry.sample_ratio: 1.5 is not a share of traces; write a number from 0.0 (none) \
             to 1.0 (all)",
            "telemetry.service_name: \" \" must be 1 to 255 characters",
            "telemetry.log_format: \"xml\" is not a log format; write \"text\" or \"json\"",
            "telemetry.access_log: is empty; write \"stderr\" or the path of a file (leave it out \
             for no access log)",
        ]
    );
    let path = format!(
        "[telemetry]\notlp_endpoint = \"http://collector:4317/v1/traces\"\n{}",
        with_listener("")
    );
    assert_eq!(problems(&path).len(), 1, "{:?}", problems(&path));
}

#[test]
fn listener_tls_files_are_read_and_checked() {
    let files = TlsFiles::new("listener");
    let good = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        files.path("admin.crt"),
        files.path("admin.key")
    );
    let config = |tls: &str| with_listener(&format!("tls = {{ {tls} }}"));

    let parsed = Config::parse(&config(&format!("certificates = [{good}]"))).unwrap();
    let tls = parsed.listeners[0].tls.clone().unwrap();
    assert_eq!(tls.certificates.len(), 1);
    assert_eq!(
        tls.certificates[0].cert,
        PathBuf::from(files.path("admin.crt"))
    );
    assert!(!tls.sni_strict);
    assert_eq!(tls.min_version, hearsay_tls::MinVersion::Tls12);
    let parsed = Config::parse(&config(&format!(
        "certificates = [{good}, {good}], sni_strict = true, min_version = \"1.3\""
    )))
    .unwrap();
    let tls = parsed.listeners[0].tls.clone().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert!(tls.sni_strict);
    assert_eq!(tls.min_version, hearsay_tls::MinVersion::Tls13);
    // A listener without `tls` stays plain HTTP.
    assert_eq!(
        Config::parse(&with_listener("")).unwrap().listeners[0].tls,
        None
    );

    // Every bad certificate is reported with its place and its file.
    let mismatch = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        files.path("admin.crt"),
        files.path("other.key")
    );
    let missing = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        files.path("missing.crt"),
        files.path("admin.key")
    );
    let found = problems(&config(&format!(
        "certificates = [{good}, {mismatch}, {missing}]"
    )));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[0],
        format!(
            "listener[0].tls.certificates[1]: {}: the key does not belong to the certificate in {}",
            files.path("other.key"),
            files.path("admin.crt")
        )
    );
    assert!(
        found[1].starts_with(&format!(
            "listener[0].tls.certificates[2]: cannot read {}: ",
            files.path("missing.crt")
        )),
        "{found:?}"
    );
    let found = problems(&config(&format!(
        "certificates = [{good}], min_version = \"1.1\""
    )));
    assert_eq!(
        found,
        ["listener[0].tls.min_version: \"1.1\" is not a TLS version hearsay accepts as the minimum; allowed: \"1.2\" or \"1.3\""]
    );
    let found = problems(&config("certificates = []"));
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("listener[0].tls.certificates: needs at least one certificate"),
        "{found:?}"
    );
    let found = problems(&config(&format!(
        "certificates = [{{ cert = \"{}\" }}]",
        files.path("admin.crt")
    )));
    assert_eq!(
        found,
        ["listener[0].tls.certificates[0]: needs both cert (PEM certificate chain file) and key (PEM private key file)"]
    );
    let found = problems(&config(&format!(
        "certificates = [{good}], ciphers = \"weak\""
    )));
    assert!(
        found.len() == 1 && found[0].starts_with("listener[0]"),
        "{found:?}"
    );
}
