//! Header rewriting between client and backend: hop-by-hop headers stay on their hop, and the
//! backend learns who the client was through `X-Forwarded-*`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use crate::error::{
    ForwardError, INVALID_HOST, MISSING_HOST, MULTIPLE_HOST, SEVERAL_TRANSFER_ENCODINGS,
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Headers that describe one hop only (RFC 9110 §7.6.1), removed in both directions.
const HOP_BY_HOP: [&HeaderName; 6] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Removes hop-by-hop headers: the fixed list, every `Proxy-*` header, and every header the
/// `Connection` header names. Returns whether anything was removed.
///
/// Most messages carry none or only `Connection`, so one pass over the names (cheap comparisons,
/// no hashing) notes which are there; only those are removed (a removal hashes).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let mut present = 0u8;
    let mut proxy = false;
    for name in headers.keys() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present |= 1 << index;
        } else if name.as_str().starts_with("proxy-") {
            proxy = true;
        }
    }
    if present == 0 && !proxy {
        return false;
    }
    // The names `Connection` lists (index 0 of HOP_BY_HOP); its usual tokens are not header
    // names to look up.
    let mut named: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("close")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(*name);
        }
    }
    if proxy {
        let proxy_headers: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
    true
}

/// Checks a client's request head as RFC 9112 asks of a server before any of it reaches a
/// backend, as HAProxy and NGINX do: one `Host` (required in HTTP/1.1, a valid authority), a
/// `Transfer-Encoding` that is exactly `chunked` (hyper already refuses one whose last coding is
/// not chunked, and HTTP/1.0 with any); no CONNECT (405, as NGINX: this is no forward proxy).
/// The target of an absolute-form request
/// (`GET http://a.example/x`) wins over its `Host` header (§3.2.2): it becomes the `Host`.
pub(crate) fn check_request(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &mut HeaderMap,
) -> Result<(), ForwardError> {
    if *method == Method::CONNECT {
        return Err(ForwardError::MethodNotAllowed {
            method: method.to_string(),
        });
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some() {
            return Err(ForwardError::BadRequest {
                reason: SEVERAL_TRANSFER_ENCODINGS,
            });
        }
        let chunked = coding
            .to_str()
            .is_ok_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        if !chunked {
            return Err(ForwardError::UnsupportedTransferCoding {
                coding: String::from_utf8_lossy(coding.as_bytes()).into_owned(),
            });
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ForwardError::BadRequest {
            reason: MULTIPLE_HOST,
        });
    }
    if let Some(authority) = uri.authority() {
        // Userinfo never travels in Host.
        let target = authority.as_str().rsplit('@').next().unwrap_or_default();
        let value = HeaderValue::from_str(target).map_err(|_| ForwardError::BadRequest {
            reason: INVALID_HOST,
        })?;
        headers.insert(header::HOST, value);
        return Ok(());
    }
    match host {
        None if version == Version::HTTP_11 => Err(ForwardError::BadRequest {
            reason: MISSING_HOST,
        }),
        None => Ok(()),
        Some(host) if valid_host(host.as_bytes()) => Ok(()),
        Some(_) => Err(ForwardError::BadRequest {
            reason: INVALID_HOST,
        }),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): an authority without userinfo, not empty.
fn valid_host(value: &[u8]) -> bool {
    !value.is_empty()
        && !value.contains(&b'@')
        && http::uri::Authority::try_from(value).is_ok_and(|authority| !authority.host().is_empty())
}

/// Whether the sender of a message (a client's request, a backend's response) wants its connection
/// closed after it: HTTP/1.0 unless it sent `Connection: keep-alive`, HTTP/1.1 when it sent
/// `Connection: close`.
pub fn wants_close(version: Version, headers: &HeaderMap) -> bool {
    let has_token = |wanted: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(wanted))
    };
    match version {
        Version::HTTP_10 | Version::HTTP_09 => !has_token("keep-alive"),
        _ => has_token("close"),
    }
}

