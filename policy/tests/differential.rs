//! The engine against the reference interpreter on generated policies and requests: every
//! decision and every state must be the same. `POLICY_DIFF_CASES` sets how many cases (default
//! 2,000), `POLICY_DIFF_SEED` the first seed and `POLICY_DIFF_MAX_REQUESTS` the longest request
//! sequence per policy (default 6), for long runs.

use peerpod_policy::AgentPolicy;
use peerpod_policy::differential::{Agreement, check, generate};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn engine_decides_generated_cases_as_the_reference() {
    let cases = env_u64("POLICY_DIFF_CASES", 2_000);
    let first = env_u64("POLICY_DIFF_SEED", 0);
    let max_requests = usize::try_from(env_u64("POLICY_DIFF_MAX_REQUESTS", 6)).unwrap_or(6);
    let (mut loaded, mut requests, mut allowed, mut hoisted) = (0u64, 0usize, 0usize, 0u64);
    let mut compiled = 0usize;
    let mut over_limit = 0u64;
    let mut redecided = 0usize;
    let mut failures = Vec::new();
    for seed in first..first + cases {
        let case = generate::case_with(&mut generate::Seeded::new(seed), max_requests);
        match check(&case, |text| AgentPolicy::load(text).ok()) {
            Ok(Agreement::BothRefused) => {}
            Ok(Agreement::Decided {
                requests: r,
                allowed: a,
                hoisted: h,
                compiled: c,
                over_limit: o,
                redecided: d,
            }) => {
                redecided += d;
                over_limit += u64::from(o);
                compiled += c;
                loaded += 1;
                hoisted += u64::from(h);
                requests += r;
                allowed += a;
            }
            Err(d) => {
                if failures.len() < 3 {
                    failures.push(format!("seed {seed}: {d}"));
                } else {
                    failures.push(format!("seed {seed}"));
                }
            }
        }
    }
    eprintln!(
        "{cases} cases: {loaded} policies loaded ({hoisted} with hoisted constants), {requests} \
         requests ({compiled} also decided by the compiled form), {allowed} allowed, \
         {over_limit} stopped past the evaluation time limit, {redecided} decided again after \
         a time-limit denial, {} divergences",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} divergences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The generator must produce policies that load and requests that are allowed, or it
    // tests nothing.
    assert!(
        loaded * 2 > cases,
        "only {loaded} of {cases} generated policies loaded"
    );
    assert!(
        allowed * 10 > requests,
        "only {allowed} of {requests} requests allowed"
    );
    // A differential in which nothing is compiled proves nothing about the compiled form.
    assert!(
        compiled * 2 > requests,
        "only {compiled} of {requests} requests were on the compiled form"
    );
    assert!(
        hoisted * 10 > loaded,
        "only {hoisted} of {loaded} policies had constants hoisted"
    );
}
