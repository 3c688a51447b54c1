//! Decision latency of the agent policy engine on genpolicy-sized policies.
//!
//! Run with `cargo bench -p peerpod-policy --bench decision` (or `make bench`). Two policies:
//!
//! - `benches/data/genpolicy-sized.rego`: our own policy of genpolicy's size and shape for a
//!   3-container pod, with requests in `benches/data/requests/`;
//! - the real genpolicy policy in `../shared/conformance/genpolicy/` (skipped with a note when
//!   the shared files are not next to the project), whose README gives the upstream agent's
//!   timings on the same requests.
//!
//! Every figure is printed next to a baseline measured in the same process: the same regorus
//! engine driven the way the upstream Kata agent drives it (one engine behind one lock, a query
//! per request, state written back with `clear_data` + `add_data`). Ratios are what to compare:
//! these machines are noisy; each row is the best of five rounds, on both sides alike, and each
//! request's 2-thread scaling is printed next to the machine's own (two threads on two copies of
//! the policy, sharing nothing). `BENCH_ITERS` sets the least iterations per measurement
//! (default 300; fast requests get more, so that a round lasts about 300 ms);
//! `BENCH_ONLY=own` or `BENCH_ONLY=shared` runs one of the two policies.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerpod_policy::AgentPolicy;
use serde_json::Value;

/// A way of deciding requests: ours, or the upstream-style baseline.
trait Decider: Send + Sync {
    fn allowed(&self, entrypoint: &str, input: &Value) -> bool;
}

impl Decider for AgentPolicy {
    fn allowed(&self, entrypoint: &str, input: &Value) -> bool {
        self.decide(entrypoint, input).is_allowed()
    }
}

/// The upstream agent's way of using regorus: a single engine under a global lock, evaluated
/// with `eval_query`, and after every state change the whole data document is cleared and
/// re-added, which forces the engine to re-analyse the policy on the next request.
struct UpstreamStyle {
    engine: Mutex<regorus::Engine>,
}

