//! The agent policy engine: a compiled Rego policy that decides every agent request.
//!
//! [`AgentPolicy`] evaluates `data.agent_policy.<EntryPoint>` with the request as `input` and
//! turns the result into a [`Decision`]:
//!
//! - `true` allows, `false` denies;
//! - an object `{"allowed": bool, "ops": [...]}` allows or denies, and when it allows, `ops` is a
//!   JSON Patch applied to the policy's state document `data.pstate` (genpolicy's stateful
//!   rules use this to remember which container id runs which policy container);
//! - anything else — an undefined rule, an evaluation error, a result of another shape, a state
//!   update that does not apply, or no policy at all — denies, with a reason naming the cause.
//!
//! A policy that sets `AllowRequestsFailingPolicy := true` turns `false`/undefined results into
//! allowed-with-a-warning (a debugging aid, as upstream); errors still deny.
//!
//! # Two evaluators, one semantics
//!
//! The reference is regorus's interpreter, configured as the upstream Kata agent configures it
//! (strict builtin errors off). A request whose entry point the `compiled` module compiles is
//! decided by that compiled form; any other by the interpreter. The compiled form is built at
//! load from regorus's own parse of the policy, only for entry points whose every reachable
//! construct is on its whitelist, and runs with the interpreter's semantics (statement order,
//! undefined and error propagation, builtins called through regorus's own table, print lines).
//! It is checked against the interpreter request by request ([`AgentPolicy::compiled_check`])
//! by the differential generator (`crate::differential`), the genpolicy conformance cases and
//! the mutated-request replay. An evaluation error on the compiled form is re-run on the
//! interpreter, whose decision and message are then used. regorus's bytecode VM was used here
//! once and allowed requests the interpreter denies; it is not used.
//!
//! # Concurrency
//!
//! The policy in force is an immutable snapshot behind an `Arc`. The compiled form is shared
//! read-only; an evaluation on the interpreter borrows a ready-to-run interpreter from the
//! snapshot's pool (or clones one), so evaluations run in parallel without a global lock. Only allowed requests whose result carries state operations
//! take the commit lock: under it, if another request changed the state since this one was
//! evaluated, the request is evaluated again against the current state, then its operations
//! are applied and a new snapshot is published. State changes are therefore serialised and
//! every decision that changed the state was made against the state it changed. `SetPolicy`
//! decides and swaps under the same lock.

mod compiled;
mod decision;
mod entrypoint;
mod hoist;
mod interpreter;
mod keywords;
mod nesting;
mod prints;

pub use decision::{Decision, Denial, Verdict};
pub use entrypoint::{RPC_ENTRYPOINTS, all_entrypoints, entrypoint_for_rpc};

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;

use regorus::Value;

#[cfg(feature = "fuzzing")]
pub(crate) use interpreter::EVAL_TIME_LIMIT;
use interpreter::Interpreter;
use prints::Prints;

/// The Rego package agent policies declare.
pub const POLICY_PACKAGE: &str = "agent_policy";

/// The rule that, when true, lets requests the policy denies proceed (for debugging only).
const ALLOW_FAILING_RULE: &str = "data.agent_policy.AllowRequestsFailingPolicy";

/// The name the policy text is loaded under; print lines and errors are prefixed with it.
const POLICY_SOURCE: &str = "policy.rego";

/// Why a policy text could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text does not parse or does not compile as Rego.
    #[error("the policy does not compile: {0}")]
    Compile(String),
    /// The text declares no `package agent_policy`.
    #[error(
        "the policy declares package(s) {found:?}, but the agent evaluates `data.agent_policy`: \
         start the policy with `package agent_policy`"
    )]
    WrongPackage {
        /// The packages the text declares.
        found: Vec<String>,
    },
    /// The text nests collection literals deeper than regorus's parser handles in bounded time
    /// (see the `nesting` module).
    #[error(
        "the policy is refused before parsing at line {line}: {why}; the parser's time grows \
         exponentially with this nesting: move inner literals into rules of their own"
    )]
    TooDeep {
        /// The line where the limit was passed.
        line: usize,
        /// What passed it.
        why: String,
    },
}

