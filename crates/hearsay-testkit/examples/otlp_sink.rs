//! An OTLP/gRPC trace sink for benchmarks: receives spans on ADDRESS (default 127.0.0.1:4317),
//! counts them and prints the count every 5 s.
//!   cargo run --release -p hearsay-testkit --example otlp_sink -- 127.0.0.1:4317

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let sink = hearsay_testkit::otlp::OtlpReceiver::start_on(&address, true);
    println!("receiving spans at {}", sink.endpoint());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        println!("spans received: {}", sink.count());
    }
}
