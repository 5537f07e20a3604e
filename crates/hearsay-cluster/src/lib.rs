//! hearsay's cluster layer. Only this crate knows chitchat.

pub mod transport;