/// Why a `SetPolicy` request was refused; the policy in force is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum SetPolicyError {
    /// The policy in force does not allow `SetPolicyRequest` for this text.
    #[error("{}", .0.denial_message())]
    Denied(Decision),
    /// The new text is not a usable policy.
    #[error("the new policy was refused and the current one stays in force")]
    Invalid(#[source] PolicyError),
}

/// The agent policy in force, shared by every request handler.
#[derive(Debug)]
pub struct AgentPolicy {
    current: ArcSwap<Snapshot>,
    /// Serialises state commits and policy swaps.
    commit: Mutex<()>,
}

#[derive(Debug)]
struct Snapshot {
    generation: u64,
    content: Content,
}

#[derive(Debug)]
enum Content {
    Policy(Box<Compiled>),
    None(String),
}

/// What stays the same for one policy text, whatever its state.
#[derive(Debug)]
struct Policy {
    /// The parsed policy with an empty state, prepared: the template for every state's
    /// interpreter.
    base: Interpreter,
    /// The constant documents moved out of the text at load (see the `hoist` module), to be
    /// merged into every data document; an empty object when there were none.
    constants: Value,
    allow_failures: bool,
    /// The compiled form (see the `compiled` module); not used for decisions yet.
    compiled: compiled::CompiledPolicy,
}

/// One policy with one state document, ready to evaluate.
#[derive(Debug)]
struct Compiled {
    policy: Arc<Policy>,
    /// The data document: `{"pstate": ...}`.
    data: serde_json::Value,
    /// The same with the hoisted constants, as the compiled form reads it.
    data_value: Value,
    /// The interpreter for this state. regorus re-analyses a policy whose data changed, so a
    /// new state's interpreter is prepared once, right after the state change is published
    /// (see [`AgentPolicy::commit`]), and shared by every request on that state.
    interpreter: OnceLock<Result<Arc<Interpreter>, String>>,
}

/// What one evaluation produced, before state handling.
enum Outcome {
    Allow(Option<json_patch::Patch>),
    Deny(Denial),
}

impl AgentPolicy {
    /// Compiles `text` into the policy in force, with an empty state.
    pub fn load(text: &str) -> Result<Self, PolicyError> {
        let compiled = Compiled::new(text)?;
        Ok(Self::with_content(Content::Policy(Box::new(compiled))))
    }

    /// A policy engine with no policy: every request is denied with `reason`.
    ///
    /// The agent uses this when the policy file is missing or invalid, so that it keeps serving
    /// (and answering why) instead of crashing or falling open.
    pub fn deny_all(reason: impl Into<String>) -> Self {
        Self::with_content(Content::None(reason.into()))
    }

