//! Blocking test backends on their own threads, for the end-to-end tests (which drive the
//! binary from plain threads).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// A plain HTTP/1.1 backend on a thread: `/slow` answers after 700 ms, `/slow?ms=N` after N ms
/// (and says on the channel that it started), anything else at once.
pub fn start_backend() -> (SocketAddr, mpsc::Receiver<()>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let (slow_started, slow_seen) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in socket.incoming().flatten() {
            let slow_started = slow_started.clone();
            std::thread::spawn(move || serve_backend_connection(stream, slow_started));
        }
    });
    (address, slow_seen)
}

pub fn serve_backend_connection(stream: TcpStream, slow_started: mpsc::Sender<()>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        if request_line.contains("/slow") {
            let ms = request_line
                .split("ms=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .unwrap_or(700);
            let _ = slow_started.send(());
            std::thread::sleep(Duration::from_millis(ms));
        }
        let port = writer.local_addr().map(|a| a.port()).unwrap_or(0);
        let body = format!("backend {port} saw {}", request_line.trim());
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
