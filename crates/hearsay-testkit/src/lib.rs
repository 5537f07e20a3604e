//! Test support shared by the proxy's integration tests (`crates/hearsay-proxy/tests`) and the
//! end-to-end tests of the binary (`tests/`): bounded waits ([`wait`]), test backends, async
//! ones on the test's runtime ([`backend`]) and blocking ones on threads ([`thread_backend`]),
//! certificates for TLS tests ([`tls`]) and an OTLP trace receiver ([`otlp`]).
//! Never a dependency of anything but tests.

pub mod backend;
pub mod otlp;
pub mod thread_backend;
pub mod tls;
pub mod wait;

pub use wait::{wait_for, wait_until};
