//! hearsay-balancer