    fn with_content(content: Content) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                content,
            }),
            commit: Mutex::new(()),
        }
    }

    /// Checks that `text` compiles as an agent policy without installing it.
    pub fn validate(text: &str) -> Result<(), PolicyError> {
        Policy::compile(text).map(|_| ())
    }

    /// Whether a policy is in force (as opposed to [`AgentPolicy::deny_all`]).
    pub fn is_loaded(&self) -> bool {
        matches!(self.snapshot().content, Content::Policy(_))
    }

    /// Whether constant documents were moved out of the policy text at load (see the `hoist`
    /// module). For tests.
    #[doc(hidden)]
    pub fn hoisted_constants(&self) -> bool {
        matches!(&self.snapshot().content, Content::Policy(c)
            if c.policy.constants.as_object().is_ok_and(|o| !o.is_empty()))
    }

    /// How many imports the policy in force was parsed with (keyword imports that mean nothing
    /// in Rego v1 are blanked at load; see the `keywords` module). For tests.
    #[doc(hidden)]
    pub fn parsed_imports(&self) -> Option<usize> {
        match &self.snapshot().content {
            Content::Policy(c) => Some(c.policy.base.import_count()),
            Content::None(_) => None,
        }
    }

    /// The value of the rule `data.agent_policy.<rule>` for an empty input, as JSON. For tests.
    #[doc(hidden)]
    pub fn rule_value(&self, rule: &str) -> Option<serde_json::Value> {
        let Content::Policy(c) = &self.snapshot().content else {
            return None;
        };
        let value = c
            .interpreter()
            .ok()?
            .rule_value(&format!("data.{POLICY_PACKAGE}.{rule}"))?;
        serde_json::to_value(&value).ok()
    }

    /// Runs `entrypoint` on the compiled form (see the `compiled` module) and on the
    /// interpreter, against the current state, without changing anything; `None` when the
    /// entry point is not compiled, else `Err` naming the first difference (decision, state
    /// operations, error-or-not, or print lines). For the differential tests.
    #[doc(hidden)]
    pub fn compiled_check(
        &self,
        entrypoint: &str,
        input: &serde_json::Value,
    ) -> Option<Result<(), String>> {
        let Content::Policy(c) = &self.snapshot().content else {
            return None;
        };
        let compiled = &c.policy.compiled;
        if !compiled.has(entrypoint) {
            return None;
        }
        let input = Value::from(input.clone());
        let (value, prints) = compiled.evaluate(entrypoint, &input, &c.data_value)?;
        if value.as_ref().is_err_and(compiled::CompiledPolicy::gave_up) {
            return None;
        }
        let (outcome, reference_prints) = c.interpret(entrypoint, input);
        let mine = match value {
            Ok(v) => describe(&interpret(v)),
            Err(_) => "error".to_owned(),
        };
        let theirs = match &outcome {
            Outcome::Deny(Denial::EvalError(_)) => "error".to_owned(),
            other => describe(other),
        };
        if mine != theirs {
            return Some(Err(format!("compiled {mine}, interpreter {theirs}")));
        }
        if prints != reference_prints {
            return Some(Err(format!(
                "compiled printed {:?}, interpreter {:?}",
                prints.lines(),
                reference_prints.lines()
            )));
        }
        Some(Ok(()))
    }

    /// Which entry points of the policy in force are compiled, and why rules and functions
    /// were not. For tests.
    #[doc(hidden)]
    pub fn compiled_coverage(&self) -> (Vec<String>, Vec<(String, String)>) {
        let Content::Policy(c) = &self.snapshot().content else {
            return (Vec::new(), Vec::new());
        };
        let compiled = &c.policy.compiled;
        let entries = all_entrypoints()
            .into_iter()
            .chain(["AllowRequestsFailingPolicy"])
            .filter(|e| compiled.has(e))
            .map(str::to_owned)
            .collect();
        let refusals = compiled
            .refusals()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (entries, refusals)
    }

    /// Whether the policy in force sets `AllowRequestsFailingPolicy := true`.
    pub fn allows_failing_requests(&self) -> bool {
        matches!(&self.snapshot().content, Content::Policy(c) if c.policy.allow_failures)
    }

    /// How many times the policy or its state was replaced since load. For tests.
    #[doc(hidden)]
    pub fn state_generation(&self) -> u64 {
        self.snapshot().generation
    }

    /// The policy state document (`data.pstate`).
    pub fn state(&self) -> serde_json::Value {
        match &self.snapshot().content {
            Content::Policy(c) => c.data.get("pstate").cloned().unwrap_or_default(),
            Content::None(_) => serde_json::Value::Null,
        }
    }

    /// Decides a request given as a JSON value.
    pub fn decide(&self, entrypoint: &str, input: &serde_json::Value) -> Decision {
        self.decide_value(entrypoint, Value::from(input.clone()))
    }

    /// Decides a request given as JSON text.
    pub fn decide_json(&self, entrypoint: &str, input: &str) -> Decision {
        match Value::from_json_str(input) {
            Ok(value) => self.decide_value(entrypoint, value),
            Err(e) => Decision::new(
                entrypoint,
                Verdict::Denied(Denial::BadInput(format!("{e:#}"))),
                Prints::default(),
            ),
        }
    }

    fn decide_value(&self, entrypoint: &str, input: Value) -> Decision {
        if !entrypoint::is_valid_entrypoint(entrypoint) {
            return Decision::new(
                entrypoint,
                Verdict::Denied(Denial::BadEntryPoint),
                Prints::default(),
            );
        }
        let snapshot = self.snapshot();
        let compiled = match &snapshot.content {
            Content::Policy(c) => c,
            Content::None(why) => {
                let denial = Denial::NoPolicy(why.clone());
                return Decision::new(entrypoint, Verdict::Denied(denial), Prints::default());
            }
        };
        let (outcome, prints) = compiled.evaluate(entrypoint, input.clone());
        let verdict = match outcome {
            Outcome::Allow(None) => Verdict::Allowed,
            Outcome::Allow(Some(ops)) => {
                return self.commit(&snapshot, entrypoint, input, ops, prints);
            }
            Outcome::Deny(denial) => compiled.deny(denial),
        };
        Decision::new(entrypoint, verdict, prints)
    }

    /// Applies an allowed request's state operations, re-deciding it first if the state
    /// changed since it was evaluated.
    fn commit(
        &self,
        seen: &Snapshot,
        entrypoint: &str,
        input: Value,
        ops: json_patch::Patch,
        prints: Prints,
    ) -> Decision {
        let _guard = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot();
        let Content::Policy(compiled) = &current.content else {
            // The policy was replaced by "no policy" meanwhile; nothing may proceed.
            return self.decide_value(entrypoint, input);
        };
        let (ops, prints) = if current.generation == seen.generation {
            (ops, prints)
        } else {
            match compiled.evaluate(entrypoint, input) {
                (Outcome::Allow(Some(ops)), prints) => (ops, prints),
                (Outcome::Allow(None), prints) => {
                    return Decision::new(entrypoint, Verdict::Allowed, prints);
                }
                (Outcome::Deny(denial), prints) => {
                    return Decision::new(entrypoint, compiled.deny(denial), prints);
                }
            }
        };

        let mut data = compiled.data.clone();
        if let Err(e) = json_patch::patch(&mut data, &ops) {
            let denial = Denial::StateUpdate(e.to_string());
            return Decision::new(entrypoint, Verdict::Denied(denial), prints);
        }
        // Operations that leave the state as it was (genpolicy re-adding what a retried or
        // repeated request already added) change nothing: publishing a new generation would
        // only make concurrent evaluations of the same state re-run.
        if data == compiled.data {
            return Decision::new(entrypoint, Verdict::Allowed, prints);
        }
        let next = compiled.with_data(data);
        let fully_compiled = next.policy.compiled.all_compiled();
        let published = self.publish(current.generation + 1, Content::Policy(Box::new(next)));
        // The interpreter of a new state is needed at once only for entry points the compiled
        // form does not decide; otherwise it is prepared if and when an error needs explaining.
        if !fully_compiled {
            warm(published);
        }
        Decision::new(entrypoint, Verdict::Allowed, prints)
    }

    /// Replaces the policy, as the `SetPolicy` RPC does.
    ///
    /// The policy in force must allow `SetPolicyRequest` with input `{"policy": text}`, and
    /// `text` must compile; otherwise the current policy stays. The new policy starts with an
    /// empty state.
    ///
    /// The decision and the swap happen under the commit lock, so two concurrent calls cannot
    /// both be decided by the same old policy: the second is decided by whatever the first
    /// installed. (State operations a `SetPolicyRequest` rule returns are dropped with the old
    /// state.)
    pub fn set_policy(&self, text: &str) -> Result<(), SetPolicyError> {
        let input = Value::from(serde_json::json!({ "policy": text }));
        // Compile first, outside the lock: it is the slow part, and a text that does not
        // compile is refused whatever the policy says. The denial, if any, still wins below.
        let compiled = Compiled::new(text);
        let _guard = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot();
        let verdict = match &current.content {
            Content::Policy(c) => match c.evaluate("SetPolicyRequest", input) {
                (Outcome::Allow(_), prints) => {
                    Decision::new("SetPolicyRequest", Verdict::Allowed, prints)
                }
                (Outcome::Deny(denial), prints) => {
                    Decision::new("SetPolicyRequest", c.deny(denial), prints)
                }
            },
            Content::None(why) => Decision::new(
                "SetPolicyRequest",
                Verdict::Denied(Denial::NoPolicy(why.clone())),
                Prints::default(),
            ),
        };
        if !verdict.is_allowed() {
            return Err(SetPolicyError::Denied(verdict));
        }
        let compiled = compiled.map_err(SetPolicyError::Invalid)?;
        self.publish(current.generation + 1, Content::Policy(Box::new(compiled)));
        Ok(())
    }

    /// The state in force. Reading it writes nothing shared (no lock word, no reference
    /// count) in the common case: with a lock and an `Arc` clone per request, two threads
    /// deciding 11 µs denials at once lost 10-15 % of their throughput to the cache line both
    /// wrote.
    fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    fn publish(&self, generation: u64, content: Content) -> Arc<Snapshot> {
        let next = Arc::new(Snapshot {
            generation,
            content,
        });
        self.current.store(Arc::clone(&next));
        next
    }
}

