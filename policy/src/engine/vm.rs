//! The fast evaluator: the policy compiled to regorus's register VM (RVM) bytecode.
//!
//! The interpreter rebuilds large constant documents (genpolicy's `policy_data`) and walks the
//! syntax tree on every request; compiled bytecode keeps constants in literal tables and runs in
//! a tenth of the time or less. The VM has no `print`, so it runs a copy of the policy in which
//! every `print(...)` call is replaced by `true` — what a `print` call evaluates to — and
//! denials are explained by the interpreter afterwards (see the engine module).
//!
//! A policy the compiler cannot take simply has no VM: the interpreter decides alone.

use std::sync::{Arc, Mutex, PoisonError};

use regorus::Value;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::unstable::{Lexer, Source, TokenKind};

use super::interpreter::{self, Dialect};
use super::{Outcome, POLICY_PACKAGE, POLICY_SOURCE, interpret};

/// Instructions one evaluation may execute before it is stopped (and the request denied).
/// The largest generated policies need a few hundred thousand for a CreateContainer.
const MAX_INSTRUCTIONS: usize = 50_000_000;

/// Idle VMs kept per state.
const POOL_CAP: usize = 16;

/// A compiled program and the entrypoints it holds.
#[derive(Debug)]
pub(super) struct Bytecode {
    program: Arc<Program>,
}

impl Bytecode {
    /// Compiles `text` for the entrypoints among `candidates` that it declares.
    ///
    /// Returns why not when the policy cannot be compiled; the caller then relies on the
    /// interpreter alone.
    pub(super) fn compile(
        text: &str,
        dialect: Dialect,
        candidates: &[&str],
    ) -> Result<Self, String> {
        let stripped = strip_prints(text)?;
        let mut engine = interpreter::new_engine(dialect);
        engine
            .add_policy(POLICY_SOURCE.to_owned(), stripped)
            .map_err(|e| format!("{e:#}"))?;
        if interpreter::declares(&engine, "print") {
            return Err("the policy declares its own `print`".to_owned());
        }
        let declared: Vec<String> = candidates
            .iter()
            .filter(|e| {
                matches!(
                    engine.has_declared_rule_rooted_at(POLICY_SOURCE, e),
                    Ok(true)
                )
            })
            .map(|e| format!("data.{POLICY_PACKAGE}.{e}"))
            .collect();
        let Some(first) = declared.first() else {
            return Err("the policy declares none of the agent's entrypoints".to_owned());
        };
        let compiled = engine
            .compile_with_entrypoint(&first.as_str().into())
            .map_err(|e| format!("{e:#}"))?;
        let names: Vec<&str> = declared.iter().map(String::as_str).collect();
        let program =
            Compiler::compile_from_policy(&compiled, &names).map_err(|e| format!("{e:#}"))?;
        Ok(Self { program })
    }

    fn has(&self, path: &str) -> bool {
        self.program.get_entry_point(path).is_some()
    }
}

/// VMs loaded with one program and one data document.
#[derive(Debug)]
pub(super) struct Machines {
    bytecode: Arc<Bytecode>,
    data: Value,
    pool: Mutex<Vec<RegoVM>>,
}

impl Machines {
    pub(super) fn new(bytecode: Arc<Bytecode>, data: Value) -> Self {
        Self {
            bytecode,
            data,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Evaluates one entrypoint; `None` when the program does not hold it.
    pub(super) fn evaluate(&self, entrypoint: &str, input: Value) -> Option<Outcome> {
        let path = format!("data.{POLICY_PACKAGE}.{entrypoint}");
        if !self.bytecode.has(&path) {
            return None;
        }
        let popped = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut vm = match popped {
            Some(vm) => vm,
            None => self.machine().ok()?,
        };
        vm.set_input(input);
        let outcome = match vm.execute_entry_point_by_name(&path) {
            Ok(value) => interpret(value),
            Err(e) => Outcome::Deny(super::Denial::EvalError(format!("{e:#}"))),
        };
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_CAP {
            pool.push(vm);
        }
        Some(outcome)
    }

    fn machine(&self) -> Result<RegoVM, String> {
        let mut vm = RegoVM::new();
        vm.load_program(Arc::clone(&self.bytecode.program));
        vm.set_strict_builtin_errors(false);
        vm.set_max_instructions(MAX_INSTRUCTIONS);
        vm.set_data(self.data.clone())
            .map_err(|e| format!("{e:#}"))?;
        Ok(vm)
    }
}

/// Replaces every call of the `print` builtin in `text` by `true`, keeping line structure.
///
/// Works on tokens, so strings, raw strings and comments that mention `print(` are left alone,
/// and a member such as `x.print(` is not a builtin call.
fn strip_prints(text: &str) -> Result<String, String> {
    let source = Source::from_contents(POLICY_SOURCE.to_owned(), text.to_owned())
        .map_err(|e| format!("{e:#}"))?;
    let mut lexer = Lexer::new(&source);
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token().map_err(|e| format!("{e:#}"))?;
        if matches!(token.0, TokenKind::Eof) {
            break;
        }
        tokens.push(token);
    }

    let mut ranges = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_call = matches!(tokens[i].0, TokenKind::Ident)
            && tokens[i].1.text() == "print"
            && tokens.get(i + 1).is_some_and(|t| t.1.text() == "(")
            && (i == 0 || tokens[i - 1].1.text() != ".");
        if !is_call {
            i += 1;
            continue;
        }
        let mut depth = 0usize;
        let mut close = None;
        for (j, token) in tokens.iter().enumerate().skip(i + 1) {
            if matches!(token.0, TokenKind::Symbol) {
                match token.1.text() {
                    "(" => depth += 1,
                    ")" => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some(close) = close else {
            return Err("unbalanced parentheses after `print`".to_owned());
        };
        ranges.push((tokens[i].1.start as usize, tokens[close].1.end as usize));
        i = close + 1;
    }

    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in ranges {
        let (Some(before), Some(call)) = (text.get(last..start), text.get(start..end)) else {
            return Err("a token span does not fall on character boundaries".to_owned());
        };
        out.push_str(before);
        out.push_str("true");
        // Keep the call's line breaks so that line numbers stay the same.
        out.extend(call.chars().filter(|c| *c == '\n'));
        last = end;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_print_calls_only() {
        let text = "package p\n\
                    x if {\n  print(\"a(\", count([1, (2)]))\n  y.print(1)\n  z := \"print(no)\"\n  print(\n\"b\")\n}\n\
                    # print(comment)\n";
        let out = strip_prints(text).expect("strips");
        assert_eq!(
            out,
            "package p\nx if {\n  true\n  y.print(1)\n  z := \"print(no)\"\n  true\n\n}\n# print(comment)\n"
        );
        assert_eq!(out.lines().count(), text.lines().count());
    }

    #[test]
    fn refuses_unbalanced_prints() {
        assert!(strip_prints("package p\nx if { print(1 }\n").is_err());
    }
}
