use super::*;

fn stamp(millis: u64, node: &str) -> Stamp {
    Stamp {
        millis,
        counter: 0,
        node: node.into(),
    }
}

fn listener_write(field: ListenerField, value: u64) -> Write {
    Write::Listener {
        name: "web".into(),
        field,
        value,
    }
}

fn backend_write(kind: &str) -> Write {
    let (pool, address) = ("app".to_owned(), "10.0.0.1:80".to_owned());
    match kind {
        "add" => Write::Member {
            pool,
            address,
            member: true,
        },
        "remove" => Write::Member {
            pool,
            address,
            member: false,
        },
        "drain" => Write::State {
            pool,
            address,
            state: BackendStateValue::Draining,
        },
        "weight" => Write::Weight {
            pool,
            address,
            weight: 7,
        },
        _ => unreachable!(),
    }
}

/// `writes` stamped at their millis by their node, merged in the given order into one entry.
fn merged(writes: &[(u64, &str, Write)]) -> Entry {
    let mut entry: Option<Entry> = None;
    for (millis, node, write) in writes {
        let one = write.to_entry(&stamp(*millis, node), &Origin::admin(None));
        match &mut entry {
            None => entry = Some(one),
            Some(entry) => {
                entry.merge(&one);
            }
        }
    }
    entry.unwrap()
}

fn value_of(entry: &Entry, field: ListenerField) -> Option<u64> {
    match entry {
        Entry::Listener(fields) => fields.get(&field).map(|field| field.value),
        _ => None,
    }
}

/// The partition of issue 11: one side writes `header_timeout`, the other `keepalive_timeout`
/// (and both `body_timeout`). Whatever the order of the writes and of the merges, every node
/// ends with both different-field writes and the later same-field write.
#[test]
fn writes_to_different_fields_both_survive_a_merge_in_either_order() {
    use ListenerField::*;
    for minority_first in [true, false] {
        let (minority_at, majority_at) = if minority_first {
            (1000, 2000)
        } else {
            (2000, 1000)
        };
        let minority = merged(&[
            (minority_at, "n1", listener_write(HeaderTimeout, 5_000)),
            (minority_at + 1, "n1", listener_write(BodyTimeout, 11_000)),
        ]);
        let majority = merged(&[
            (majority_at, "n2", listener_write(KeepaliveTimeout, 20_000)),
            (majority_at + 1, "n3", listener_write(BodyTimeout, 22_000)),
        ]);
        let later_body = if minority_first { 22_000 } else { 11_000 };
        for (mut mine, theirs) in [(minority.clone(), &majority), (majority.clone(), &minority)] {
            assert!(mine.merge(theirs));
            assert_eq!(value_of(&mine, HeaderTimeout), Some(5_000));
            assert_eq!(value_of(&mine, KeepaliveTimeout), Some(20_000));
            assert_eq!(value_of(&mine, BodyTimeout), Some(later_body));
            assert_eq!(value_of(&mine, MaxConnectionAge), None, "never written");
            // Merging again (gossip repeats) changes nothing.
            assert!(!mine.merge(theirs));
            assert!(!mine.merge(&minority) && !mine.merge(&majority));
        }
        let mut one_way = minority.clone();
        one_way.merge(&majority);
        let mut other_way = majority.clone();
        other_way.merge(&minority);
        assert_eq!(one_way, other_way, "every node ends with the same entry");
        assert_eq!(one_way.to_json(), other_way.to_json());
        assert_eq!(one_way.version(), other_way.version());
        assert!(one_way.version() > minority.version().max(majority.version()));
    }
}

#[test]
fn the_same_field_resolves_to_the_later_stamp_and_ties_to_the_node_id() {
    use ListenerField::KeepaliveTimeout;
    let early = merged(&[(1000, "n9", listener_write(KeepaliveTimeout, 1_000))]);
    let late = merged(&[(2000, "n1", listener_write(KeepaliveTimeout, 2_000))]);
    for (mut mine, theirs, changes) in [(early.clone(), &late, true), (late.clone(), &early, false)]
    {
        assert_eq!(mine.merge(theirs), changes);
        assert_eq!(value_of(&mine, KeepaliveTimeout), Some(2_000));
    }
    let a = merged(&[(1000, "a", listener_write(KeepaliveTimeout, 1))]);
    let b = merged(&[(1000, "b", listener_write(KeepaliveTimeout, 2))]);
    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(value_of(&ab, KeepaliveTimeout), Some(2));
    assert_eq!(ab, ba);
}

