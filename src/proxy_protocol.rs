//! PROXY protocol headers (placeholder, filled in below).
