//! Loops one decision of the shared genpolicy fixture, for profilers and A/B timings (not the
//! benchmark: see `benches/decision.rs`).
//!
//! `cargo run --release -p peerpod-policy --example profile_decide -- CASE ITERS [keep]`: CASE
//! indexes `cases.json` (6: an allowed CreateContainer, 16: an allowed exec), after cases 0..=9
//! brought the sandbox up. `keep` adds one import to the policy so that its keyword imports are
//! not blanked at load, for comparing with and without that.

use peerpod_policy::AgentPolicy;

fn main() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/genpolicy");
    let text = std::fs::read_to_string(dir.join("policy.rego")).expect("the shared policy");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases"))
            .expect("cases.json is JSON");
    let all = cases.as_array().expect("an array of cases");
    let args: Vec<String> = std::env::args().collect();
    let case: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let iters: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let text = if args.get(3).map(String::as_str) == Some("keep") {
        text.replacen(
            "import future.keywords.if\n",
            "import future.keywords.if\nimport data.unused as unused\n",
            1,
        )
    } else {
        text
    };
    let policy = AgentPolicy::load(&text).expect("the policy loads");
    for c in &all[0..=9] {
        let kind = c["kind"].as_str().expect("kind");
        assert!(policy.decide(kind, &c["request"]).is_allowed(), "setup");
    }
    let kind = all[case]["kind"].as_str().expect("kind");
    let request = &all[case]["request"];
    // Single decisions timed; the minimum and the median filter out the preemption a shared
    // machine adds.
    let mut samples = Vec::with_capacity(iters);
    let mut allowed = 0;
    for _ in 0..iters {
        let start = std::time::Instant::now();
        if policy.decide(kind, request).is_allowed() {
            allowed += 1;
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{kind}: {allowed}/{iters} allowed, min {:.3} ms, p50 {:.3} ms ({:?} imports)",
        samples.first().copied().unwrap_or_default(),
        samples.get(samples.len() / 2).copied().unwrap_or_default(),
        policy.parsed_imports()
    );
}
