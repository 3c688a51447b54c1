//! The decryption throughput benchmark: not written yet (this commit carries the API).
fn main() {}