/// Membership is a field: an add on one side and a weight or state change on the other both
/// survive; a removal is a tombstone that only a later add overrides.
#[test]
fn backend_membership_state_and_weight_merge_per_field() {
    let file = FileBackend {
        state: BackendStateValue::Enabled,
        weight: 1,
    };
    // A file backend: drained on one side, its weight changed on the other.
    for order in [[0, 1], [1, 0]] {
        let sides = [
            merged(&[(1000, "n1", backend_write("drain"))]),
            merged(&[(2000, "n2", backend_write("weight"))]),
        ];
        let mut entry = sides[order[0]].clone();
        entry.merge(&sides[order[1]]);
        let Entry::Backend(backend) = &entry else {
            unreachable!()
        };
        assert_eq!(
            backend_target(Some(&file), Some(backend)),
            Some((BackendStateValue::Draining, 7))
        );
    }
    // Added on one side (not in this node's file), drained on the other.
    let mut added = merged(&[(1000, "n1", backend_write("add"))]);
    added.merge(&merged(&[(2000, "n2", backend_write("drain"))]));
    let Entry::Backend(backend) = &added else {
        unreachable!()
    };
    assert_eq!(
        backend_target(None, Some(backend)),
        Some((BackendStateValue::Draining, 1))
    );
    // Removed after the drain: the tombstone wins over the older state, in either order.
    let removal = merged(&[(3000, "n3", backend_write("remove"))]);
    for (mut mine, theirs) in [(added.clone(), &removal), (removal.clone(), &added)] {
        mine.merge(theirs);
        let Entry::Backend(backend) = &mine else {
            unreachable!()
        };
        assert_eq!(backend_target(Some(&file), Some(backend)), None);
        assert_eq!(backend_target(None, Some(backend)), None);
    }
    // A state change later than the removal does not bring the backend back; an add does.
    let mut removed = removal.clone();
    removed.merge(&merged(&[(4000, "n1", backend_write("drain"))]));
    let Entry::Backend(backend) = &removed else {
        unreachable!()
    };
    assert_eq!(backend_target(Some(&file), Some(backend)), None);
    removed.merge(&merged(&[(5000, "n2", backend_write("add"))]));
    let Entry::Backend(backend) = &removed else {
        unreachable!()
    };
    assert_eq!(
        backend_target(Some(&file), Some(backend)),
        Some((BackendStateValue::Draining, 1))
    );
    // Without any entry, the file decides.
    assert_eq!(
        backend_target(Some(&file), None),
        Some((BackendStateValue::Enabled, 1))
    );
    assert_eq!(backend_target(None, None), None);
}

#[test]
fn unwritten_fields_keep_the_file_value() {
    let mut entry = ListenerEntry::new();
    entry.insert(
        ListenerField::KeepaliveTimeout,
        Field::new(20_000, &stamp(1000, "n1"), &Origin::admin(None)),
    );
    let file = BTreeMap::from([
        (ListenerField::KeepaliveTimeout, 10_000),
        (ListenerField::HeaderTimeout, 3_000),
    ]);
    let settings = listener_settings(&ListenerSettings::default(), Some(&file), Some(&entry));
    assert_eq!(settings.keepalive_timeout, Duration::from_secs(20));
    assert_eq!(settings.header_timeout, Duration::from_secs(3));
    assert_eq!(
        settings.body_timeout,
        ListenerSettings::default().body_timeout
    );
}

