//! The evaluator: regorus's tree-walking interpreter, configured as the upstream Kata agent
//! configures it. It runs the policy exactly as written, `print` statements included, so its
//! print output explains a denial.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use regorus::Value;

use super::{
    Outcome, POLICY_PACKAGE, POLICY_SOURCE, PolicyError, hoist, interpret, keywords, nesting,
};
use crate::engine::decision::Denial;

/// Idle engines kept per state; more concurrent evaluations than this clone and drop.
const POOL_CAP: usize = 16;

/// Parses `text` into an engine, with large constant documents moved to the data document
/// when that provably keeps the policy's meaning (see the `hoist` module). Returns the engine
/// and the data document the hoisted constants need (empty when none were hoisted).
pub(super) fn parse(text: &str) -> Result<(regorus::Engine, Value), PolicyError> {
    if within_length_limits(text)
        && let Some(hoisted) = hoist::hoist(text)
        && let Ok(mut engine) = parse_text(&hoisted.text)
        && hoisted.is_confirmed_by(&mut engine)
    {
        return Ok((engine, hoisted.constants));
    }
    Ok((parse_text(text)?, Value::new_object()))
}

/// Parses `text` as written into an engine with an empty data document: Rego v1 first, v0 only for
/// policies v1 refuses that do not use v1 keywords unimported.
///
/// Current genpolicy output is valid v1, and v1 refuses the ambiguous forms. Policies from older
/// generators are v0 (rule bodies without `if`); v0 would read an unimported `if` as a plain
/// identifier and silently change the policy's meaning, so such text is refused instead.
///
/// A text that parses as v1 with its meaningless keyword imports blanked is read that way (see
/// the `keywords` module): regorus then resolves function calls without an import table.
fn parse_text(text: &str) -> Result<regorus::Engine, PolicyError> {
    nesting::check(text)?;
    if let Some(blanked) = keywords::blank_v1_keyword_imports(text) {
        let mut engine = new_engine(false);
        if engine.add_policy(POLICY_SOURCE.to_owned(), blanked).is_ok() {
            return Ok(engine);
        }
    }
    let mut engine = new_engine(false);
    let Err(v1_error) = engine.add_policy(POLICY_SOURCE.to_owned(), text.to_owned()) else {
        return Ok(engine);
    };
    if uses_unimported_v1_keywords(text) {
        return Err(PolicyError::Compile(format!("{v1_error:#}")));
    }
    let mut engine = new_engine(true);
    engine
        .add_policy(POLICY_SOURCE.to_owned(), text.to_owned())
        .map_err(|_| PolicyError::Compile(format!("{v1_error:#}")))?;
    tracing::info!("the policy is Rego v0; loaded in v0 mode");
    Ok(engine)
}

/// How long one evaluation may run, on either evaluator; past it the request is denied.
pub(crate) const EVAL_TIME_LIMIT: Duration = Duration::from_secs(10);

fn new_engine(rego_v0: bool) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(rego_v0);
    // As upstream: a builtin given bad arguments yields undefined rather than an error.
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    engine.set_policy_length_config(length_limits());
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::MIN.saturating_add(255),
    });
    engine
}

/// Whether `text` is within [`length_limits`] (counting bytes, which is never less than what
/// regorus counts). Hoisting removes long lines from the text regorus sees, so a text outside
/// the limits is parsed as written, and refused as it would be without hoisting.
fn within_length_limits(text: &str) -> bool {
    let limits = length_limits();
    text.len() <= limits.max_file_bytes.get()
        && text.lines().count() <= limits.max_lines.get()
        && text
            .lines()
            .all(|line| line.len() <= limits.max_col.get() as usize)
}

/// Limits on policy text: wide enough for any generated policy (container env values such as
/// CUDA requirement strings exceed 1 KiB on one line), narrow enough to refuse garbage.
fn length_limits() -> regorus::PolicyLengthConfig {
    regorus::PolicyLengthConfig {
        max_col: NonZeroU32::MIN.saturating_add(64 * 1024 - 1),
        max_file_bytes: NonZeroUsize::MIN.saturating_add(16 * 1024 * 1024 - 1),
        max_lines: NonZeroUsize::MIN.saturating_add(200_000 - 1),
    }
}

/// Whether `text` uses `if`, `contains` or `every` as keywords without importing them. Comments
/// are ignored; this errs on the side of "yes".
fn uses_unimported_v1_keywords(text: &str) -> bool {
    let code: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let imports_all = code.contains("import rego.v1") || code.contains("import future.keywords\n");
    ["if", "contains", "every"].into_iter().any(|keyword| {
        let imported = imports_all || code.contains(&format!("import future.keywords.{keyword}"));
        !imported
            && code
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == keyword)
    })
}

/// Runs the engine's one-time analysis now, so clones start ready.
pub(super) fn prepare(engine: &mut regorus::Engine) -> Result<(), PolicyError> {
    engine.set_input(Value::new_object());
    engine
        .eval_query("true".to_owned(), false)
        .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
    let _ = engine.take_prints();
    Ok(())
}

/// A prepared interpreter for one policy and one data document, with a pool of clones.
#[derive(Debug)]
pub(super) struct Interpreter {
    template: Mutex<regorus::Engine>,
    pool: Mutex<Vec<regorus::Engine>>,
}

impl Interpreter {
    /// Wraps a prepared engine.
    pub(super) fn new(template: regorus::Engine) -> Self {
        Self {
            template: Mutex::new(template),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Evaluates one entrypoint, gathering what the policy prints.
    pub(super) fn evaluate(&self, entrypoint: &str, input: Value) -> (Outcome, Vec<String>) {
        let mut engine = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| self.template_clone());
        engine.set_input(input);
        let path = format!("data.{POLICY_PACKAGE}.{entrypoint}");
        let outcome = match engine.eval_rule(path) {
            Ok(value) => interpret(value),
            // Asking for a rule the policy does not declare is an error in regorus; tell it
            // apart from a failure inside a declared rule.
            Err(_) if !declares(&engine, entrypoint) => Outcome::Deny(Denial::NoRule),
            Err(e) => Outcome::Deny(Denial::EvalError(format!("{e:#}"))),
        };
        let prints = engine.take_prints().unwrap_or_default();
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_CAP {
            pool.push(engine);
        }
        (outcome, prints)
    }

    /// The value of the rule at `path` for an empty input (for tests).
    pub(super) fn rule_value(&self, path: &str) -> Option<Value> {
        let mut engine = self.template_clone();
        engine.set_input(Value::new_object());
        engine.eval_rule(path.to_owned()).ok()
    }

    /// How many imports the parsed policy holds (for tests).
    pub(super) fn import_count(&self) -> usize {
        self.template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_modules()
            .iter()
            .map(|module| module.imports.len())
            .sum()
    }

    pub(super) fn template_clone(&self) -> regorus::Engine {
        self.template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Whether the policy declares a rule named `entrypoint` (an error counts as "declared", so that
/// the caller reports the evaluation error rather than a missing rule).
pub(super) fn declares(engine: &regorus::Engine, entrypoint: &str) -> bool {
    !matches!(
        engine.has_declared_rule_rooted_at(POLICY_SOURCE, entrypoint),
        Ok(false)
    )
}
