//! Differential testing of the policy engine against the reference: regorus's interpreter
//! configured as the upstream Kata agent configures it.
//!
//! [`generate`] makes small policies and request sequences that exercise Rego's corners;
//! [`check`] replays a case through [`AgentPolicy`] (whatever fast path it takes) and through
//! [`Reference`], a plain interpreter that shares no code with the engine, and reports the first
//! request on which their decisions, their print lines or their states differ. The in-tree test and the
//! `policy_differential` fuzz target both call it.

pub mod generate;

use regorus::Value;

use crate::AgentPolicy;

/// The reference evaluator: one regorus interpreter, strict builtin errors off, the state in
/// `data.pstate` replaced after each allowed state change — as the upstream agent does it —
/// with the engine's documented limits on policy text (wider than regorus's defaults, which
/// refuse lines over 1,024 columns that generated policies have).
pub struct Reference {
    engine: regorus::Engine,
    data: serde_json::Value,
}

/// The state size past which [`check`] stops replaying a case.
const MAX_STATE_BYTES: usize = 64 * 1024;

/// What the reference decided on one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RefDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// What the policy printed while deciding, as the interpreter gathers it.
    pub prints: Vec<String>,
}

impl Reference {
    /// Loads `text` with an empty state; `None` when the interpreter refuses the text.
    pub fn load(text: &str) -> Option<Self> {
        Self::load_dialect(text, false)
    }

    /// Like [`Reference::load`], reading the text as Rego v0 when `rego_v0` is set.
    pub fn load_dialect(text: &str, rego_v0: bool) -> Option<Self> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(rego_v0);
        engine.set_strict_builtin_errors(false);
        engine.set_gather_prints(true);
        engine.set_policy_length_config(regorus::PolicyLengthConfig {
            max_col: std::num::NonZeroU32::new(64 * 1024)?,
            max_file_bytes: std::num::NonZeroUsize::new(16 * 1024 * 1024)?,
            max_lines: std::num::NonZeroUsize::new(200_000)?,
        });
        engine
            .add_policy("policy.rego".to_owned(), text.to_owned())
            .ok()?;
        let data = serde_json::json!({ "pstate": {} });
        engine.add_data(Value::from(data.clone())).ok()?;
        // regorus analyses a policy at its first evaluation; a policy it cannot analyse fails
        // every request, which is what refusing it up front amounts to.
        engine.set_input(Value::new_object());
        engine.eval_query("true".to_owned(), false).ok()?;
        Some(Self { engine, data })
    }

    /// The value of the rule `data.agent_policy.<rule>` for an empty input, as JSON.
    pub fn rule_value(&mut self, rule: &str) -> Option<serde_json::Value> {
        self.engine.set_input(Value::new_object());
        let value = self
            .engine
            .eval_rule(format!("data.agent_policy.{rule}"))
            .ok()?;
        serde_json::to_value(&value).ok()
    }

    /// The state document (`data.pstate`).
    pub fn state(&self) -> serde_json::Value {
        self.data["pstate"].clone()
    }

    /// Decides one request and applies its state operations when it is allowed.
    pub fn decide(&mut self, entrypoint: &str, input: &serde_json::Value) -> RefDecision {
        self.engine.set_input(Value::from(input.clone()));
        let result = self
            .engine
            .eval_rule(format!("data.agent_policy.{entrypoint}"));
        let prints = self.engine.take_prints().unwrap_or_default();
        let failing_allowed = matches!(
            self.engine
                .eval_rule("data.agent_policy.AllowRequestsFailingPolicy".to_owned()),
            Ok(Value::Bool(true))
        );
        let (allowed, soft, ops) = match result {
            Ok(Value::Bool(b)) => (b, true, None),
            Ok(Value::Undefined) => (false, true, None),
            Ok(value @ Value::Object(_)) => {
                let json = serde_json::to_value(&value).unwrap_or_default();
                match json.get("allowed") {
                    Some(serde_json::Value::Bool(true)) => match json.get("ops") {
                        None | Some(serde_json::Value::Null) => (true, false, None),
                        Some(ops) => {
                            match serde_json::from_value::<json_patch::Patch>(ops.clone()) {
                                Ok(p) => (true, false, Some(p)),
                                Err(_) => (false, false, None),
                            }
                        }
                    },
                    Some(serde_json::Value::Bool(false)) => (false, true, None),
                    _ => (false, false, None),
                }
            }
            Ok(_) | Err(_) => (false, false, None),
        };
        if !allowed {
            return RefDecision {
                allowed: soft && failing_allowed,
                prints,
            };
        }
        if let Some(ops) = ops.filter(|p| !p.0.is_empty()) {
            let mut data = self.data.clone();
            if json_patch::patch(&mut data, &ops).is_err() {
                return RefDecision {
                    allowed: false,
                    prints,
                };
            }
            self.engine.clear_data();
            if self.engine.add_data(Value::from(data.clone())).is_err() {
                return RefDecision {
                    allowed: false,
                    prints,
                };
            }
            self.data = data;
        }
        RefDecision {
            allowed: true,
            prints,
        }
    }
}

