//! A compiled form of an agent policy, evaluated without regorus's interpreter.
//!
//! The policy regorus parsed is lowered at load (`lower`): local variables become frame
//! slots, rule and function references become indices, builtins become regorus's own function
//! pointers (called with strict errors off, as the interpreter calls them), and each query's
//! statements are put in the order regorus's analysis puts them (`schedule`). `eval` runs the
//! result with the interpreter's semantics.
//!
//! Only constructs on a whitelist are lowered; an entry point is compiled only when every rule
//! and function it can reach was (and none is recursive). The engine decides a compiled entry
//! point's requests here; everything else, and every evaluation that ends in an error (to name
//! the interpreter's cause), goes to the interpreter. [`super::AgentPolicy::compiled_check`]
//! runs both on one request and reports any difference; the differential tests use it.
//!
//! Recursion is bounded so that no policy can overflow the stack a request is decided on:
//! `depth` refuses a policy whose expressions nest too deep before anything else walks them
//! (`walk` lists an expression's children for that and for `lower_body`'s variable search),
//! `lower` does not compile entry points behind very long reference chains, and `eval` gives
//! the request to the interpreter past a bound on evaluations in progress.

mod depth;
mod eval;
mod ir;
mod lower;
mod lower_body;
mod schedule;
mod walk;

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;

use super::interpreter::EVAL_TIME_LIMIT;
use super::prints::Prints;
use super::{POLICY_PACKAGE, POLICY_SOURCE};

/// The compiled entry points of one policy text (whatever its state).
#[derive(Debug)]
pub(super) struct CompiledPolicy {
    program: eval::Program,
    entries: BTreeMap<String, usize>,
    /// Why rules and functions were not lowered, by name.
    refusals: BTreeMap<String, String>,
}

impl CompiledPolicy {
    /// Lowers what can be lowered of the parsed policy in `engine`; `constants` is the data
    /// document of the hoisted constants.
    pub(super) fn build(engine: &mut regorus::Engine, constants: &Value) -> Self {
        let mut refusals = BTreeMap::new();
        let mut data_roots: BTreeSet<String> = BTreeSet::from(["pstate".to_owned()]);
        if let Ok(obj) = constants.as_object() {
            data_roots.extend(
                obj.keys()
                    .filter_map(|k| k.as_string().ok().map(|s| s.to_string())),
            );
        }
        let modules = engine.get_modules();
        let lowered = match modules.as_slice() {
            [m] if m.rego_v1
                && matches!(m.package.refr.as_ref(),
                    regorus::unstable::Expr::Var { span, .. } if span.text() == POLICY_PACKAGE) =>
            {
                lower::lower(m, data_roots)
            }
            _ => Err("not one Rego v1 module of package agent_policy".to_owned()),
        };
        let (program, entries) = match lowered {
            Ok(l) => {
                let entries = l
                    .rule_ids
                    .iter()
                    .filter(|(_, id)| l.closure_ok(**id))
                    .map(|(n, id)| (n.clone(), *id))
                    .collect();
                refusals.extend(l.refusals.clone());
                (
                    eval::Program {
                        rules: l.rules,
                        funcs: l.funcs,
                        file: POLICY_SOURCE,
                    },
                    entries,
                )
            }
            Err(why) => {
                refusals.insert(String::new(), why);
                (
                    eval::Program {
                        rules: Vec::new(),
                        funcs: Vec::new(),
                        file: POLICY_SOURCE,
                    },
                    BTreeMap::new(),
                )
            }
        };
        Self {
            program,
            entries,
            refusals,
        }
    }

    /// Whether `entrypoint` is compiled.
    pub(super) fn has(&self, entrypoint: &str) -> bool {
        self.entries.contains_key(entrypoint)
    }

    /// Whether every rule of the policy is compiled (as an entry point).
    pub(super) fn all_compiled(&self) -> bool {
        self.refusals.is_empty() && self.entries.len() == self.program.rules.len()
    }

    /// Why rules and functions were not compiled.
    pub(super) fn refusals(&self) -> &BTreeMap<String, String> {
        &self.refusals
    }

    /// Whether `error` is the evaluation's time limit (the interpreter would fail the same way).
    pub(super) fn timed_out(error: &anyhow::Error) -> bool {
        error.downcast_ref::<eval::TimeLimit>().is_some()
    }

    /// Whether `error` is the compiled form giving up (the interpreter must decide).
    pub(super) fn gave_up(error: &anyhow::Error) -> bool {
        error.downcast_ref::<eval::Fallback>().is_some()
    }

    /// Evaluates `data.agent_policy.<entrypoint>`: its value (or the error) and the prints.
    pub(super) fn evaluate(
        &self,
        entrypoint: &str,
        input: &Value,
        data: &Value,
    ) -> Option<(anyhow::Result<Value>, Prints)> {
        let id = *self.entries.get(entrypoint)?;
        let mut run = eval::Run::new(&self.program, input, data, EVAL_TIME_LIMIT);
        let value = run.rule(id);
        Some((value, Prints::deferred(self.program.file, run.prints)))
    }
}