impl UpstreamStyle {
    fn new(text: &str) -> Self {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        engine.set_strict_builtin_errors(false);
        engine.set_gather_prints(true);
        engine
            .add_policy("policy.rego".into(), text.into())
            .expect("policy compiles");
        engine
            .add_data(regorus::Value::from_json_str(r#"{"pstate": {}}"#).expect("json"))
            .expect("data");
        Self {
            engine: Mutex::new(engine),
        }
    }
}

impl Decider for UpstreamStyle {
    fn allowed(&self, entrypoint: &str, input: &Value) -> bool {
        let mut engine = self.engine.lock().expect("lock");
        engine.set_input_json(&input.to_string()).expect("input");
        let Ok(results) = engine.eval_query(format!("data.agent_policy.{entrypoint}"), false)
        else {
            return false;
        };
        let _prints = engine.take_prints();
        let Some(value) = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| e.value.clone())
        else {
            return false;
        };
        match value {
            regorus::Value::Bool(b) => b,
            regorus::Value::Object(_) => {
                let json = serde_json::to_value(&value).expect("json");
                let allowed = json["allowed"] == Value::Bool(true);
                if allowed && json["ops"].is_array() {
                    let patch: json_patch::Patch =
                        serde_json::from_value(json["ops"].clone()).expect("patch");
                    let mut data = serde_json::to_value(engine.get_data()).expect("data");
                    if json_patch::patch(&mut data, &patch).is_err() {
                        return false;
                    }
                    engine.clear_data();
                    engine.add_data(regorus::Value::from(data)).expect("data");
                }
                allowed
            }
            _ => false,
        }
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

impl Stats {
    fn from(mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.50),
            p99: at(0.99),
            per_second: samples.len() as f64 / wall.as_secs_f64(),
        }
    }
}

/// Loads measured on each side for the load figure.
const LOAD_RUNS: usize = 15;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Measurement rounds per row; the round with the most decisions/s is reported, on both
/// sides alike. A neighbour that takes a vCPU for part of one round (these are shared
/// machines) otherwise decides the 2-thread figures: single rounds swung by 30 %.
const ROUNDS: usize = 5;

/// The shortest round worth timing per thread, the pilot's iterations that size it, and the
/// most iterations a round is given.
const MIN_ROUND: Duration = Duration::from_millis(300);
const PILOT: usize = 30;
const MAX_ITERS: usize = 50_000;

/// Decides `make_input(i)` for `iters` iterations on each of `threads` threads, thread `t`
/// asking `deciders[t % deciders.len()]`; the best of `rounds` rounds.
fn measure(
    deciders: &[Arc<dyn Decider>],
    entrypoint: &'static str,
    expect: bool,
    threads: usize,
    iters: usize,
    rounds: usize,
    make_input: &Arc<dyn Fn(usize) -> Value + Send + Sync>,
) -> Stats {
    // Rounds of a few milliseconds measure thread start-up more than decisions (300 denied
    // execs take 3 ms): a 1-thread pilot sizes each round to about MIN_ROUND.
    let iters = if rounds > 1 {
        let pilot = measure_once(&deciders[..1], entrypoint, expect, 1, PILOT, {
            // Inputs of its own, so that state-changing requests stay fresh.
            let make = Arc::clone(make_input);
            Arc::new(move |i| make(i + 3_000_000))
        });
        let per_round = MIN_ROUND.as_secs_f64() / pilot.p50.as_secs_f64().max(1e-7);
        iters.max(per_round.min(MAX_ITERS as f64) as usize)
    } else {
        iters
    };
    (0..rounds)
        .map(|round| {
            let shift = round * threads * iters;
            let make = Arc::clone(make_input);
            let make: Arc<dyn Fn(usize) -> Value + Send + Sync> =
                Arc::new(move |i| make(i + shift));
            measure_once(deciders, entrypoint, expect, threads, iters, make)
        })
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
        .expect("at least one round")
}

fn measure_once(
    deciders: &[Arc<dyn Decider>],
    entrypoint: &'static str,
    expect: bool,
    threads: usize,
    iters: usize,
    make_input: Arc<dyn Fn(usize) -> Value + Send + Sync>,
) -> Stats {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let decider = Arc::clone(&deciders[t % deciders.len()]);
            let make_input = Arc::clone(&make_input);
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(iters);
                for i in 0..iters {
                    let input = make_input(t * iters + i);
                    let begin = Instant::now();
                    let allowed = decider.allowed(entrypoint, &input);
                    samples.push(begin.elapsed());
                    assert_eq!(
                        allowed, expect,
                        "{entrypoint} iteration {i}: wrong decision"
                    );
                }
                samples
            })
        })
        .collect();
    let samples: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    Stats::from(samples, start.elapsed())
}

struct Case {
    label: &'static str,
    entrypoint: &'static str,
    expect: bool,
    make_input: Arc<dyn Fn(usize) -> Value + Send + Sync>,
}