#[test]
fn peer_values_are_parsed_strictly() {
    let entry = merged(&[(1000, "n1", listener_write(ListenerField::HeaderTimeout, 5))]);
    let text = entry.to_json();
    assert_eq!(Entry::parse("set:l:web", &text, 1000), Ok(entry.clone()));
    assert!(Entry::parse("set:b:app/1.2.3.4:80", &text, 1000)
        .unwrap_err()
        .contains("does not match"));
    assert!(Entry::parse("set:l:web", "{", 1000).is_err());
    assert!(Entry::parse("set:l:web", "{\"listener\":{}}", 1000)
        .unwrap_err()
        .contains("no field"));
    assert!(Entry::parse(
        "set:l:web",
        &text.replace("\"stamp\"", "\"x\":1,\"stamp\""),
        1000
    )
    .is_err());
    assert!(Entry::parse(
        "set:l:web",
        &text.replace("header_timeout", "tls_cert"),
        1000
    )
    .is_err());
    assert!(Entry::parse("set:l:web", &" ".repeat(5000), 1000)
        .unwrap_err()
        .contains("too long"));
    let future = merged(&[(
        u64::MAX / 2,
        "n1",
        listener_write(ListenerField::HeaderTimeout, 5),
    )]);
    assert!(Entry::parse("set:l:web", &future.to_json(), 1000)
        .unwrap_err()
        .contains("implausible"));
    // One field out of range refuses the whole value.
    let mut out_of_range = entry.clone();
    out_of_range.merge(&merged(&[(
        1001,
        "n2",
        listener_write(ListenerField::KeepaliveTimeout, 5_000_000),
    )]));
    assert!(Entry::parse("set:l:web", &out_of_range.to_json(), 2000)
        .unwrap_err()
        .contains("keepalive_timeout"));
    let heavy = Entry::Backend(BackendEntry {
        weight: Some(Field::new(0, &stamp(1000, "n1"), &Origin::admin(None))),
        ..BackendEntry::default()
    });
    assert!(Entry::parse("set:b:app/a:1", &heavy.to_json(), 1000)
        .unwrap_err()
        .contains("weight"));
    let long_peer = Entry::Backend(BackendEntry {
        state: Some(Field::new(
            BackendStateValue::Draining,
            &stamp(1000, "n1"),
            &Origin::admin(Some("x".repeat(65))),
        )),
        ..BackendEntry::default()
    });
    let mut long_peer_json = long_peer.to_json();
    assert_eq!(
        long_peer_json.matches('x').count(),
        MAX_PEER_LEN,
        "cut when written"
    );
    long_peer_json = long_peer_json.replace('x', "xx");
    assert!(Entry::parse("set:b:app/a:1", &long_peer_json, 1000)
        .unwrap_err()
        .contains("peer"));
}

/// The largest entry a node can write still fits what its peers accept.
#[test]
fn the_largest_entry_fits_the_value_limit() {
    let node = "n".repeat(128);
    let peer = Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%eth0]:65535".to_owned());
    let big = Stamp {
        millis: (1 << 46) - 1,
        counter: 0xFFFF,
        node,
    };
    let entry = Entry::Listener(
        ListenerField::ALL
            .into_iter()
            .map(|field| {
                (
                    field,
                    Field::new(u64::MAX, &big, &Origin::reset(peer.clone())),
                )
            })
            .collect(),
    );
    let length = entry.to_json().len();
    assert!(length < MAX_VALUE_LEN / 2 + 512, "{length} bytes");
}

#[test]
fn entries_of_older_versions_are_converted() {
    let listener = r#"{"stamp":{"millis":1000,"counter":2,"node":"n1"},"value":{"listener":{"keepalive_timeout_ms":20000,"header_timeout_ms":60000,"body_timeout_ms":60000,"max_requests_per_connection":0,"max_connection_age_ms":0,"max_connections_per_client":0}}}"#;
    let entry = Entry::parse("set:l:web", listener, 1000).unwrap();
    let Entry::Listener(fields) = &entry else {
        panic!("{entry:?}")
    };
    assert_eq!(fields.len(), 6);
    assert_eq!(fields[&ListenerField::KeepaliveTimeout].value, 20_000);
    assert!(fields.values().all(|field| field.stamp.counter == 2));
    let removed = r#"{"stamp":{"millis":1000,"counter":0,"node":"n1"},"value":{"backend":{"state":"removed","weight":1}}}"#;
    let Entry::Backend(backend) = Entry::parse("set:b:app/a:1", removed, 1000).unwrap() else {
        unreachable!()
    };
    assert_eq!(backend_target(None, Some(&backend)), None);
    assert!(Entry::parse("set:b:app/a:1", listener, 1000).is_err());
}

