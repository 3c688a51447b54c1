//! Prints the policy and requests the differential generator makes for one seed, to reproduce
//! a divergence the differential test reports: `cargo run -p peerpod-policy --example diffcase -- SEED`.

use peerpod_policy::differential::generate;

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let case = generate::case(&mut generate::Seeded::new(seed));
    println!("{}", case.policy);
    for (entrypoint, input) in &case.requests {
        println!("# {entrypoint} {input}");
    }
}