/// Prepares a client's request headers for the backend. `client` is the client's IP address as
/// a header value (made once per connection).
pub fn rewrite_request(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    // Read before hop-by-hop removal: a client may (wrongly) name Host in Connection.
    let host = headers.get(header::HOST).cloned();
    let removed = remove_hop_by_hop(headers);
    // Room for the X-Forwarded-* headers at once (one growth of the table at most).
    headers.reserve(3);
    if let Some(host) = host {
        if removed && !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    // Several X-Forwarded-For lines are one list: join them, then append the client.
    let previous: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    let forwarded_for = if previous.is_empty() {
        client.clone()
    } else {
        let client = client.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {client}", previous.join(", ")))
            .unwrap_or_else(|_| client_value(client))
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
}

fn client_value(client: &str) -> HeaderValue {
    HeaderValue::from_str(client).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The header value of a client address, for [`rewrite_request`]. Made once per connection; an
/// IPv4 address is written digit by digit (the formatting machinery costs more than the rest of
/// accepting a connection's bookkeeping).
pub fn client_header_value(client: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = client else {
        return client_value(&client.to_string());
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| client_value(&v4.to_string()))
}

/// `Keep-Alive: timeout=N` for a keep-alive timeout, when it is at least a second.
pub fn keep_alive_value(timeout: std::time::Duration) -> Option<HeaderValue> {
    thread_local! {
        // Every response of a listener carries the same value: format it once per thread.
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    let seconds = timeout.as_secs();
    if seconds == 0 {
        return None;
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = last.as_ref() {
            if *cached == seconds {
                return Some(value.clone());
            }
        }
        let value = HeaderValue::from_str(&format!("timeout={seconds}")).ok()?;
        *last = Some((seconds, value.clone()));
        Some(value)
    })
}

pub(crate) fn keep_alive_name() -> &'static HeaderName {
    &KEEP_ALIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_checked_as_rfc_9112_asks() {
        // (name, version, target, headers, expected status or the Host forwarded)
        let cases: &[(
            &str,
            Version,
            &str,
            &[(&str, &str)],
            Result<Option<&str>, u16>,
        )] = &[
            (
                "plain",
                Version::HTTP_11,
                "/x",
                &[("host", "a.example")],
                Ok(Some("a.example")),
            ),
            (
                "host with port",
                Version::HTTP_11,
                "/x",
                &[("host", "a.example:8080")],
                Ok(Some("a.example:8080")),
            ),
            (
                "ipv6 host",
                Version::HTTP_11,
                "/x",
                &[("host", "[::1]:80")],
                Ok(Some("[::1]:80")),
            ),
            (
                "two hosts",
                Version::HTTP_11,
                "/x",
                &[("host", "a.example"), ("host", "b.example")],
                Err(400),
            ),
            (
                "two equal hosts",
                Version::HTTP_11,
                "/x",
                &[("host", "a.example"), ("host", "a.example")],
                Err(400),
            ),
            ("no host in 1.1", Version::HTTP_11, "/x", &[], Err(400)),
            ("no host in 1.0", Version::HTTP_10, "/x", &[], Ok(None)),
            (
                "empty host",
                Version::HTTP_11,
                "/x",
                &[("host", "")],
                Err(400),
            ),
            (
                "host with userinfo",
                Version::HTTP_11,
                "/x",
                &[("host", "u@a.example")],
                Err(400),
            ),
            (
                "host with space",
                Version::HTTP_11,
                "/x",
                &[("host", "a b")],
                Err(400),
            ),
            (
                "host with path",
                Version::HTTP_11,
                "/x",
                &[("host", "a.example/x")],
                Err(400),
            ),
            (
                "absolute form wins",
                Version::HTTP_11,
                "http://a.example/x",
                &[("host", "b.example")],
                Ok(Some("a.example")),
            ),
            (
                "absolute form without host",
                Version::HTTP_11,
                "http://a.example:81/x",
                &[],
                Ok(Some("a.example:81")),
            ),
            (
                "absolute form drops userinfo",
                Version::HTTP_11,
                "http://u:p@a.example/x",
                &[],
                Ok(Some("a.example")),
            ),
            (
                "absolute form with two hosts",
                Version::HTTP_11,
                "http://a.example/x",
                &[("host", "a"), ("host", "b")],
                Err(400),
            ),
            (
                "chunked",
                Version::HTTP_11,
                "/x",
                &[("host", "a"), ("transfer-encoding", "chunked")],
                Ok(Some("a")),
            ),
            (
                "chunked any case",
                Version::HTTP_11,
                "/x",
                &[("host", "a"), ("transfer-encoding", " Chunked ")],
                Ok(Some("a")),
            ),
            (
                "gzip, chunked",
                Version::HTTP_11,
                "/x",
                &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
                Err(501),
            ),
            (
                "identity, chunked",
                Version::HTTP_11,
                "/x",
                &[("host", "a"), ("transfer-encoding", "identity, chunked")],
                Err(501),
            ),
            (
                "chunked, chunked",
                Version::HTTP_11,
                "/x",
                &[("host", "a"), ("transfer-encoding", "chunked, chunked")],
                Err(501),
            ),
            (
                "two TE lines",
                Version::HTTP_11,
                "/x",
                &[
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(400),
            ),
        ];
        let connect = check_request(
            &Method::CONNECT,
            Version::HTTP_11,
            &"a.example:443".parse().unwrap(),
            &mut HeaderMap::new(),
        );
        assert_eq!(connect.unwrap_err().status().as_u16(), 405);
        for (name, version, target, pairs, expected) in cases {
            let mut headers = HeaderMap::new();
            for (header, value) in *pairs {
                headers.append(
                    HeaderName::from_static(header),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let uri: Uri = target.parse().unwrap();
            let result = check_request(&Method::GET, *version, &uri, &mut headers);
            match (result, expected) {
                (Ok(()), Ok(host)) => assert_eq!(
                    headers.get(header::HOST).map(|h| h.to_str().unwrap()),
                    *host,
                    "{name}"
                ),
                (Err(error), Err(status)) => assert_eq!(error.status().as_u16(), *status, "{name}"),
                (result, expected) => panic!("{name}: got {result:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn client_addresses_become_header_values() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "192.168.100.255",
            "255.255.255.255",
            "2001:db8::1",
        ] {
            let value = client_header_value(text.parse().unwrap());
            assert_eq!(value.to_str().unwrap(), text);
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|name| name.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_ones_kept() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("accept", "*/*"),
            ("cookie", "a=b"),
        ]);
        assert!(remove_hop_by_hop(&mut map));
        assert_eq!(names(&map), ["accept", "content-length", "cookie"]);
        assert!(!remove_hop_by_hop(&mut map), "nothing left to remove");
        assert_eq!(names(&map), ["accept", "content-length", "cookie"]);
    }

    #[test]
    fn forwarding_headers_are_set_and_forwarded_for_appended() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("host", "example.com")], "192.0.2.9"),
            (
                &[("host", "example.com"), ("x-forwarded-for", "198.51.100.1")],
                "198.51.100.1, 192.0.2.9",
            ),
            (
                &[
                    ("host", "example.com"),
                    ("x-forwarded-for", "198.51.100.1"),
                    ("x-forwarded-for", "10.0.0.1"),
                ],
                "198.51.100.1, 10.0.0.1, 192.0.2.9",
            ),
        ];
        for (input, expected_for) in cases {
            let mut map = headers(input);
            map.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
            rewrite_request(
                &mut map,
                &client_header_value("192.0.2.9".parse().unwrap()),
                "http",
            );
            assert_eq!(
                map.get("x-forwarded-for").unwrap(),
                *expected_for,
                "{input:?}"
            );
            assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
            assert_eq!(
                map.get("x-forwarded-proto").unwrap(),
                "http",
                "a client cannot claim https"
            );
            assert_eq!(map.get("x-forwarded-host").unwrap(), "example.com");
            assert_eq!(map.get("host").unwrap(), "example.com");
        }
    }

    #[test]
    fn host_survives_even_when_named_in_connection() {
        let mut map = headers(&[("host", "example.com"), ("connection", "host")]);
        rewrite_request(
            &mut map,
            &client_header_value("192.0.2.9".parse().unwrap()),
            "http",
        );
        assert_eq!(map.get("host").unwrap(), "example.com");
    }

    #[test]
    fn client_close_intent_follows_the_http_version() {
        let cases: &[(Version, &[(&str, &str)], bool)] = &[
            (Version::HTTP_10, &[], true),
            (Version::HTTP_10, &[("connection", "Keep-Alive")], false),
            (Version::HTTP_11, &[], false),
            (Version::HTTP_11, &[("connection", "close")], true),
            (Version::HTTP_11, &[("connection", "foo, Close")], true),
            (Version::HTTP_11, &[("connection", "keep-alive")], false),
        ];
        for (version, pairs, expected) in cases {
            assert_eq!(
                wants_close(*version, &headers(pairs)),
                *expected,
                "{version:?} {pairs:?}"
            );
        }
    }

    #[test]
    fn keep_alive_header_names_whole_seconds() {
        use std::time::Duration;
        assert_eq!(
            keep_alive_value(Duration::from_secs(75)).unwrap(),
            "timeout=75"
        );
        assert_eq!(
            keep_alive_value(Duration::from_millis(2500)).unwrap(),
            "timeout=2"
        );
        assert!(keep_alive_value(Duration::from_millis(300)).is_none());
    }
}
