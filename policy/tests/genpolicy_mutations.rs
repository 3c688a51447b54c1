//! Mutated genpolicy requests replayed on the real genpolicy policy, through the engine and the
//! reference interpreter in lockstep: every decision, every print line and the state after every
//! request must be the same.
//!
//! The requests are the 32 of `../shared/conformance/genpolicy/cases.json`, changed at the
//! value level (a string cut or swapped for another request's, an array element dropped or
//! doubled, a key removed, a type changed...), so that most still reach deep into the policy's
//! rules and some get through. `POLICY_REPLAY_MUTATIONS` sets how many (default 1,000) and
//! `POLICY_REPLAY_SEED` the seed, for long runs.

use peerpod_policy::AgentPolicy;
use peerpod_policy::differential::Reference;
use serde_json::Value;

#[path = "../../tests/src/shared_fixture.rs"]
mod shared_fixture;

/// A small deterministic generator (SplitMix64), so that a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every string in `value`, to splice plausible values from one request into another.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Changes one node of `value`, reached by a random walk from the root.
fn mutate(rng: &mut Rng, value: &mut Value, pool: &[String]) {
    // Walk down: at each level, stop with probability 1/4 (or at a leaf).
    let children = match value {
        Value::Array(items) => items.len(),
        Value::Object(map) => map.len(),
        _ => 0,
    };
    if children > 0 && rng.below(4) != 0 {
        let i = rng.below(children);
        let child = match value {
            Value::Array(items) => items.get_mut(i),
            Value::Object(map) => map.values_mut().nth(i),
            _ => None,
        };
        if let Some(child) = child {
            mutate(rng, child, pool);
            return;
        }
    }
    let another = || Value::String(String::new());
    match value {
        Value::String(s) => match rng.below(6) {
            0 => s.push('x'),
            1 => {
                s.pop();
            }
            2 => s.clear(),
            3 | 4 => {
                if let Some(other) = pool.get(rng.below(pool.len())) {
                    *s = other.clone();
                }
            }
            _ => *value = Value::from(rng.below(3)),
        },
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or_default();
            *value = match rng.below(4) {
                0 => Value::from(n + 1),
                1 => Value::from(0),
                2 => Value::from(-1),
                _ => Value::String(n.to_string()),
            };
        }
        Value::Bool(b) => *b = !*b,
        Value::Array(items) => match rng.below(4) {
            0 if !items.is_empty() => {
                let i = rng.below(items.len());
                items.remove(i);
            }
            1 if !items.is_empty() => {
                let i = rng.below(items.len());
                let copy = items[i].clone();
                items.push(copy);
            }
            2 => items.clear(),
            _ => items.push(
                pool.get(rng.below(pool.len()))
                    .map_or_else(another, |s| Value::String(s.clone())),
            ),
        },
        Value::Object(map) => match rng.below(3) {
            0 if !map.is_empty() => {
                let key = map.keys().nth(rng.below(map.len())).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            1 => {
                map.insert("x".to_owned(), Value::Null);
            }
            _ => *value = Value::Null,
        },
        Value::Null => *value = Value::Object(serde_json::Map::new()),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_requests_are_decided_and_printed_as_the_reference_does() {
    let Some(dir) = shared_fixture::shared_fixture("conformance/genpolicy") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("policy.rego")).expect("policy.rego");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases"))
            .expect("cases.json is JSON");
    let mutations = env_u64("POLICY_REPLAY_MUTATIONS", 1_000);
    let mut rng = Rng(env_u64("POLICY_REPLAY_SEED", 11));

    let policy = AgentPolicy::load(&text).expect("genpolicy's policy compiles");
    let mut reference = Reference::load(&text).expect("the reference loads it");
    let mut pool = Vec::new();
    for case in &cases {
        strings(&case["request"], &mut pool);
    }
    // The sandbox and its containers first, as in the pod's life.
    for case in &cases[..=9] {
        let kind = case["kind"].as_str().expect("kind");
        assert!(policy.decide(kind, &case["request"]).is_allowed());
        assert!(reference.decide(kind, &case["request"]).allowed);
    }

    let mut allowed = 0;
    let mut compiled = 0;
    for n in 0..mutations {
        let case = &cases[rng.below(cases.len())];
        let kind = case["kind"].as_str().expect("kind");
        let mut request = case["request"].clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut request, &pool);
        }
        let context = || format!("mutation {n}: {kind} {request}");
        // The compiled form (which the engine decides with) against the interpreter, directly.
        match policy.compiled_check(kind, &request) {
            Some(Ok(())) => compiled += 1,
            Some(Err(what)) => panic!("{what}: {}", context()),
            None => {}
        }
        let decision = policy.decide(kind, &request);
        let expected = reference.decide(kind, &request);
        assert_eq!(decision.is_allowed(), expected.allowed, "{}", context());
        assert_eq!(
            decision.prints(),
            expected.prints.as_slice(),
            "{}",
            context()
        );
        assert_eq!(policy.state(), reference.state(), "{}", context());
        allowed += usize::from(expected.allowed);
    }
    eprintln!(
        "{mutations} mutated requests, {allowed} allowed, {compiled} on the compiled form, no \
         divergence"
    );
    // genpolicy's policy is compiled whole: every request took the compiled path.
    assert_eq!(compiled as u64, mutations);
    // Mutations that never get through test only the denials.
    assert!(
        mutations < 100 || allowed * 20 > mutations as usize,
        "{allowed} allowed"
    );
}
