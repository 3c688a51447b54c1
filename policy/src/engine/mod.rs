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
//! # Concurrency
//!
//! The policy in force is an immutable snapshot behind an `Arc`. Each evaluation borrows a
//! ready-to-run engine from the snapshot's pool (or clones one), so evaluations run in parallel
//! without a global lock. Only allowed requests whose result carries state operations take the
//! commit lock: under it, if another request changed the state since this one was evaluated,
//! the request is evaluated again against the current state, then its operations are applied
//! and a new snapshot is published. State changes are therefore serialised and every decision
//! that changed the state was made against the state it changed.

mod decision;
mod entrypoint;
mod interpreter;
mod vm;

pub use decision::{Decision, Denial, Verdict};
pub use entrypoint::{RPC_ENTRYPOINTS, all_entrypoints, entrypoint_for_rpc};

use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use regorus::Value;

use interpreter::Interpreter;
use vm::{Bytecode, Machines};

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
    current: RwLock<Arc<Snapshot>>,
    /// Serialises state commits and policy swaps.
    commit: Mutex<()>,
    /// Whether policies are compiled to bytecode (see [`AgentPolicy::load`]).
    bytecode: bool,
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
    /// Set once by the background compilation: `None` when the policy does not compile to
    /// bytecode (or bytecode is disabled).
    bytecode: OnceLock<Option<Arc<Bytecode>>>,
    allow_failures: bool,
}

/// One policy with one state document, ready to evaluate.
#[derive(Debug)]
struct Compiled {
    policy: Arc<Policy>,
    /// The data document: `{"pstate": ...}`.
    data: serde_json::Value,
    /// The interpreter for this state, made on first need (denials, or no bytecode): preparing
    /// it re-analyses the policy, which the bytecode path never has to wait for.
    interpreter: OnceLock<Result<Arc<Interpreter>, String>>,
    /// VMs for this state, made once the policy's bytecode is ready.
    machines: OnceLock<Option<Machines>>,
}

/// What one evaluation produced, before state handling.
enum Outcome {
    Allow(Option<json_patch::Patch>),
    Deny(Denial),
}

impl AgentPolicy {
    /// Compiles `text` into the policy in force, with an empty state.
    ///
    /// The policy is also compiled to bytecode when regorus's compiler takes it; requests are
    /// then decided on bytecode, and the interpreter only explains denials.
    pub fn load(text: &str) -> Result<Self, PolicyError> {
        Self::load_with(text, true)
    }

    /// Like [`AgentPolicy::load`], but every request is decided by the interpreter. For
    /// differential tests and benchmarks.
    #[doc(hidden)]
    pub fn load_interpreted(text: &str) -> Result<Self, PolicyError> {
        Self::load_with(text, false)
    }

    fn load_with(text: &str, bytecode: bool) -> Result<Self, PolicyError> {
        let compiled = Compiled::new(text, bytecode)?;
        let mut policy = Self::with_content(Content::Policy(Box::new(compiled)));
        policy.bytecode = bytecode;
        Ok(policy)
    }

