//! Request smuggling and request framing, against a strict raw-socket backend that records every
//! byte the proxy sends it.
//!
//! `request_smuggling_corpus` sends a table of raw requests (CL.TE, TE.CL, TE.TE, obfuscated
//! `Transfer-Encoding`, malformed `Content-Length`, bare CR/LF, obs-fold, bad header names, NUL
//! bytes, odd chunk sizes and extensions, absolute-form targets, Host rules, pipelining,
//! `Expect`, odd request lines), each on a fresh client connection, and checks what the client got
//! back and what the backend saw against the case's expectation (RFC 9112 / RFC 9110, and what
//! NGINX and HAProxy do where the RFC leaves a choice). After each case a clean request on a new
//! connection must get its own answer: nothing of the case may be left on pooled upstream
//! connections. Every case runs; the test fails at the end listing every failing case.
//!
//! The other tests mutate valid requests at random (seeded, reproducible) and split valid
//! requests at random points, and check invariants rather than exact outcomes.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Short header and body timeouts, so a case that leaves a partial request behind does not keep
/// its connection for long.
const LISTENER_KEYS: &str = "header_timeout = \"1s\"\nbody_timeout = \"1s\"";
/// How long a case waits for the answers it expects.
const CASE_LIMIT: Duration = Duration::from_secs(2);
/// How long a case keeps reading once it has the answers it expects: an extra answer (a request
/// the proxy should not have seen) or the close arrives in this time on loopback.
const GRACE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// The strict raw backend.

/// One complete request as the backend parsed it.
#[derive(Debug, Clone)]
struct Seen {
    /// Position in the backend's log, named in its answer (`#index`).
    index: usize,
    connection: usize,
    method: String,
    target: String,
    hosts: Vec<String>,
    /// The request head exactly as received.
    head: Vec<u8>,
    /// The body, decoded if it was chunked.
    body: Vec<u8>,
    /// What a strict recipient objects to while still being able to frame the message.
    anomalies: Vec<String>,
}

impl Seen {
    /// The body of the backend's answer to this request.
    fn answer(&self) -> String {
        format!("{} {} #{}", self.method, self.target, self.index)
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "{} {} (conn {}, host {:?}, body {})",
            short(self.method.as_bytes(), 40),
            short(self.target.as_bytes(), 60),
            self.connection,
            self.hosts,
            short(&self.body, 80)
        );
        if !self.anomalies.is_empty() {
            text.push_str(&format!(", anomalies {:?}", self.anomalies));
        }
        text
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<Seen>,
    /// Bytes the backend could not parse as a request (it answered 400 and closed).
    errors: Vec<String>,
    /// Connections that ended inside a request (a partial request, never answered).
    partials: Vec<String>,
    /// Every byte received, per connection.
    wire: Vec<Vec<u8>>,
}

/// Where a case's window starts in the backend's log.
#[derive(Debug, Clone, Copy)]
struct Mark {
    requests: usize,
    errors: usize,
    partials: usize,
}

/// What the backend logged since a mark.
#[derive(Debug, Default)]
struct Window {
    requests: Vec<Seen>,
    errors: Vec<String>,
    partials: Vec<String>,
}

struct RawBackend {
    address: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl RawBackend {
    async fn start() -> RawBackend {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    continue;
                };
                let connection = {
                    let mut log = shared.lock().unwrap();
                    log.wire.push(Vec::new());
                    log.wire.len() - 1
                };
                tokio::spawn(serve_raw(stream, connection, Arc::clone(&shared)));
            }
        });
        RawBackend { address, log }
    }

    fn mark(&self) -> Mark {
        let log = self.log.lock().unwrap();
        Mark {
            requests: log.requests.len(),
            errors: log.errors.len(),
            partials: log.partials.len(),
        }
    }

    fn since(&self, mark: Mark) -> Window {
        let log = self.log.lock().unwrap();
        Window {
            requests: log.requests[mark.requests..].to_vec(),
            errors: log.errors[mark.errors..].to_vec(),
            partials: log.partials[mark.partials..].to_vec(),
        }
    }
}