fn run_cases(
    title: &str,
    text: &str,
    setup: &[(String, Value)],
    cases: &[Case],
    iters: usize,
    rounds: usize,
) {
    println!("\n== {title}");
    // Load is measured as the median of LOAD_RUNS loads on each side, alternating, so that
    // neither side alone pays for cold caches or a noisy neighbour.
    let mut loads = Vec::with_capacity(LOAD_RUNS);
    let mut base_loads = Vec::with_capacity(LOAD_RUNS);
    for _ in 0..LOAD_RUNS {
        let start = Instant::now();
        let policy = AgentPolicy::load(text).expect("policy loads");
        loads.push(start.elapsed());
        drop(policy);
        let start = Instant::now();
        let baseline = UpstreamStyle::new(text);
        // regorus analyses the policy at the first evaluation: count it, as our load does.
        let _ = baseline.allowed("NoSuchRequest", &Value::Null);
        base_loads.push(start.elapsed());
    }
    let policy = AgentPolicy::load(text).expect("policy loads");
    let (compiled, refusals) = policy.compiled_coverage();
    println!(
        "compiled entry points: {} (the rest on the interpreter; not compiled: {refusals:?})",
        compiled.len()
    );
    let ours: Arc<dyn Decider> = Arc::new(policy);
    // A second copy, sharing nothing with the first: two threads on two copies is what the
    // machine allows, the ceiling for two threads on one.
    let copy: Arc<dyn Decider> = Arc::new(AgentPolicy::load(text).expect("policy loads"));
    let baseline = UpstreamStyle::new(text);
    let _ = baseline.allowed("NoSuchRequest", &Value::Null);
    let baseline: Arc<dyn Decider> = Arc::new(baseline);
    let (load, base_load) = (median(&mut loads), median(&mut base_loads));
    println!(
        "policy load to serving, median of {LOAD_RUNS}: {} (baseline parse + first analysis: {}, {:.1}x)",
        ms(load),
        ms(base_load),
        base_load.as_secs_f64() / load.as_secs_f64()
    );
    for (entrypoint, input) in setup {
        for decider in [&ours, &copy] {
            assert!(
                decider.allowed(entrypoint, input),
                "setup {entrypoint} denied"
            );
        }
        assert!(
            baseline.allowed(entrypoint, input),
            "baseline setup {entrypoint} denied"
        );
    }
    println!(
        "{:<34} {:>7} {:>11} {:>11} {:>12} | {:>11} {:>12} | {:>8}",
        "request", "threads", "p50", "p99", "decisions/s", "base p50", "base dec/s", "speed-up"
    );
    for case in cases {
        let mut per_second = Vec::new();
        for threads in [1, 2] {
            let ours_stats = measure(
                std::slice::from_ref(&ours),
                case.entrypoint,
                case.expect,
                threads,
                iters,
                rounds,
                &case.make_input,
            );
            // The baseline gets the same inputs shifted, so state-changing cases stay fresh.
            let shifted = {
                let make = case.make_input.clone();
                Arc::new(move |i: usize| make(i + 1_000_000))
                    as Arc<dyn Fn(usize) -> Value + Send + Sync>
            };
            let base_stats = measure(
                std::slice::from_ref(&baseline),
                case.entrypoint,
                case.expect,
                threads,
                iters,
                rounds,
                &shifted,
            );
            per_second.push(ours_stats.per_second);
            println!(
                "{:<34} {:>7} {:>11} {:>11} {:>12.0} | {:>11} {:>12.0} | {:>7.1}x",
                case.label,
                threads,
                ms(ours_stats.p50),
                ms(ours_stats.p99),
                ours_stats.per_second,
                ms(base_stats.p50),
                base_stats.per_second,
                ours_stats.per_second / base_stats.per_second,
            );
        }
        let apart = {
            let make = case.make_input.clone();
            Arc::new(move |i: usize| make(i + 2_000_000))
                as Arc<dyn Fn(usize) -> Value + Send + Sync>
        };
        let ceiling = measure(
            &[Arc::clone(&ours), Arc::clone(&copy)],
            case.entrypoint,
            case.expect,
            2,
            iters,
            rounds,
            &apart,
        );
        println!(
            "{:<34} 2 threads / 1: {:.2}x on one policy; {:.2}x on two copies sharing nothing (the machine's ceiling)",
            "",
            per_second[1] / per_second[0],
            ceiling.per_second / per_second[0],
        );
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `input` with its container id (and exec id) made unique for iteration `i`.
fn with_fresh_id(input: &Value, i: usize) -> Value {
    let mut input = input.clone();
    let id = format!("{:064x}", 0x00c0_ffee_0000_u64 + i as u64);
    input["container_id"] = Value::String(id.clone());
    if input.get("exec_id").is_some() {
        input["exec_id"] = Value::String(id);
    }
    input
}

fn own_policy(iters: usize, rounds: usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/data");
    let text = std::fs::read_to_string(dir.join("genpolicy-sized.rego")).expect("bench policy");
    let lines = text.lines().count();
    let create = read_json(&dir.join("requests/create-app.json"));
    let exec = read_json(&dir.join("requests/exec-probe.json"));
    let exec_denied = read_json(&dir.join("requests/exec-denied.json"));
    let setup = vec![("CreateContainerRequest".to_owned(), create.clone())];
    let cases = vec![
        Case {
            label: "CreateContainerRequest (allowed, +state)",
            entrypoint: "CreateContainerRequest",
            expect: true,
            make_input: Arc::new(move |i| with_fresh_id(&create, i)),
        },
        Case {
            label: "ExecProcessRequest (allowed)",
            entrypoint: "ExecProcessRequest",
            expect: true,
            make_input: Arc::new(move |_| exec.clone()),
        },
        Case {
            label: "ExecProcessRequest (denied)",
            entrypoint: "ExecProcessRequest",
            expect: false,
            make_input: Arc::new(move |_| exec_denied.clone()),
        },
    ];
    run_cases(
        &format!("benches/data/genpolicy-sized.rego ({lines} lines), 3-container pod"),
        &text,
        &setup,
        &cases,
        iters,
        rounds,
    );
}

fn shared_policy(iters: usize, rounds: usize) {
    let dir = std::env::var_os("PEERPOD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("conformance/genpolicy");
    let Ok(text) = std::fs::read_to_string(dir.join("policy.rego")) else {
        println!(
            "\n(shared genpolicy fixture not found at {}; skipping it)",
            dir.display()
        );
        return;
    };
    let cases_json = read_json(&dir.join("cases.json"));
    let all = cases_json.as_array().expect("cases array");
    let request = |i: usize| all[i]["request"].clone();
    let kind = |i: usize| all[i]["kind"].as_str().expect("kind").to_owned();
    // Cases 0..=9 bring the sandbox up: interfaces, routes, sandbox, three containers started.
    let setup: Vec<(String, Value)> = (0..=9).map(|i| (kind(i), request(i))).collect();
    let (cc, exec, exec_deny, state_deny) = (request(6), request(16), request(18), request(10));
    let cases = vec![
        Case {
            label: "CreateContainerRequest [bench-cc]",
            entrypoint: "CreateContainerRequest",
            expect: true,
            make_input: Arc::new(move |_| cc.clone()),
        },
        Case {
            label: "CreateContainerRequest [bench-state]",
            entrypoint: "CreateContainerRequest",
            expect: false,
            make_input: Arc::new(move |_| state_deny.clone()),
        },
        Case {
            label: "ExecProcessRequest [bench-exec]",
            entrypoint: "ExecProcessRequest",
            expect: true,
            make_input: Arc::new(move |_| exec.clone()),
        },
        Case {
            label: "ExecProcessRequest [bench-exec-deny]",
            entrypoint: "ExecProcessRequest",
            expect: false,
            make_input: Arc::new(move |_| exec_deny.clone()),
        },
    ];
    run_cases(
        "shared genpolicy policy (upstream agent: CC 19.8/23.9 ms, exec 11.6/13.4 ms p50/p99)",
        &text,
        &setup,
        &cases,
        iters,
        rounds,
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less arguments; keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let iters = if quick {
        5
    } else {
        std::env::var("BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    };
    let rounds = if quick { 1 } else { ROUNDS };
    println!(
        "decision benchmark: {iters} iterations per measurement per thread, best of {rounds} rounds"
    );
    // regorus reports a builtin's bad arguments (e.g. genpolicy's to_number on every
    // environment value) as anyhow errors, which capture a stack trace when these are set:
    // about 5 % of an exec decision, on both sides. The agent's service does not set them.
    // RUST_LIB_BACKTRACE, when set, decides alone (as in std).
    let capture = std::env::var("RUST_LIB_BACKTRACE")
        .or_else(|_| std::env::var("RUST_BACKTRACE"))
        .is_ok_and(|v| v != "0");
    if capture {
        println!(
            "note: RUST_BACKTRACE or RUST_LIB_BACKTRACE is set, so regorus's builtin errors \
             capture backtraces and both sides run slower than in the agent; run with \
             `RUST_LIB_BACKTRACE=0`"
        );
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "shared" {
        own_policy(iters, rounds);
    }
    if only != "own" {
        shared_policy(iters, rounds);
    }
}