impl Policy {
    fn compile(text: &str) -> Result<Arc<Self>, PolicyError> {
        let (mut engine, constants) = interpreter::parse(text)?;
        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
        let wanted = format!("data.{POLICY_PACKAGE}");
        if !packages.contains(&wanted) {
            let found = packages
                .into_iter()
                .map(|p| p.strip_prefix("data.").map(str::to_owned).unwrap_or(p))
                .collect();
            return Err(PolicyError::WrongPackage { found });
        }
        for document in [empty_data_value(), constants.clone()] {
            engine
                .add_data(document)
                .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
        }
        interpreter::prepare(&mut engine)?;
        let compiled = compiled::CompiledPolicy::build(&mut engine, &constants);
        let allow_failures = matches!(
            engine.eval_rule(ALLOW_FAILING_RULE.to_owned()),
            Ok(Value::Bool(true))
        );
        let _ = engine.take_prints();

        Ok(Arc::new(Self {
            base: Interpreter::new(engine),
            constants,
            allow_failures,
            compiled,
        }))
    }
}

fn empty_data() -> serde_json::Value {
    serde_json::json!({ "pstate": {} })
}

fn empty_data_value() -> Value {
    Value::from(empty_data())
}

impl Compiled {
    fn new(text: &str) -> Result<Self, PolicyError> {
        let policy = Policy::compile(text)?;
        let compiled = Self::with_state(policy, empty_data());
        // The base interpreter already holds the empty state: share it rather than re-prepare.
        let base = Arc::new(Interpreter::new(compiled.policy.base.template_clone()));
        let _ = compiled.interpreter.set(Ok(base));
        Ok(compiled)
    }