#[test]
fn the_file_changes_since_the_baseline_become_writes() {
    let backend = |state, weight| FileBackend { state, weight };
    let baseline = FileValues {
        listeners: BTreeMap::from([(
            "web".to_owned(),
            BTreeMap::from([
                (ListenerField::KeepaliveTimeout, 20_000),
                (ListenerField::HeaderTimeout, 60_000),
            ]),
        )]),
        pools: BTreeMap::from([(
            "app".to_owned(),
            BTreeMap::from([
                ("a:1".to_owned(), backend(BackendStateValue::Enabled, 1)),
                ("b:1".to_owned(), backend(BackendStateValue::Enabled, 1)),
            ]),
        )]),
        sample_ratio: None,
    };
    assert!(baseline.changes_since(&baseline).is_empty());
    let mut edited = baseline.clone();
    edited
        .listeners
        .get_mut("web")
        .unwrap()
        .insert(ListenerField::KeepaliveTimeout, 10_000);
    let pool = edited.pools.get_mut("app").unwrap();
    pool.insert("a:1".to_owned(), backend(BackendStateValue::Enabled, 5));
    pool.remove("b:1");
    pool.insert("c:1".to_owned(), backend(BackendStateValue::Draining, 1));
    let member = |address: &str, member| Write::Member {
        pool: "app".into(),
        address: address.into(),
        member,
    };
    assert_eq!(
        edited.changes_since(&baseline),
        [
            listener_write(ListenerField::KeepaliveTimeout, 10_000),
            Write::Weight {
                pool: "app".into(),
                address: "a:1".into(),
                weight: 5
            },
            member("c:1", true),
            Write::State {
                pool: "app".into(),
                address: "c:1".into(),
                state: BackendStateValue::Draining
            },
            Write::Weight {
                pool: "app".into(),
                address: "c:1".into(),
                weight: 1
            },
            member("b:1", false),
        ]
    );
}

