//! Loops one decision of the shared genpolicy fixture, for profilers and A/B timings (not the
//! benchmark: see `benches/decision.rs`).
//!
//! `cargo run --release -p peerpod-policy --example profile_decide -- CASE ITERS [keep]`: CASE
//! indexes `cases.json` (6: an allowed CreateContainer, 16: an allowed exec), after cases 0..=9
//! brought the sandbox up. `keep` adds one import to the policy so that its keyword imports are
//! not blanked at load, for comparing with and without that. THREADS=n decides on n threads
//! at once; SEPARATE=1 gives each thread its own copy of the policy (nothing shared).

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
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // SEPARATE=1: each thread decides on its own copy of the policy, sharing nothing; the
    // decisions/s of that run is what the machine allows, the ceiling for the shared run.
    let separate = std::env::var("SEPARATE").is_ok_and(|v| v == "1");
    let load = || {
        let policy = AgentPolicy::load(&text).expect("the policy loads");
        for c in &all[0..=9] {
            let kind = c["kind"].as_str().expect("kind");
            assert!(policy.decide(kind, &c["request"]).is_allowed(), "setup");
        }
        std::sync::Arc::new(policy)
    };
    let shared = load();
    let policies: Vec<_> = (0..threads)
        .map(|_| if separate { load() } else { shared.clone() })
        .collect();
    let kind = all[case]["kind"].as_str().expect("kind");
    let request = &all[case]["request"];
    // Single decisions timed; the minimum and the median filter out the preemption a shared
    // machine adds.
    let wall = std::time::Instant::now();
    let (mut samples, allowed) = std::thread::scope(|s| {
        let workers: Vec<_> = policies
            .iter()
            .map(|policy| {
                s.spawn(move || {
                    let mut samples = Vec::with_capacity(iters);
                    let mut allowed = 0;
                    for _ in 0..iters {
                        let start = std::time::Instant::now();
                        if policy.decide(kind, request).is_allowed() {
                            allowed += 1;
                        }
                        samples.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                    (samples, allowed)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).fold(
            (Vec::new(), 0),
            |(mut all, n), (s, a)| {
                all.extend(s);
                (all, n + a)
            },
        )
    });
    let wall = wall.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    println!(
        "{kind}: {allowed}/{} allowed on {threads} thread(s){}, min {:.3} ms, p50 {:.3} ms, {:.0} decisions/s ({:?} imports)",
        iters * threads,
        if separate { " (separate policies)" } else { "" },
        samples.first().copied().unwrap_or_default(),
        samples.get(samples.len() / 2).copied().unwrap_or_default(),
        samples.len() as f64 / wall,
        shared.parsed_imports()
    );
}