    fn with_state(policy: Arc<Policy>, data: serde_json::Value) -> Self {
        let mut data_value = Value::from(data.clone());
        if let (Ok(d), Ok(k)) = (data_value.as_object_mut(), policy.constants.as_object()) {
            for (key, value) in k.iter() {
                d.insert(key.clone(), value.clone());
            }
        }
        Self {
            policy,
            data,
            data_value,
            interpreter: OnceLock::new(),
        }
    }

    /// The same policy with another data document.
    fn with_data(&self, data: serde_json::Value) -> Self {
        Self::with_state(Arc::clone(&self.policy), data)
    }

    fn interpreter(&self) -> Result<&Arc<Interpreter>, &String> {
        self.interpreter
            .get_or_init(|| {
                let mut engine = self.policy.base.template_clone();
                engine.clear_data();
                for document in [
                    Value::from(self.data.clone()),
                    self.policy.constants.clone(),
                ] {
                    engine.add_data(document).map_err(|e| format!("{e:#}"))?;
                }
                interpreter::prepare(&mut engine).map_err(|e| e.to_string())?;
                Ok(Arc::new(Interpreter::new(engine)))
            })
            .as_ref()
    }

    fn deny(&self, denial: Denial) -> Verdict {
        let honoured = matches!(denial, Denial::False | Denial::Undefined | Denial::NoRule);
        if self.policy.allow_failures && honoured {
            tracing::warn!(%denial, "request allowed only because AllowRequestsFailingPolicy is set");
            Verdict::AllowedFailingPolicy(denial)
        } else {
            Verdict::Denied(denial)
        }
    }