/// How a case went, when engine and reference agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Neither could load the policy.
    BothRefused,
    /// Every request was decided alike; the count of those allowed.
    Decided {
        /// Requests replayed.
        requests: usize,
        /// Of those, allowed.
        allowed: usize,
        /// Whether the engine hoisted constant documents out of the policy.
        hoisted: bool,
        /// Requests whose entry point the compiled form also decided (and agreed on).
        compiled: usize,
        /// Whether the case stopped at a request the engine denied at its evaluation time
        /// limit and the reference (which has none, as upstream) took at least
        /// [`OVER_LIMIT_FLOOR`] to decide: a documented difference, not a divergence.
        over_limit: bool,
        /// Requests the engine denied at its time limit that the reference decided in less
        /// than [`OVER_LIMIT_FLOOR`], decided again (and then compared as any other).
        redecided: usize,
    },
}

/// A divergence between the engine and the reference, with what reproduces it.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// What differed.
    pub what: String,
    /// The policy.
    pub policy: String,
    /// The requests up to and including the one that differed.
    pub requests: Vec<(String, serde_json::Value)>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.what)?;
        writeln!(f, "--- policy\n{}", self.policy)?;
        for (entrypoint, input) in &self.requests {
            writeln!(f, "--- {entrypoint} {input}")?;
        }
        Ok(())
    }
}

/// How long the reference must take to decide a request for the engine's denial of it at its
/// evaluation time limit to count as that limit at work rather than a divergence. The limit is
/// wall-clock time, so a starved process reaches it on any request: seed 18624939's exec, which
/// both sides decide in about 0.7 s, ran into it while a long run at low priority shared two
/// cores with builds. A request the reference decides in less is decided again (see
/// [`check`]).
pub const OVER_LIMIT_FLOOR: std::time::Duration =
    std::time::Duration::from_millis(crate::engine::EVAL_TIME_LIMIT.as_millis() as u64 / 4);

/// Replays `case` through the engine (`engine` loads it) and the reference, request by request.
pub fn check(
    case: &generate::Case,
    engine: impl Fn(&str) -> Option<AgentPolicy>,
) -> Result<Agreement, Box<Divergence>> {
    let diverged = |what: String, upto: usize| {
        Box::new(Divergence {
            what,
            policy: case.policy.clone(),
            requests: case.requests[..upto].to_vec(),
        })
    };
    let policy = engine(&case.policy);
    let reference = Reference::load(&case.policy);
    let (policy, mut reference) = match (policy, reference) {
        (None, None) => return Ok(Agreement::BothRefused),
        (Some(_), None) => {
            return Err(diverged(
                "the engine loaded a policy the reference refuses".into(),
                0,
            ));
        }
        (None, Some(_)) => {
            return Err(diverged(
                "the engine refused a policy the reference loads".into(),
                0,
            ));
        }
        (Some(p), Some(r)) => (p, r),
    };
    let mut allowed = 0;
    let mut compiled = 0;
    let mut redecided = 0;
    for (i, (entrypoint, input)) in case.requests.iter().enumerate() {
        // The compiled form against the interpreter, on the state before this request.
        match policy.compiled_check(entrypoint, input) {
            None => {}
            Some(Ok(())) => compiled += 1,
            Some(Err(what)) => {
                return Err(diverged(
                    format!("request {i} ({entrypoint}): compiled form: {what}"),
                    i + 1,
                ));
            }
        }
        let mut decision = policy.decide(entrypoint, input);
        let started = std::time::Instant::now();
        let expected = reference.decide(entrypoint, input);
        let reference_took = started.elapsed();
        if timed_out(&decision) {
            if reference_took >= OVER_LIMIT_FLOOR {
                return Ok(Agreement::Decided {
                    requests: i + 1,
                    allowed,
                    hoisted: policy.hoisted_constants(),
                    compiled,
                    over_limit: true,
                    redecided,
                });
            }
            // The reference decided it quickly: the limit was reached on a starved machine, or
            // the engine is slow where the reference is not. A denial leaves the state as it
            // was, so the same request can be decided again; a second time-limit denial is
            // reported as the divergence it then is.
            redecided += 1;
            decision = policy.decide(entrypoint, input);
        }
        if decision.is_allowed() != expected.allowed {
            return Err(diverged(
                format!(
                    "request {i} ({entrypoint}): the engine says allowed={}, the reference \
                     allowed={} ({})",
                    decision.is_allowed(),
                    expected.allowed,
                    decision.reason()
                ),
                i + 1,
            ));
        }
        if decision.prints() != expected.prints.as_slice() {
            return Err(diverged(
                format!(
                    "request {i} ({entrypoint}): the engine printed {:?}, the reference {:?}",
                    decision.prints(),
                    expected.prints
                ),
                i + 1,
            ));
        }
        if policy.state() != reference.state() {
            return Err(diverged(
                format!(
                    "request {i} ({entrypoint}): states differ: engine {}, reference {}",
                    policy.state(),
                    reference.state()
                ),
                i + 1,
            ));
        }
        allowed += usize::from(expected.allowed);
        // A policy that stores its whole state under a new key doubles it with each request;
        // past this size the rest of the sequence would only measure memory.
        if reference.state().to_string().len() > MAX_STATE_BYTES {
            return Ok(Agreement::Decided {
                requests: i + 1,
                allowed,
                hoisted: policy.hoisted_constants(),
                compiled,
                over_limit: false,
                redecided,
            });
        }
    }
    Ok(Agreement::Decided {
        requests: case.requests.len(),
        allowed,
        hoisted: policy.hoisted_constants(),
        compiled,
        over_limit: false,
        redecided,
    })
}

/// Whether the engine denied a request at its evaluation time limit.
fn timed_out(decision: &crate::Decision) -> bool {
    !decision.is_allowed() && decision.reason().contains("time limit")
}