    /// Whether requests are decided on bytecode (see [`AgentPolicy::load`]). Waits for the
    /// background compilation to finish.
    pub fn uses_bytecode(&self) -> bool {
        match &self.snapshot().content {
            Content::Policy(c) => c.policy.bytecode.wait().is_some(),
            Content::None(_) => false,
        }
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
            current: RwLock::new(Arc::new(Snapshot {
                generation: 0,
                content,
            })),
            commit: Mutex::new(()),
            bytecode: true,
        }
    }

    /// Checks that `text` compiles as an agent policy without installing it.
    pub fn validate(text: &str) -> Result<(), PolicyError> {
        Policy::compile(text, false).map(|_| ())
    }

    /// Whether a policy is in force (as opposed to [`AgentPolicy::deny_all`]).
    pub fn is_loaded(&self) -> bool {
        matches!(self.snapshot().content, Content::Policy(_))
    }

    /// Whether the policy in force sets `AllowRequestsFailingPolicy := true`.
    pub fn allows_failing_requests(&self) -> bool {
        matches!(&self.snapshot().content, Content::Policy(c) if c.policy.allow_failures)
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
                Vec::new(),
            ),
        }
    }

    fn decide_value(&self, entrypoint: &str, input: Value) -> Decision {
        if !entrypoint::is_valid_entrypoint(entrypoint) {
            return Decision::new(
                entrypoint,
                Verdict::Denied(Denial::BadEntryPoint),
                Vec::new(),
            );
        }
        let snapshot = self.snapshot();
        let compiled = match &snapshot.content {
            Content::Policy(c) => c,
            Content::None(why) => {
                let denial = Denial::NoPolicy(why.clone());
                return Decision::new(entrypoint, Verdict::Denied(denial), Vec::new());
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
        prints: Vec<String>,
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
        let next = compiled.with_data(data);
        self.publish(current.generation + 1, Content::Policy(Box::new(next)));
        Decision::new(entrypoint, Verdict::Allowed, prints)
    }

    /// Replaces the policy, as the `SetPolicy` RPC does.
    ///
    /// The policy in force must allow `SetPolicyRequest` with input `{"policy": text}`, and
    /// `text` must compile; otherwise the current policy stays. The new policy starts with an
    /// empty state.
    pub fn set_policy(&self, text: &str) -> Result<(), SetPolicyError> {
        let decision = self.decide("SetPolicyRequest", &serde_json::json!({ "policy": text }));
        if !decision.is_allowed() {
            return Err(SetPolicyError::Denied(decision));
        }
        let compiled = Compiled::new(text, self.bytecode).map_err(SetPolicyError::Invalid)?;
        let _guard = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.snapshot().generation + 1;
        self.publish(generation, Content::Policy(Box::new(compiled)));
        Ok(())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn publish(&self, generation: u64, content: Content) {
        let next = Arc::new(Snapshot {
            generation,
            content,
        });
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

impl Policy {
    fn compile(text: &str, bytecode: bool) -> Result<Arc<Self>, PolicyError> {
        let (mut engine, dialect) = interpreter::parse(text)?;
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
        engine
            .add_data(empty_data_value())
            .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
        interpreter::prepare(&mut engine)?;
        let allow_failures = matches!(
            engine.eval_rule(ALLOW_FAILING_RULE.to_owned()),
            Ok(Value::Bool(true))
        );
        let _ = engine.take_prints();

        let policy = Arc::new(Self {
            base: Interpreter::new(engine),
            bytecode: OnceLock::new(),
            allow_failures,
        });
        if !bytecode {
            let _ = policy.bytecode.set(None);
            return Ok(policy);
        }
        // Compiling to bytecode takes as long again as loading; do it on another thread so the
        // agent can serve at once. Requests are decided by the interpreter until it is done.
        let text = text.to_owned();
        let target = Arc::clone(&policy);
        let spawned = std::thread::Builder::new()
            .name("policy-bytecode".to_owned())
            .spawn(move || {
                let compiled =
                    match Bytecode::compile(&text, dialect, &entrypoint::all_entrypoints()) {
                        Ok(b) => Some(Arc::new(b)),
                        Err(why) => {
                            tracing::info!(%why, "the policy runs on the interpreter only");
                            None
                        }
                    };
                let _ = target.bytecode.set(compiled);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the bytecode compiler; interpreter only");
            let _ = policy.bytecode.set(None);
        }
        Ok(policy)
    }
}

fn empty_data() -> serde_json::Value {
    serde_json::json!({ "pstate": {} })
}

fn empty_data_value() -> Value {
    Value::from(empty_data())
}

impl Compiled {
    fn new(text: &str, bytecode: bool) -> Result<Self, PolicyError> {
        let policy = Policy::compile(text, bytecode)?;
        let compiled = Self::with_state(policy, empty_data());
        // The base interpreter already holds the empty state: share it rather than re-prepare.
        let base = Arc::new(Interpreter::new(compiled.policy.base.template_clone()));
        let _ = compiled.interpreter.set(Ok(base));
        Ok(compiled)
    }

    fn with_state(policy: Arc<Policy>, data: serde_json::Value) -> Self {
        Self {
            policy,
            data,
            interpreter: OnceLock::new(),
            machines: OnceLock::new(),
        }
    }

    /// The VMs for this state, if the policy's bytecode is ready (without waiting for it).
    fn machines(&self) -> Option<&Machines> {
        let bytecode = self.policy.bytecode.get()?.as_ref()?;
        self.machines
            .get_or_init(|| {
                Some(Machines::new(
                    Arc::clone(bytecode),
                    Value::from(self.data.clone()),
                ))
            })
            .as_ref()
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
                engine
                    .add_data(Value::from(self.data.clone()))
                    .map_err(|e| format!("{e:#}"))?;
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

    /// Decides on bytecode when it can; anything but an allow is then decided again by the
    /// interpreter, which explains it (its prints) and must agree.
    fn evaluate(&self, entrypoint: &str, input: Value) -> (Outcome, Vec<String>) {
        let mut compiled_denied = false;
        if let Some(machines) = self.machines() {
            match machines.evaluate(entrypoint, input.clone()) {
                Some(allowed @ Outcome::Allow(_)) => return (allowed, Vec::new()),
                Some(Outcome::Deny(_)) => compiled_denied = true,
                None => {}
            }
        }
        let interpreter = match self.interpreter() {
            Ok(i) => i,
            Err(e) => {
                let denial = Denial::EvalError(format!("cannot prepare the policy: {e}"));
                return (Outcome::Deny(denial), Vec::new());
            }
        };
        let (outcome, prints) = interpreter.evaluate(entrypoint, input);
        if compiled_denied && matches!(outcome, Outcome::Allow(_)) {
            tracing::error!(
                entrypoint,
                "the compiled policy denied a request the interpreter allows; denying it"
            );
            let denial = Denial::EvalError(
                "the policy's compiled form and its interpreter disagree on this request; it is \
                 denied (please report this with the policy and the request)"
                    .to_owned(),
            );
            return (Outcome::Deny(denial), prints);
        }
        (outcome, prints)
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

/// A value's JSON, cut to a length fit for an error message.
fn short(value: &serde_json::Value) -> String {
    let mut text = value.to_string();
    if text.len() > 120 {
        let mut cut = 117;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}
