//! Placeholder until the pull benchmark is written.
fn main() {}