/// One backend connection: answers every complete request in order, each with
/// `<method> <target> #<index>`; anything it cannot parse gets a 400 and the close.
async fn serve_raw(mut stream: TcpStream, connection: usize, log: Arc<Mutex<Log>>) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            match parse_request(&buffer) {
                Parsed::Incomplete => break,
                Parsed::Invalid(reason) => {
                    log.lock().unwrap().errors.push(format!(
                        "backend connection {connection}: {reason}: {}",
                        short(&buffer, 300)
                    ));
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nX-Backend: raw\r\nConnection: close\r\n\r\nbackend 400")
                        .await;
                    return;
                }
                Parsed::Request(mut seen, used) => {
                    buffer.drain(..used);
                    let body = {
                        let mut log = log.lock().unwrap();
                        seen.index = log.requests.len();
                        seen.connection = connection;
                        let body = seen.answer();
                        log.requests.push(*seen);
                        body
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: raw\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buffer.is_empty() {
                    log.lock().unwrap().partials.push(format!(
                        "backend connection {connection} ended inside a request: {}",
                        short(&buffer, 200)
                    ));
                }
                return;
            }
            Ok(n) => {
                log.lock().unwrap().wire[connection].extend_from_slice(&chunk[..n]);
                buffer.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

enum Parsed {
    Incomplete,
    /// A complete request and how many bytes it took.
    Request(Box<Seen>, usize),
    Invalid(String),
}

/// Parses one request at the start of `buffer` with strict rules: `httparse` for the head (no
/// obs-fold, no bad names), `Transfer-Encoding` must be exactly `chunked`, `Content-Length` must be
/// digits, chunked bodies must follow RFC 9112 §7.1 to the byte. Things a lenient server would
/// still frame the same way (both CL and TE, several Host fields, bare LF in the head, ...) are
/// noted as anomalies: a proxy must never send them on.
fn parse_request(buffer: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buffer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buffer.len() > 1 << 20 => {
            return Parsed::Invalid("a head over 1 MiB".into())
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(error) => return Parsed::Invalid(format!("head: {error}")),
    };
    let head = &buffer[..head_len];
    let mut anomalies = Vec::new();
    let mut note = |text: &str| {
        if !anomalies.iter().any(|a| a == text) {
            anomalies.push(text.to_owned());
        }
    };
    for (at, &byte) in head.iter().enumerate() {
        match byte {
            b'\r' if head.get(at + 1) != Some(&b'\n') => note("bare CR in the head"),
            b'\n' if at == 0 || head[at - 1] != b'\r' => note("bare LF in the head"),
            0 => note("NUL in the head"),
            _ => {}
        }
    }
    if request.version != Some(1) {
        note("not HTTP/1.1");
    }
    let mut hosts = Vec::new();
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value)
            .trim_matches([' ', '\t'])
            .to_owned();
        if header.name.eq_ignore_ascii_case("host") {
            hosts.push(value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            lengths.push(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(value);
        }
    }
    if hosts.len() != 1 {
        note("host: not exactly one Host field");
    }
    let body_start = &buffer[head_len..];
    let (body, body_len) = if !codings.is_empty() {
        if !lengths.is_empty() {
            note("both Content-Length and Transfer-Encoding");
        }
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Parsed::Invalid(format!(
                "Transfer-Encoding {codings:?} is not exactly `chunked`"
            ));
        }
        match parse_chunked(body_start) {
            Ok(Some(done)) => done,
            Ok(None) => return Parsed::Incomplete,
            Err(error) => return Parsed::Invalid(format!("chunked body: {error}")),
        }
    } else if !lengths.is_empty() {
        if lengths.len() > 1 {
            note("several Content-Length fields");
        }
        if lengths.iter().any(|l| l != &lengths[0])
            || lengths[0].is_empty()
            || !lengths[0].bytes().all(|b| b.is_ascii_digit())
        {
            return Parsed::Invalid(format!("Content-Length {lengths:?}"));
        }
        let Ok(length) = lengths[0].parse::<usize>() else {
            return Parsed::Invalid(format!("Content-Length {lengths:?}"));
        };
        if body_start.len() < length {
            return Parsed::Incomplete;
        }
        (body_start[..length].to_vec(), length)
    } else {
        (Vec::new(), 0)
    };
    let seen = Seen {
        index: 0,
        connection: 0,
        method: request.method.unwrap_or_default().to_owned(),
        target: request.path.unwrap_or_default().to_owned(),
        hosts,
        head: head.to_vec(),
        body,
        anomalies,
    };
    Parsed::Request(Box::new(seen), head_len + body_len)
}

/// A strict chunked body decoder (RFC 9112 §7.1): the decoded bytes and the length used, `None`
/// if more bytes are needed.
fn parse_chunked(wire: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line) = crlf_line(wire, at)? else {
            return Ok(None);
        };
        let text = &wire[at..line];
        at = line + 2;
        let (size, extension) = match text.iter().position(|&b| b == b';') {
            Some(semicolon) => (&text[..semicolon], &text[semicolon + 1..]),
            None => (text, &[][..]),
        };
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk size {}", short(text, 60)));
        }
        if extension
            .iter()
            .any(|&b| b < 0x20 && b != b'\t' || b == 0x7f)
        {
            return Err(format!("chunk extension {}", short(text, 60)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).unwrap(), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let Some(line) = crlf_line(wire, at)? else {
                    return Ok(None);
                };
                let field = &wire[at..line];
                at = line + 2;
                if field.is_empty() {
                    return Ok(Some((body, at)));
                }
                if !field.contains(&b':') || field[0] == b' ' || field[0] == b'\t' {
                    return Err(format!("trailer line {}", short(field, 60)));
                }
            }
        }
        if wire.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&wire[at..at + size]);
        if &wire[at + size..at + size + 2] != b"\r\n" {
            return Err("no CRLF after chunk data".into());
        }
        at += size + 2;
    }
}

/// The position of the CRLF ending the line that starts at `at`; an error for a bare CR or LF
/// or a line over 32 KiB.
fn crlf_line(wire: &[u8], at: usize) -> Result<Option<usize>, String> {
    for (offset, &byte) in wire[at..].iter().enumerate() {
        let position = at + offset;
        match byte {
            b'\r' => {
                return match wire.get(position + 1) {
                    Some(b'\n') => Ok(Some(position)),
                    Some(_) => Err("bare CR in a chunk line".into()),
                    None => Ok(None),
                }
            }
            b'\n' => return Err("bare LF in a chunk line".into()),
            _ if offset > 32 << 10 => return Err("chunk line over 32 KiB".into()),
            _ => {}
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// The client side: raw bytes out, answers in, with bounded waits.

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Written by the backend (passed on by the proxy), not made by the proxy itself.
    fn by_backend(&self) -> bool {
        self.header("x-backend") == Some("raw")
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    fn describe(&self) -> String {
        if self.by_backend() {
            format!(
                "{} from the backend ({})",
                self.status,
                short(&self.body, 80)
            )
        } else {
            format!("{} from the proxy ({})", self.status, short(&self.body, 80))
        }
    }
}

/// What came back on a client connection.
#[derive(Debug, Default)]
struct Exchange {
    answers: Vec<Answer>,
    /// Interim (1xx) statuses.
    interim: Vec<u16>,
    /// The proxy closed (or reset) the connection.
    closed: bool,
    /// The expected answers did not all arrive in time and the connection stayed open.
    timed_out: bool,
    /// Bytes that were not a valid response.
    junk: Vec<u8>,
}

impl Exchange {
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.answers.iter().map(Answer::describe).collect();
        if parts.is_empty() {
            parts.push("no answer".into());
        }
        if !self.interim.is_empty() {
            parts.push(format!("interim {:?}", self.interim));
        }
        if !self.junk.is_empty() {
            parts.push(format!("junk {}", short(&self.junk, 80)));
        }
        parts.push(
            if self.closed {
                "then closed"
            } else if self.timed_out {
                "then nothing (timed out, left open)"
            } else {
                "left open"
            }
            .into(),
        );
        parts.join(", ")
    }
}

/// Reads answers until `expected` final answers arrived (then `grace` more for extra bytes or the
/// close), the connection closed, or `limit` passed.
async fn exchange(
    stream: &mut TcpStream,
    mut buffer: Vec<u8>,
    expected: usize,
    limit: Duration,
    grace: Duration,
) -> Exchange {
    let deadline = Instant::now() + limit;
    let mut result = Exchange::default();
    let mut quiet_until: Option<Instant> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        take_answers(&mut buffer, false, &mut result);
        if result.answers.len() >= expected && quiet_until.is_none() {
            quiet_until = Some((Instant::now() + grace).min(deadline));
        }
        let until = quiet_until.unwrap_or(deadline);
        match tokio::time::timeout_at(until, stream.read(&mut chunk)).await {
            Err(_) => {
                result.timed_out = quiet_until.is_none();
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                result.closed = true;
                break;
            }
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    take_answers(&mut buffer, result.closed, &mut result);
    result.junk.extend_from_slice(&buffer);
    result
}

fn take_answers(buffer: &mut Vec<u8>, eof: bool, result: &mut Exchange) {
    while result.junk.is_empty() && !buffer.is_empty() {
        match parse_answer(buffer, eof) {
            Ok(Some((answer, used))) => {
                buffer.drain(..used);
                if (100..200).contains(&answer.status) {
                    result.interim.push(answer.status);
                } else {
                    result.answers.push(answer);
                }
            }
            Ok(None) => return,
            Err(error) => {
                result.junk = format!("[{error}] ").into_bytes();
                result.junk.append(buffer);
            }
        }
    }
}

fn parse_answer(buffer: &[u8], eof: bool) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buffer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("response head: {error}")),
    };
    let status = response.code.unwrap_or(0);
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((answer, head_len)));
    }
    let rest = &buffer[head_len..];
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return match parse_chunked(rest)? {
            Some((body, used)) => {
                answer.body = body;
                Ok(Some((answer, head_len + used)))
            }
            None => Ok(None),
        };
    }
    if let Some(length) = answer.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("response Content-Length {length:?}"))?;
        if rest.len() < length {
            return Ok(None);
        }
        answer.body = rest[..length].to_vec();
        return Ok(Some((answer, head_len + length)));
    }
    if !eof {
        return Ok(None);
    }
    answer.body = rest.to_vec();
    Ok(Some((answer, buffer.len())))
}

async fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A clean GET and a clean POST on a new connection: each must get its own answer from the
/// backend, naming `/after-<tag>`.
async fn follow_up(proxy: SocketAddr, tag: &str) -> Result<(), String> {
    let mut stream = connect(proxy).await;
    for (wire, answer) in [
        (
            format!("GET /after-{tag} HTTP/1.1\r\nHost: after.example\r\n\r\n"),
            format!("GET /after-{tag} #"),
        ),
        (
            format!(
                "POST /after-{tag}/post HTTP/1.1\r\nHost: after.example\r\nContent-Length: 4\r\n\r\nping"
            ),
            format!("POST /after-{tag}/post #"),
        ),
    ] {
        stream
            .write_all(wire.as_bytes())
            .await
            .map_err(|e| format!("sending the follow-up: {e}"))?;
        let got = exchange(&mut stream, Vec::new(), 1, CASE_LIMIT, Duration::ZERO).await;
        match got.answers.first() {
            Some(a) if a.by_backend() && a.status == 200 && a.body.starts_with(answer.as_bytes()) => {}
            _ => {
                return Err(format!(
                    "follow-up `{}` got: {}",
                    wire.lines().next().unwrap_or_default(),
                    got.describe()
                ))
            }
        }
    }
    Ok(())
}

/// The follow-up requests of `tag` in a window must be exactly the clean GET and POST.
fn check_follow_up_seen(window: &[Seen], tag: &str) -> Result<(), String> {
    let prefix = format!("/after-{tag}");
    let seen: Vec<&Seen> = window
        .iter()
        .filter(|s| s.target.starts_with(&prefix))
        .collect();
    let fine = seen.len() == 2
        && seen[0].target == prefix
        && seen[0].body.is_empty()
        && seen[1].target == format!("{prefix}/post")
        && seen[1].body == b"ping"
        && seen.iter().all(|s| s.anomalies.is_empty());
    if fine {
        Ok(())
    } else {
        Err(format!(
            "the backend saw these follow-up requests: {:?}",
            seen.iter().map(|s| s.describe()).collect::<Vec<_>>()
        ))
    }
}