/// Issue 11 §5, the rule: a value changed in the file since the node last read it outranks an
/// earlier admin write; a value the file did not change keeps the admin write; without a baseline
/// nothing is written.
#[test]
fn a_file_edit_outranks_earlier_writes_and_an_unchanged_file_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("hearsay-store-file-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut store, _) = Store::load(&dir).unwrap();
    let file = |keepalive: u64| FileValues {
        listeners: BTreeMap::from([(
            "web".to_owned(),
            BTreeMap::from([
                (ListenerField::KeepaliveTimeout, keepalive),
                (ListenerField::HeaderTimeout, 60_000),
            ]),
        )]),
        pools: BTreeMap::new(),
        sample_ratio: None,
    };
    assert_eq!(store.read_file(&file(60_000), 1000, "n1"), None);
    assert!(store.entries.is_empty(), "a first start writes nothing");
    // An admin change on another node, adopted here.
    store.offer(
        "set:l:web",
        &merged(&[
            (
                5000,
                "n2",
                listener_write(ListenerField::KeepaliveTimeout, 20_000),
            ),
            (
                5000,
                "n2",
                listener_write(ListenerField::HeaderTimeout, 7_000),
            ),
        ]),
    );
    // Restart with an unchanged file: nothing written, the admin values stand.
    assert_eq!(store.read_file(&file(60_000), 6000, "n1"), Some(Vec::new()));
    // Restart with keepalive edited in the file (the node's clock even behind the admin write's).
    let writes = store.read_file(&file(10_000), 4000, "n1").unwrap();
    assert_eq!(
        writes,
        [listener_write(ListenerField::KeepaliveTimeout, 10_000)]
    );
    let entry = &store.entries["set:l:web"];
    assert_eq!(
        value_of(entry, ListenerField::KeepaliveTimeout),
        Some(10_000)
    );
    assert_eq!(value_of(entry, ListenerField::HeaderTimeout), Some(7_000));
    let Entry::Listener(fields) = entry else {
        unreachable!()
    };
    assert_eq!(
        fields[&ListenerField::KeepaliveTimeout].source,
        Source::File
    );
    // Other nodes take the edit over their older admin write.
    let mut elsewhere = merged(&[(
        5000,
        "n2",
        listener_write(ListenerField::KeepaliveTimeout, 20_000),
    )]);
    assert!(elsewhere.merge(entry));
    assert_eq!(
        value_of(&elsewhere, ListenerField::KeepaliveTimeout),
        Some(10_000)
    );
    // A wiped data directory: no baseline, nothing written.
    let (mut wiped, _) = Store::load(&dir.join("wiped")).unwrap();
    assert_eq!(wiped.read_file(&file(10_000), 9000, "n1"), None);
    assert!(wiped.entries.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_store_merges_persists_and_reloads() {
    let dir = std::env::temp_dir().join(format!("hearsay-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut store, loaded) = Store::load(&dir).unwrap();
    assert_eq!(loaded, Loaded::Absent);
    let keys = store.write(
        &[backend_write("add"), backend_write("weight")],
        2000,
        "n1",
        &Origin::admin(Some("127.0.0.1:5000".into())),
    );
    assert_eq!(keys, ["set:b:app/10.0.0.1:80"]);
    let older = merged(&[(1000, "n9", backend_write("remove"))]);
    assert!(!store.offer("set:b:app/10.0.0.1:80", &older));
    store.baseline = Some(FileValues::default());
    store.persist().unwrap();
    let (reloaded, loaded) = Store::load(&dir).unwrap();
    assert_eq!(loaded, Loaded::Current);
    assert_eq!(reloaded.entries, store.entries);
    assert_eq!(reloaded.baseline, store.baseline);
    let mut clock = reloaded.clock;
    assert!(clock.stamp(0, "n2") > stamp(2000, "n1"));
    std::fs::write(dir.join(STATE_FILE), "not json").unwrap();
    assert!(Store::load(&dir)
        .unwrap_err()
        .contains("not a valid hearsay state file"));
    std::fs::write(dir.join(STATE_FILE), "{\"format\":9,\"entries\":{}}").unwrap();
    assert!(Store::load(&dir).unwrap_err().contains("format 9"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_file_of_an_older_version_is_converted() {
    let dir = std::env::temp_dir().join(format!("hearsay-store-old-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(STATE_FILE),
        r#"{"entries":{"set:b:app/a:1":{"stamp":{"millis":5000,"counter":0,"node":"n2"},"value":{"backend":{"state":"draining","weight":3}}}}}"#,
    )
    .unwrap();
    let (store, loaded) = Store::load(&dir).unwrap();
    assert_eq!(loaded, Loaded::Converted);
    assert_eq!(store.baseline, None);
    let Some(Entry::Backend(backend)) = store.entries.get("set:b:app/a:1") else {
        panic!("{:?}", store.entries)
    };
    assert_eq!(
        backend_target(None, Some(backend)),
        Some((BackendStateValue::Draining, 3))
    );
    let mut clock = store.clock;
    assert!(clock.stamp(0, "n1") > stamp(5000, "n2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_values_are_refused_without_panicking() {
    let mut valid = merged(&[
        (1000, "n1", listener_write(ListenerField::HeaderTimeout, 5)),
        (
            1001,
            "n2",
            listener_write(ListenerField::MaxConnectionsPerClient, 9),
        ),
    ]);
    valid.merge(&merged(&[(
        1002,
        "n1",
        listener_write(ListenerField::KeepaliveTimeout, 0),
    )]));
    let texts = [
        valid.to_json(),
        merged(&[(1000, "n1", backend_write("drain"))]).to_json(),
    ];
    let mut next = crate::test_rng(0x2545_F491_4F6C_DD1D);
    for round in 0..20_000 {
        let mut bytes = texts[round % 2].clone().into_bytes();
        for _ in 0..=(next() % 3) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        if round % 3 == 0 {
            bytes.truncate((next() as usize) % bytes.len());
        }
        let text = String::from_utf8_lossy(&bytes);
        for key in ["set:l:web", "set:b:app/a:1"] {
            if let Ok(entry) = Entry::parse(key, &text, 1000) {
                // Whatever parses merges and applies its values without panicking.
                let mut copy = valid.clone();
                copy.merge(&entry);
                if let Entry::Listener(fields) = &entry {
                    let _ = listener_settings(&ListenerSettings::default(), None, Some(fields));
                }
            }
        }
    }
    for text in [
        "",
        "null",
        "[]",
        "{\"stamp\":1}",
        "{\"stamp\":{\"millis\":-1}}",
        "{\"listener\":null}",
        "{\"backend\":{}}",
    ] {
        assert!(Entry::parse("set:l:web", text, 1000).is_err(), "{text}");
        assert!(Entry::parse("set:b:app/a:1", text, 1000).is_err(), "{text}");
    }
}

#[test]
fn a_file_edit_rolled_out_node_by_node_is_written_once_and_does_not_undo_later_changes() {
    use ListenerField::KeepaliveTimeout;
    let dir = std::env::temp_dir().join(format!("hearsay-store-rollout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut store, _) = Store::load(&dir).unwrap();
    let file = |keepalive: u64| FileValues {
        listeners: BTreeMap::from([(
            "web".to_owned(),
            BTreeMap::from([(KeepaliveTimeout, keepalive)]),
        )]),
        pools: BTreeMap::new(),
        sample_ratio: None,
    };
    // This node (n2) read its file (75 s) at 1000.
    assert_eq!(store.read_file(&file(75_000), 1000, "n2"), None);
    // n1 restarted with the file edited to 10 s (a file write), then an operator set 20 s.
    let edit =
        listener_write(KeepaliveTimeout, 10_000).to_entry(&stamp(2000, "n1"), &Origin::file());
    store.offer("set:l:web", &edit);
    store.offer(
        "set:l:web",
        &merged(&[(3000, "n3", listener_write(KeepaliveTimeout, 20_000))]),
    );
    // n2 restarts with the same edited file: the cluster has that edit already; nothing is
    // written and the operator's 20 s stands.
    assert_eq!(store.read_file(&file(10_000), 4000, "n2"), Some(Vec::new()));
    assert_eq!(
        value_of(&store.entries["set:l:web"], KeepaliveTimeout),
        Some(20_000)
    );
    // The record survives a restart of the store.
    store.persist().unwrap();
    let (mut reloaded, _) = Store::load(&dir).unwrap();
    assert_eq!(reloaded.file_edits, store.file_edits);
    // A later edit of this node's own file is written as usual...
    let writes = reloaded.read_file(&file(30_000), 5000, "n2").unwrap();
    assert_eq!(writes, [listener_write(KeepaliveTimeout, 30_000)]);
    // ...and so is an edit back to a value an older file write had, once this node has read its
    // file after that write (the operator means it again).
    reloaded.offer(
        "set:l:web",
        &merged(&[(6000, "n3", listener_write(KeepaliveTimeout, 20_000))]),
    );
    let writes = reloaded.read_file(&file(10_000), 7000, "n2").unwrap();
    assert_eq!(writes, [listener_write(KeepaliveTimeout, 10_000)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_sample_ratio_is_an_entry_of_its_own_merged_parsed_strictly_and_applied() {
    let write = |ratio| Write::SampleRatio(Ratio::checked(ratio).unwrap());
    let entry = merged(&[(2000, "n2", write(0.5)), (1000, "n1", write(0.25))]);
    let text = entry.to_json();
    assert_eq!(
        text,
        r#"{"telemetry":{"sample_ratio":{"value":0.5,"stamp":{"millis":2000,"counter":0,"node":"n2"},"source":"admin"}}}"#,
        "the wire format"
    );
    assert_eq!(
        Entry::parse(crate::keys::TELEMETRY_KEY, &text, 2000),
        Ok(entry.clone())
    );
    assert!(Entry::parse("set:l:web", &text, 2000)
        .unwrap_err()
        .contains("does not match"));
    for bad in ["1.5", "-0.1", "1e308", "\"0.5\"", "null"] {
        let text = text.replace("0.5", bad);
        assert!(
            Entry::parse(crate::keys::TELEMETRY_KEY, &text, 2000).is_err(),
            "{bad}"
        );
    }
    assert!(Entry::parse(crate::keys::TELEMETRY_KEY, r#"{"telemetry":{}}"#, 2000).is_err());
    assert!(Ratio::checked(f64::NAN).is_err());
    assert!(Ratio::checked(1.01).unwrap_err().contains("0.0 to 1.0"));
    assert!(Ratio::checked(0.0).is_ok() && Ratio::checked(1.0).is_ok());

    // The file's value stands until a write; the write wins over it.
    let file = FileValues {
        sample_ratio: Some(Ratio(0.01)),
        ..FileValues::default()
    };
    assert_eq!(telemetry_target(&file, None), Ratio(0.01));
    let Entry::Telemetry(telemetry) = &entry else {
        unreachable!()
    };
    assert_eq!(telemetry_target(&file, Some(telemetry)), Ratio(0.5));
}

#[test]
fn a_changed_sample_ratio_in_the_file_is_a_write_unless_the_baseline_predates_it() {
    let file = |ratio: Option<f64>| FileValues {
        sample_ratio: ratio.map(Ratio),
        ..FileValues::default()
    };
    assert_eq!(
        file(Some(0.2)).changes_since(&file(Some(0.01))),
        [Write::SampleRatio(Ratio(0.2))]
    );
    assert!(file(Some(0.2)).changes_since(&file(Some(0.2))).is_empty());
    // A baseline written before the ratio was replicated: not known to have changed.
    assert!(file(Some(0.2)).changes_since(&file(None)).is_empty());
    // And such a baseline still reads.
    let old: FileValues = serde_json::from_str(r#"{"listeners":{},"pools":{}}"#).unwrap();
    assert_eq!(old, file(None));
}
