//! hearsay-proxy