/// Bytes as an escaped string, cut to `limit` characters.
fn short(bytes: &[u8], limit: usize) -> String {
    let text: String = bytes.escape_ascii().to_string();
    if text.len() > limit {
        format!("\"{}\"...({} bytes)", &text[..limit], bytes.len())
    } else {
        format!("\"{text}\"")
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus.

/// A request the backend must see.
#[derive(Clone)]
struct Want {
    method: &'static str,
    target: &'static str,
    /// The Host the backend must see, when it matters.
    host: Option<&'static str>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)?;
        if let Some(host) = self.host {
            write!(f, " host {host:?}")?;
        }
        write!(f, " body {}", short(&self.body, 60))
    }
}

impl Want {
    fn method(mut self, method: &'static str) -> Want {
        self.method = method;
        self
    }
    fn host(mut self, host: &'static str) -> Want {
        self.host = Some(host);
        self
    }
    fn body(mut self, body: impl AsRef<[u8]>) -> Want {
        self.body = body.as_ref().to_vec();
        self
    }
}

/// `POST /c` with this body.
fn post(body: impl AsRef<[u8]>) -> Want {
    Want {
        method: "POST",
        target: "/c",
        host: None,
        body: body.as_ref().to_vec(),
    }
}

/// `GET <target>` without a body.
fn get(target: &'static str) -> Want {
    Want {
        method: "GET",
        target,
        host: None,
        body: Vec::new(),
    }
}

#[derive(Debug)]
enum Expect {
    /// Refused by the proxy itself: a 4xx, 501 or 505, or the connection closed without an
    /// answer; the backend sees no complete request. (A 502/504 is not a refusal: it blames the
    /// backend for the client's request.)
    Reject,
    /// Refused by the proxy with one of these statuses; the backend sees no complete request.
    RejectWith(&'static [u16]),
    /// Forwarded as exactly these requests, in order, each answered by the backend in order.
    Forward(Vec<Want>),
    /// Either refused (as `Reject`) or forwarded (as `Forward`).
    Either(Vec<Want>),
}

impl Expect {
    /// How many final answers the client waits for.
    fn answers(&self) -> usize {
        match self {
            Expect::Reject | Expect::RejectWith(_) => 1,
            Expect::Forward(wants) | Expect::Either(wants) => wants.len(),
        }
    }
}

fn fwd(want: Want) -> Expect {
    Expect::Forward(vec![want])
}
fn either(want: Want) -> Expect {
    Expect::Either(vec![want])
}
fn status(codes: &'static [u16]) -> Expect {
    Expect::RejectWith(codes)
}

struct Case {
    name: &'static str,
    wire: Vec<u8>,
    expect: Expect,
    /// The proxy must close the client connection after its answer if it forwards the request:
    /// RFC 9112 §6.1 after a request with both Content-Length and Transfer-Encoding (and after a
    /// request that asked for the close).
    close_if_forwarded: bool,
    /// The proxy must close the client connection after refusing the request: RFC 9112 §6.3, a
    /// request whose body length cannot be determined (the rest of it must not be read as a
    /// next request).
    close_if_refused: bool,
    /// Send the head, wait (up to 1 s) for `100 Continue`, then send the body.
    continue_first: bool,
}

impl Case {
    fn new(name: &'static str, wire: impl AsRef<[u8]>, expect: Expect) -> Case {
        Case {
            name,
            wire: wire.as_ref().to_vec(),
            expect,
            close_if_forwarded: false,
            close_if_refused: false,
            continue_first: false,
        }
    }
    /// Closes after the answer, whether forwarded or refused.
    fn closing(mut self) -> Case {
        self.close_if_forwarded = true;
        self.close_if_refused = true;
        self
    }
    /// Framing is at stake: closes after a refusal.
    fn framing(mut self) -> Case {
        self.close_if_refused = true;
        self
    }
    fn continue_first(mut self) -> Case {
        self.continue_first = true;
        self
    }
}

/// A head with `{len}` replaced by the body's length, then the body.
fn with_body(head: &[u8], body: &[u8]) -> Vec<u8> {
    let length = body.len().to_string();
    let mut wire = Vec::new();
    let mut rest = head;
    while let Some(at) = rest.windows(5).position(|w| w == b"{len}") {
        wire.extend_from_slice(&rest[..at]);
        wire.extend_from_slice(length.as_bytes());
        rest = &rest[at + 5..];
    }
    wire.extend_from_slice(rest);
    wire.extend_from_slice(body);
    wire
}

/// A chunked body: one chunk per piece, then the last chunk.
fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in pieces {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: h.example\r\n\r\n";
/// The classic TE.CL payload: a whole request inside one chunk.
const SMUGGLED_POST: &[u8] =
    b"GPOST /smuggled HTTP/1.1\r\nHost: h.example\r\nContent-Length: 15\r\n\r\nx=1";

/// Unknown or unsupported transfer codings: 501 (RFC 9112 §6.1, NGINX) or 400 (chunked not
/// final, RFC 9112 §6.3).
const BAD_CODING: &[u16] = &[400, 501];

fn corpus() -> Vec<Case> {
    let te_chunked_hello = b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let long_method = {
        let mut wire = vec![b'A'; 70_000];
        wire.extend_from_slice(b" /c HTTP/1.1\r\nHost: h.example\r\n\r\n");
        wire
    };
    let long_extension = with_body(
        b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n",
        format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(20_000)).as_bytes(),
    );
    vec![
        // --- CL.TE and TE.CL: Transfer-Encoding wins (RFC 9112 §6.3); rejecting is allowed; the
        // connection must close either way (§6.1).
        Case::new("cl_te_zero_chunk_then_prefix", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", either(post(""))).closing(),
        Case::new("cl_te_hides_get", with_body(b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n", &[&b"0\r\n\r\n"[..], SMUGGLED].concat()), either(post(""))).closing(),
        Case::new("te_cl_chunk_hides_request", with_body(b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", &chunked(&[SMUGGLED_POST])), either(post(SMUGGLED_POST))).closing(),
        Case::new("te_cl_length_too_long", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).closing(),
        Case::new("te_before_cl", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).closing(),
        Case::new("cl_te_with_pipelined_get", [&b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..], SMUGGLED].concat(), either(post(""))).closing(),
        // --- TE.TE: two Transfer-Encoding fields, one the other side may ignore.
        Case::new("te_te_chunked_then_identity", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).closing(),
        Case::new("te_te_chunked_then_cow", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).closing(),
        Case::new("te_te_chunked_twice", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::Reject).framing(),
        Case::new("te_chunked_chunked_one_field", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::Reject).framing(),
        Case::new("te_gzip_then_chunked_fields", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).framing(),
        // --- Obfuscated Transfer-Encoding.
        Case::new("te_space_before_colon", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(&[400])).closing(),
        Case::new("te_xchunked", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).framing(),
        Case::new("te_xchunked_with_cl", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello", status(BAD_CODING)).closing(),
        Case::new("te_chunked_identity", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).framing(),
        Case::new("te_identity_chunked", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("te_gzip_chunked", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).framing(),
        Case::new("te_tab_before_value", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("te_tab_before_value_with_cl", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).closing(),
        Case::new("te_vertical_tab_before_value", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 4\r\nTransfer-Encoding:\x0bchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::Reject).closing(),
        Case::new("te_form_feed_before_value", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 4\r\nTransfer-Encoding: \x0cchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::Reject).closing(),
        Case::new("te_trailing_whitespace", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked \t\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("te_name_lowercase", b"POST /c HTTP/1.1\r\nHost: h.example\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("te_name_and_value_mixed_case", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTrAnSfEr-EnCoDiNg: ChUnKeD\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("te_no_space", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding:chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("te_obs_fold_value", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("te_empty_list_element", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: , chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("te_quoted", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: \"chunked\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(BAD_CODING)).framing(),
        Case::new("te_nul_after_value", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\x00\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("te_named_in_connection", b"POST /c HTTP/1.1\r\nHost: h.example\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("te_in_http10", b"POST /c HTTP/1.0\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("te_in_http10_with_cl", b"POST /c HTTP/1.0\r\nHost: h.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello", status(&[400])).closing(),
        // --- Content-Length: duplicates may be folded into one valid value or refused (RFC 9110
        // §8.6); anything else that is not 1*DIGIT is a 400 (RFC 9112 §6.3).
        Case::new("cl_list_same", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5, 5\r\n\r\nhello", either(post("hello"))).framing(),
        Case::new("cl_duplicate_fields_same", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", either(post("hello"))).framing(),
        Case::new("cl_list_different", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5,6\r\n\r\nhello!", status(&[400])).framing(),
        Case::new("cl_duplicate_fields_different", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", status(&[400])).framing(),
        Case::new("cl_plus_sign", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: +5\r\n\r\nhello", status(&[400])).framing(),
        Case::new("cl_negative", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: -1\r\n\r\nhello", status(&[400])).framing(),
        Case::new("cl_hex", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 0x5\r\n\r\nhello", status(&[400])).framing(),
        Case::new("cl_decimal_point", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5.0\r\n\r\nhello", status(&[400])).framing(),
        Case::new("cl_space_inside", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 1 0\r\n\r\nhellohello", status(&[400])).framing(),
        Case::new("cl_trailing_letter", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5a\r\n\r\nhello", status(&[400])).framing(),
        Case::new("cl_empty", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: \r\n\r\nhello", status(&[400])).framing(),
        Case::new("cl_huge", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 99999999999999999999\r\n\r\nhello", status(&[400, 413])).framing(),
        Case::new("cl_surrounding_spaces", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length:  5 \r\n\r\nhello", either(post("hello"))),
        Case::new("cl_leading_zeros", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 005\r\n\r\nhello", fwd(post("hello"))),
        Case::new("cl_shorter_than_data", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\n\r\nhello", fwd(post("hel"))),
        Case::new("cl_named_in_connection", b"POST /c HTTP/1.1\r\nHost: h.example\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello", either(post("hello"))),
        Case::new("cl_zero_then_request", [&b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 0\r\n\r\n"[..], b"GET /second HTTP/1.1\r\nHost: h.example\r\n\r\n"].concat(), Expect::Forward(vec![post(""), get("/second")])),
        // --- Line endings (RFC 9112 §2.2): a bare LF may be accepted as a line end; a bare CR
        // must be refused or replaced by SP; neither may reach the backend.
        Case::new("bare_lf_line_endings", b"GET /c HTTP/1.1\nHost: h.example\n\n", either(get("/c"))),
        Case::new("bare_lf_one_header_line", b"POST /c HTTP/1.1\r\nHost: h.example\nContent-Length: 5\r\n\r\nhello", either(post("hello"))),
        Case::new("bare_cr_in_header_value", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-A: 1\rX-Evil: 2\r\n\r\n", either(get("/c"))),
        Case::new("bare_cr_line_ending", b"GET /c HTTP/1.1\rHost: h.example\r\n\r\n", Expect::Reject),
        Case::new("bare_cr_in_request_line", b"GET /c\r HTTP/1.1\r\nHost: h.example\r\n\r\n", Expect::Reject),
        Case::new("empty_line_before_request", b"\r\nGET /c HTTP/1.1\r\nHost: h.example\r\n\r\n", either(get("/c"))),
        Case::new("bare_lf_after_chunk_size", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("bare_lf_after_chunk_data", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", either(post("hello"))).framing(),
        // --- obs-fold (RFC 9112 §5.2): refuse or unfold; whitespace before the first field line
        // (§2.2): refuse or drop that line (here that leaves no Host: 400 either way).
        Case::new("obs_fold_space", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-A: 1\r\n folded\r\n\r\n", either(get("/c"))),
        Case::new("obs_fold_tab", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-A: 1\r\n\tfolded\r\n\r\n", either(get("/c"))),
        Case::new("obs_fold_content_length", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length:\r\n 5\r\n\r\nhello", either(post("hello"))).framing(),
        Case::new("space_before_first_field", b"GET /c HTTP/1.1\r\n Host: h.example\r\n\r\n", status(&[400])),
        // --- Invalid field names (RFC 9112 §5.1, RFC 9110 §5.1).
        Case::new("name_space_before_colon", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-A : 1\r\n\r\n", status(&[400])),
        Case::new("name_tab_before_colon", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-A\t: 1\r\n\r\n", status(&[400])),
        Case::new("host_space_before_colon", b"GET /c HTTP/1.1\r\nHost : h.example\r\n\r\n", status(&[400])),
        Case::new("name_with_at_sign", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX@A: 1\r\n\r\n", status(&[400])),
        Case::new("name_empty", b"GET /c HTTP/1.1\r\nHost: h.example\r\n: 1\r\n\r\n", status(&[400])),
        Case::new("name_with_space", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX A: 1\r\n\r\n", status(&[400])),
        Case::new("line_without_colon", b"GET /c HTTP/1.1\r\nHost: h.example\r\nXA\r\n\r\n", status(&[400])),
        Case::new("name_non_ascii", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-\xffA: 1\r\n\r\n", status(&[400])),
        // --- NUL (RFC 9110 §5.5: refuse, or replace by SP in a field value).
        Case::new("nul_in_field_value", b"GET /c HTTP/1.1\r\nHost: h.example\r\nX-A: a\x00b\r\n\r\n", either(get("/c"))),
        Case::new("nul_in_target", b"GET /a\x00b HTTP/1.1\r\nHost: h.example\r\n\r\n", status(&[400])),
        Case::new("nul_in_method", b"G\x00T /c HTTP/1.1\r\nHost: h.example\r\n\r\n", status(&[400])),
        // --- Chunk sizes, extensions and terminators (RFC 9112 §7.1). A broken chunked body is
        // the client's fault: 400, never 502.
        Case::new("chunk_size_leading_zeros", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000000005\r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("chunk_size_overflow", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n", status(&[400, 413])).framing(),
        Case::new("chunk_size_negative", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_size_hex_prefix", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_size_not_hex", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\ng\r\nhello\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_size_empty", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_size_trailing_space", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("chunk_extension_token", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("chunk_extension_quoted", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b c\";d\r\nhello\r\n0\r\n\r\n", fwd(post("hello"))),
        Case::new("chunk_extension_bare_lf", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("chunk_extension_unclosed_quote", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n", either(post("hello"))).framing(),
        Case::new("chunk_extension_20k", long_extension, either(post("hello"))).framing(),
        Case::new("chunk_data_without_crlf", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_data_longer_than_size", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_last_chunk_glued_to_data", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n", status(&[400])).framing(),
        Case::new("chunk_trailer_content_length", b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n", fwd(post("hello"))),
        Case::new("chunk_request_inside_data", with_body(b"POST /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n", &chunked(&[SMUGGLED])), fwd(post(SMUGGLED))),
        Case::new("chunked_then_pipelined_get", [&te_chunked_hello[..], b"GET /second HTTP/1.1\r\nHost: h.example\r\n\r\n"].concat(), Expect::Forward(vec![post("hello"), get("/second")])),
        // --- Targets and Host (RFC 9112 §3.2): absolute-form decides the host; one Host field,
        // required in HTTP/1.1.
        Case::new("absolute_form_overrides_host", b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", fwd(get("/x").host("a.example"))),
        Case::new("absolute_form_port_and_query", b"GET http://a.example:8080/x?q=1 HTTP/1.1\r\nHost: b.example\r\n\r\n", fwd(get("/x?q=1").host("a.example:8080"))),
        Case::new("absolute_form_without_host", b"GET http://a.example/x HTTP/1.1\r\n\r\n", either(get("/x").host("a.example"))),
        Case::new("absolute_form_userinfo", b"GET http://u@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", either(get("/x").host("a.example"))),
        Case::new("host_twice_different", b"GET /c HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", status(&[400])),
        Case::new("host_twice_same", b"GET /c HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n", status(&[400])),
        Case::new("host_list", b"GET /c HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", status(&[400])),
        Case::new("host_with_space", b"GET /c HTTP/1.1\r\nHost: a b\r\n\r\n", status(&[400])),
        Case::new("host_missing_http11", b"GET /c HTTP/1.1\r\nX-A: 1\r\n\r\n", status(&[400])),
        Case::new("host_missing_http10", b"GET /c HTTP/1.0\r\n\r\n", fwd(get("/c"))),
        Case::new("host_empty_http11", b"GET /c HTTP/1.1\r\nHost:\r\n\r\n", either(get("/c").host(""))),
        Case::new("host_named_in_connection", b"GET /c HTTP/1.1\r\nHost: h.example\r\nConnection: host\r\n\r\n", fwd(get("/c").host("h.example"))),
        // --- Pipelining: two requests in one write, both answered in order; a request inside a
        // body is body.
        Case::new("pipelined_two_gets", b"GET /one HTTP/1.1\r\nHost: h.example\r\n\r\nGET /two HTTP/1.1\r\nHost: h.example\r\n\r\n", Expect::Forward(vec![get("/one"), get("/two")])),
        Case::new("pipelined_post_then_get", b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\n\r\nhelloGET /two HTTP/1.1\r\nHost: h.example\r\n\r\n", Expect::Forward(vec![post("hello"), get("/two")])),
        Case::new("pipelined_after_connection_close", b"GET /one HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\nGET /two HTTP/1.1\r\nHost: h.example\r\n\r\n", fwd(get("/one"))).closing(),
        Case::new("request_inside_cl_body", with_body(b"POST /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: {len}\r\n\r\n", SMUGGLED), fwd(post(SMUGGLED))),
        // --- Expect (RFC 9110 §10.1.1).
        Case::new("expect_continue_body_at_once", b"POST /c HTTP/1.1\r\nHost: h.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", fwd(post("hello"))),
        Case::new("expect_continue_waits", b"POST /c HTTP/1.1\r\nHost: h.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", fwd(post("hello"))).continue_first(),
        Case::new("expect_unknown", b"POST /c HTTP/1.1\r\nHost: h.example\r\nExpect: teapot\r\nContent-Length: 5\r\n\r\nhello", either(post("hello"))),
        // --- A body on GET is framed like any other.
        Case::new("get_with_cl_body", b"GET /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\n\r\nhello", either(get("/c").body("hello"))),
        Case::new("get_with_chunked_body", b"GET /c HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", either(get("/c").body("hello"))),
        Case::new("get_with_request_in_body", with_body(b"GET /c HTTP/1.1\r\nHost: h.example\r\nContent-Length: {len}\r\n\r\n", SMUGGLED), either(get("/c").body(SMUGGLED))),
        // --- Request lines (RFC 9112 §3, RFC 9110 §2.5).
        Case::new("request_line_double_space", b"GET  /c HTTP/1.1\r\nHost: h.example\r\n\r\n", either(get("/c"))),
        Case::new("request_line_trailing_space", b"GET /c HTTP/1.1 \r\nHost: h.example\r\n\r\n", either(get("/c"))),
        Case::new("request_line_tabs", b"GET\t/c\tHTTP/1.1\r\nHost: h.example\r\n\r\n", either(get("/c"))),
        Case::new("request_line_space_in_target", b"GET /a b HTTP/1.1\r\nHost: h.example\r\n\r\n", Expect::Reject),
        Case::new("version_http_1_2", b"GET /c HTTP/1.2\r\nHost: h.example\r\n\r\n", either(get("/c"))),
        Case::new("version_http_2_0", b"GET /c HTTP/2.0\r\nHost: h.example\r\n\r\n", status(&[400, 505])),
        Case::new("version_lowercase", b"GET /c http/1.1\r\nHost: h.example\r\n\r\n", status(&[400])),
        Case::new("version_missing_http09", b"GET /c\r\n\r\n", Expect::Reject),
        Case::new("method_lowercase", b"get /c HTTP/1.1\r\nHost: h.example\r\n\r\n", either(get("/c").method("get"))),
        Case::new("method_with_paren", b"GE(T /c HTTP/1.1\r\nHost: h.example\r\n\r\n", status(&[400])),
        Case::new("method_70k_long", long_method, Expect::Reject),
        // --- Other request-target forms (RFC 9112 §3.2.3, §3.2.4): asterisk-form goes on as is;
        // CONNECT is for forward proxies (NGINX: 405), and a tunnel must not open to a backend
        // that speaks HTTP on a pooled connection.
        Case::new("asterisk_form_options", b"OPTIONS * HTTP/1.1\r\nHost: h.example\r\n\r\n", either(get("*").method("OPTIONS"))),
        Case::new("connect_authority_form", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", status(&[400, 405, 501])),
    ]
}

/// Sends one case and its follow-up, then judges what happened.
async fn run_case(proxy: SocketAddr, backend: &RawBackend, case: &Case) -> Result<String, String> {
    let mark = backend.mark();
    let mut stream = connect(proxy).await;
    let mut initial = Vec::new();
    if case.continue_first {
        let head_end = case
            .wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(case.wire.len(), |at| at + 4);
        let _ = stream.write_all(&case.wire[..head_end]).await;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut chunk = [0u8; 4096];
        while !initial.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => initial.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let _ = stream.write_all(&case.wire[head_end..]).await;
    } else {
        // The proxy may refuse and close before it read everything: a failed write is an outcome
        // like any other.
        let _ = stream.write_all(&case.wire).await;
    }
    let got = exchange(
        &mut stream,
        initial,
        case.expect.answers(),
        CASE_LIMIT,
        GRACE,
    )
    .await;
    drop(stream);
    let follow = follow_up(proxy, case.name).await;
    let window = backend.since(mark);
    let prefix = format!("/after-{}", case.name);
    let seen: Vec<Seen> = window
        .requests
        .iter()
        .filter(|s| !s.target.starts_with(&prefix))
        .cloned()
        .collect();

    let mut problems = Vec::new();
    if let Err(problem) = follow.and_then(|()| check_follow_up_seen(&window.requests, case.name)) {
        problems.push(problem);
    }
    if !window.errors.is_empty() {
        problems.push(format!(
            "the strict backend could not parse what it got: {:?}",
            window.errors
        ));
    }
    if seen.iter().any(|s| s.target.contains("smuggled")) {
        problems.push("the backend saw the hidden request as a request of its own".into());
    }
    if !got.junk.is_empty() {
        problems.push(format!(
            "the client got bytes that are not a response: {}",
            short(&got.junk, 120)
        ));
    }
    let verdict = match &case.expect {
        Expect::Reject => refused(&got, &seen, None, case.close_if_refused),
        Expect::RejectWith(codes) => refused(&got, &seen, Some(codes), case.close_if_refused),
        Expect::Forward(wants) => forwarded(&got, &seen, wants, case.close_if_forwarded),
        Expect::Either(wants) => {
            forwarded(&got, &seen, wants, case.close_if_forwarded).or_else(|not| {
                refused(&got, &seen, None, case.close_if_refused)
                    .map_err(|also| format!("neither forwarded right ({not}) nor refused ({also})"))
            })
        }
    };
    let what = format!(
        "client got: {}; backend saw: {}{}",
        got.describe(),
        if seen.is_empty() {
            "nothing".to_owned()
        } else {
            format!("{:?}", seen.iter().map(Seen::describe).collect::<Vec<_>>())
        },
        if window.partials.is_empty() {
            String::new()
        } else {
            format!(" (and partial: {:?})", window.partials)
        }
    );
    match verdict {
        Ok(outcome) if problems.is_empty() => Ok(outcome),
        Ok(_) => Err(format!(
            "expected {:?}: {}\n      -> {what}",
            case.expect,
            problems.join("; ")
        )),
        Err(reason) => {
            problems.insert(0, reason);
            Err(format!(
                "expected {:?}: {}\n      -> {what}",
                case.expect,
                problems.join("; ")
            ))
        }
    }
}

fn closed_after(got: &Exchange) -> bool {
    got.closed || got.answers.last().is_some_and(Answer::closes)
}

/// A refusal by the proxy itself (see [`Expect::Reject`]).
fn refused(
    got: &Exchange,
    seen: &[Seen],
    codes: Option<&[u16]>,
    must_close: bool,
) -> Result<String, String> {
    if !seen.is_empty() {
        return Err(format!(
            "the backend saw {} complete request(s)",
            seen.len()
        ));
    }
    if got.answers.iter().any(Answer::by_backend) {
        return Err("a backend answer reached the client".into());
    }
    let Some(answer) = got.answers.first() else {
        return match (got.closed, codes) {
            (true, None) => Ok("closed without an answer".into()),
            (true, Some(codes)) => Err(format!("closed without an answer, not a {codes:?}")),
            (false, _) => Err("no answer, and the connection stayed open".into()),
        };
    };
    let acceptable = match codes {
        Some(codes) => codes.contains(&answer.status),
        None => (400..500).contains(&answer.status) || matches!(answer.status, 501 | 505),
    };
    if !acceptable {
        return Err(match codes {
            Some(codes) => format!("refused with {}, not {codes:?}", answer.status),
            None => format!("answered {}, which is no refusal", answer.status),
        });
    }
    if got.answers.len() > 1 {
        return Err(format!(
            "{} more answer(s) after the refusal",
            got.answers.len() - 1
        ));
    }
    if must_close && !closed_after(got) {
        return Err(format!(
            "refused with {} but kept the connection open",
            answer.status
        ));
    }
    Ok(format!("refused {}", answer.status))
}

/// Forwarded as exactly `wants` (see [`Expect::Forward`]).
fn forwarded(
    got: &Exchange,
    seen: &[Seen],
    wants: &[Want],
    must_close: bool,
) -> Result<String, String> {
    if seen.len() != wants.len() {
        return Err(format!(
            "the backend saw {} request(s), not {}",
            seen.len(),
            wants.len()
        ));
    }
    for (seen, want) in seen.iter().zip(wants) {
        if seen.method != want.method || seen.target != want.target {
            return Err(format!(
                "the backend saw {} {}, not {} {}",
                short(seen.method.as_bytes(), 40),
                short(seen.target.as_bytes(), 60),
                want.method,
                want.target
            ));
        }
        if let Some(host) = want.host {
            if seen.hosts != [host] {
                return Err(format!(
                    "the backend saw Host {:?}, not {host:?}",
                    seen.hosts
                ));
            }
        }
        if seen.body != want.body {
            return Err(format!(
                "the backend saw body {}, not {}",
                short(&seen.body, 80),
                short(&want.body, 80)
            ));
        }
        if !seen.anomalies.is_empty() {
            return Err(format!("the proxy sent the backend {:?}", seen.anomalies));
        }
    }
    if got.answers.len() != wants.len() {
        return Err(format!(
            "the client got {} answer(s), not {}",
            got.answers.len(),
            wants.len()
        ));
    }
    for (answer, seen) in got.answers.iter().zip(seen) {
        if !answer.by_backend() || answer.status != 200 || answer.body != seen.answer().as_bytes() {
            return Err(format!(
                "the answer to {} was {}",
                seen.target,
                answer.describe()
            ));
        }
    }
    if must_close && !closed_after(got) {
        return Err("forwarded but kept the client connection open".into());
    }
    Ok("forwarded".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_corpus() {
    let backend = RawBackend::start().await;
    let proxy = TestProxy::start(LISTENER_KEYS, &[backend.address], "").await;
    let cases = corpus();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for case in &cases {
        match run_case(proxy.address, &backend, case).await {
            Ok(outcome) => outcomes.push(format!("{}: {outcome}", case.name)),
            Err(failure) => failures.push(format!("{}: {failure}", case.name)),
        }
    }
    eprintln!(
        "{} cases in {:.1} s, {} passed:\n  {}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        outcomes.len(),
        outcomes.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Mutations and splits.

/// The valid requests mutated and split below, with how many requests each holds.
const VALID: [(&[u8], usize); 3] = [
    (
        b"POST /m HTTP/1.1\r\nHost: m.example\r\nContent-Length: 5\r\n\r\nhello",
        1,
    ),
    (
        b"POST /m HTTP/1.1\r\nHost: m.example\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
        1,
    ),
    (
        b"GET /p1 HTTP/1.1\r\nHost: m.example\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: m.example\r\nContent-Length: 3\r\n\r\nabc",
        2,
    ),
];

/// A small deterministic generator (xorshift), as in the unit tests of `upstream/http1.rs`.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Whole lines a mutation may insert at the start of a line: the ones that change framing.
const LINES: [&[u8]; 10] = [
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Host: other.example\r\n",
    b" folded\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"\r\n",
    b"GET /inserted HTTP/1.1\r\nHost: m.example\r\n\r\n",
];

/// Up to three byte edits (replace, delete, insert) from an alphabet of framing-relevant bytes,
/// and sometimes one inserted line.
fn mutate(valid: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"0123456789abcdefABCDEF:;,= \t\r\n\x00\x0b+-xGPOST/H.\"\x7f\xff";
    let mut wire = valid.to_vec();
    for _ in 0..next() % 4 {
        let at = next() as usize % wire.len();
        let byte = ALPHABET[next() as usize % ALPHABET.len()];
        match next() % 3 {
            0 => wire[at] = byte,
            1 => {
                wire.remove(at);
            }
            _ => wire.insert(at, byte),
        }
    }
    if next() % 3 == 0 {
        let starts: Vec<usize> = (1..wire.len())
            .filter(|&at| wire[at - 1] == b'\n')
            .collect();
        if !starts.is_empty() {
            let at = starts[next() as usize % starts.len()];
            let line = LINES[next() as usize % LINES.len()];
            wire.splice(at..at, line.iter().copied());
        }
    }
    wire
}

/// Mutated requests: whatever the proxy makes of them, within bounded time, the backend never
/// sees more requests than the client got backend answers, never gets bytes a strict parser
/// refuses or messages with ambiguous framing, and a clean request afterwards gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_desync_the_backend() {
    let backend = RawBackend::start().await;
    let proxy = TestProxy::start(LISTENER_KEYS, &[backend.address], "").await;
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut answered, mut refused, mut silent, mut hung) = (0, 0, 0, 0);
    const PER_SEED: usize = 100;
    for (round, (valid, _)) in VALID.iter().enumerate() {
        let mut next = xorshift(
            0x9E37_79B9_7F4A_7C15 ^ (round as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
        );
        for index in 0..PER_SEED {
            let wire = mutate(valid, &mut next);
            let tag = format!("m{round}-{index}");
            let mark = backend.mark();
            let mut stream = connect(proxy.address).await;
            let _ = stream.write_all(&wire).await;
            // Half-close: the proxy sees the end of what the client will send, so an incomplete
            // request ends at once instead of at a timeout.
            let _ = stream.shutdown().await;
            let got = exchange(
                &mut stream,
                Vec::new(),
                usize::MAX,
                Duration::from_secs(2),
                Duration::ZERO,
            )
            .await;
            drop(stream);
            let follow = follow_up(proxy.address, &tag).await;
            let window = backend.since(mark);
            let prefix = format!("/after-{tag}");
            let seen: Vec<&Seen> = window
                .requests
                .iter()
                .filter(|s| !s.target.starts_with(&prefix))
                .collect();
            let from_backend = got.answers.iter().filter(|a| a.by_backend()).count();
            if from_backend > 0 {
                answered += 1;
            } else if got.answers.is_empty() {
                silent += 1;
            } else {
                refused += 1;
            }
            let mut problems = Vec::new();
            if got.timed_out {
                hung += 1;
                problems.push("no end within 2 s after the client finished sending".to_owned());
            }
            if seen.len() > from_backend {
                problems.push(format!(
                    "the backend saw {} request(s), the client got {from_backend} backend answer(s)",
                    seen.len()
                ));
            }
            if !window.errors.is_empty() {
                problems.push(format!("backend could not parse: {:?}", window.errors));
            }
            let framing: Vec<&String> = seen
                .iter()
                .flat_map(|s| &s.anomalies)
                .filter(|a| !a.starts_with("host:"))
                .collect();
            if !framing.is_empty() {
                problems.push(format!("forwarded with {framing:?}"));
            }
            if !got.junk.is_empty() {
                problems.push(format!("junk to the client: {}", short(&got.junk, 80)));
            }
            if let Err(problem) = follow.and_then(|()| check_follow_up_seen(&window.requests, &tag))
            {
                problems.push(problem);
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{tag} {}: {}\n      -> client got: {}; backend saw: {:?}",
                    short(&wire, 200),
                    problems.join("; "),
                    got.describe(),
                    seen.iter().map(|s| s.describe()).collect::<Vec<_>>()
                ));
            }
        }
    }
    eprintln!(
        "{} mutants in {:.1} s: {answered} answered by the backend, {refused} refused by the proxy, {silent} closed without an answer, {hung} hung",
        VALID.len() * PER_SEED,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} mutants broke an invariant:\n  {}",
        failures.len(),
        VALID.len() * PER_SEED,
        failures.join("\n  ")
    );
}

/// Valid requests written in pieces (cut at random points, a short pause between pieces) reach
/// the backend exactly as when written at once: the same heads byte for byte, the same bodies
/// (chunked bodies compared decoded: the proxy re-chunks them as the pieces arrive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_at_random_points_reach_the_backend_as_when_sent_whole() {
    let backend = RawBackend::start().await;
    let proxy = TestProxy::start(LISTENER_KEYS, &[backend.address], "").await;
    let mut next = xorshift(0x0123_4567_89AB_CDEF);
    let mut failures = Vec::new();
    for (valid, requests) in VALID {
        let send = |pieces: Vec<Vec<u8>>| {
            let backend = &backend;
            let address = proxy.address;
            async move {
                let mark = backend.mark();
                let mut stream = connect(address).await;
                for (index, piece) in pieces.iter().enumerate() {
                    if index > 0 {
                        tokio::task::yield_now().await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    stream.write_all(piece).await.unwrap();
                }
                let got = exchange(&mut stream, Vec::new(), requests, CASE_LIMIT, GRACE).await;
                let window = backend.since(mark);
                let received: Vec<(Vec<u8>, Vec<u8>)> = window
                    .requests
                    .iter()
                    .map(|s| (s.head.clone(), s.body.clone()))
                    .collect();
                let answers_ok = got.answers.len() == requests
                    && got
                        .answers
                        .iter()
                        .zip(&window.requests)
                        .all(|(a, s)| a.by_backend() && a.body == s.answer().as_bytes());
                (received, answers_ok, got.describe())
            }
        };
        let (whole, answers_ok, what) = send(vec![valid.to_vec()]).await;
        assert!(
            answers_ok && whole.len() == requests,
            "{} sent whole: {what}",
            short(valid, 100)
        );
        for _ in 0..8 {
            let mut cuts: Vec<usize> = (0..1 + next() % 3)
                .map(|_| 1 + next() as usize % (valid.len() - 1))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut from = 0;
            for &cut in &cuts {
                pieces.push(valid[from..cut].to_vec());
                from = cut;
            }
            pieces.push(valid[from..].to_vec());
            let (split, answers_ok, what) = send(pieces).await;
            if !answers_ok || split != whole {
                failures.push(format!(
                    "{} cut at {cuts:?}: client got {what}; backend got {:?}, whole it got {:?}",
                    short(valid, 60),
                    split
                        .iter()
                        .map(|(h, b)| format!("{} + {}", short(h, 200), short(b, 60)))
                        .collect::<Vec<_>>(),
                    whole
                        .iter()
                        .map(|(h, b)| format!("{} + {}", short(h, 200), short(b, 60)))
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