    /// Evaluates one request: on the compiled form when it compiles the entry point (an
    /// evaluation error is re-run on the interpreter, whose message names the cause), else on
    /// this state's interpreter.
    fn evaluate(&self, entrypoint: &str, input: Value) -> (Outcome, Prints) {
        match self
            .policy
            .compiled
            .evaluate(entrypoint, &input, &self.data_value)
        {
            Some((Ok(value), prints)) => return (interpret(value), prints),
            // The interpreter would run as long and fail the same way: deny now.
            Some((Err(e), prints)) if compiled::CompiledPolicy::timed_out(&e) => {
                return (Outcome::Deny(Denial::EvalError(e.to_string())), prints);
            }
            _ => {}
        }
        self.interpret(entrypoint, input)
    }

    /// Evaluates one request on this state's interpreter.
    fn interpret(&self, entrypoint: &str, input: Value) -> (Outcome, Prints) {
        match self.interpreter() {
            Ok(interpreter) => {
                let (outcome, lines) = interpreter.evaluate(entrypoint, input);
                (outcome, lines.into())
            }
            Err(e) => {
                let denial = Denial::EvalError(format!("cannot prepare the policy: {e}"));
                (Outcome::Deny(denial), Prints::default())
            }
        }
    }
}

/// Prepares a freshly published state's interpreter on another thread, so that the next
/// request does not pay for regorus's re-analysis (a request that comes sooner waits for it).
fn warm(snapshot: Arc<Snapshot>) {
    let spawned = std::thread::Builder::new()
        .name("policy-prepare".to_owned())
        .spawn(move || {
            if let Content::Policy(c) = &snapshot.content {
                let _ = c.interpreter();
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot prepare the new policy state ahead; the next request will");
    }
}

/// Reads a rule's value as a decision.
fn interpret(value: Value) -> Outcome {
    match value {
        Value::Bool(true) => Outcome::Allow(None),
        Value::Bool(false) => Outcome::Deny(Denial::False),
        Value::Undefined => Outcome::Deny(Denial::Undefined),
        Value::Object(_) => {
            let json = match serde_json::to_value(&value) {
                Ok(json) => json,
                Err(e) => return Outcome::Deny(Denial::BadResult(e.to_string())),
            };
            match json.get("allowed") {
                Some(serde_json::Value::Bool(true)) => {}
                Some(serde_json::Value::Bool(false)) => return Outcome::Deny(Denial::False),
                _ => return Outcome::Deny(Denial::BadResult(short(&json))),
            }
            match json.get("ops") {
                None | Some(serde_json::Value::Null) => Outcome::Allow(None),
                Some(ops) => match serde_json::from_value::<json_patch::Patch>(ops.clone()) {
                    Ok(patch) if patch.0.is_empty() => Outcome::Allow(None),
                    Ok(patch) => Outcome::Allow(Some(patch)),
                    Err(e) => Outcome::Deny(Denial::BadResult(format!(
                        "an object whose ops are not a JSON Patch ({e})"
                    ))),
                },
            }
        }
        other => {
            let json = serde_json::to_value(&other).unwrap_or_default();
            Outcome::Deny(Denial::BadResult(short(&json)))
        }
    }
}

/// An outcome, for comparing two evaluators: allowed (with its operations) or why not.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Allow(None) => "allowed".to_owned(),
        Outcome::Allow(Some(ops)) => format!(
            "allowed with {}",
            serde_json::to_string(ops).unwrap_or_default()
        ),
        Outcome::Deny(d) => format!("denied ({d})"),
    }
}

/// A value's JSON, cut to a length fit for an error message.
fn short(value: &serde_json::Value) -> String {
    let mut text = value.to_string();
    peerpod_text::clip(&mut text, 120);
    text
}
