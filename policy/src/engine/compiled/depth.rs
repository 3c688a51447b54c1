//! How deeply a parsed policy nests expressions, measured without recursing past a limit.
//!
//! Lowering, scheduling and evaluation recurse over expressions. A policy whose expressions
//! nest deeper than [`MAX_DEPTH`] (a 3,000-term `1 == 1 == ...` chain is 3,000 deep) is left
//! whole to the interpreter, which regorus's parser already handed it to, so the compiled form
//! never recurses deeper than the limit on any thread's stack. genpolicy's policies nest about
//! 15 deep.

use regorus::unstable::{Expr as Ast, Query as AstQuery, Rule, RuleHead};

use super::walk::{any_child, any_in_literal};

/// The deepest expression nesting the compiled form takes.
pub(super) const MAX_DEPTH: usize = 64;

/// Whether some expression of `rule` is nested deeper than [`MAX_DEPTH`].
pub(super) fn rule_too_deep(rule: &Rule) -> bool {
    let left = MAX_DEPTH;
    match rule {
        Rule::Spec { head, bodies, .. } => {
            let head_deep = match head {
                RuleHead::Compr { refr, assign, .. } => {
                    expr(refr, left) || assign.as_ref().is_some_and(|a| expr(&a.value, left))
                }
                RuleHead::Set { refr, key, .. } => {
                    expr(refr, left) || key.as_ref().is_some_and(|k| expr(k, left))
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    expr(refr, left)
                        || args.iter().any(|a| expr(a, left))
                        || assign.as_ref().is_some_and(|a| expr(&a.value, left))
                }
            };
            head_deep
                || bodies.iter().any(|b| {
                    b.assign.as_ref().is_some_and(|a| expr(&a.value, left)) || query(&b.query, left)
                })
        }
        Rule::Default {
            refr, args, value, ..
        } => expr(refr, left) || args.iter().any(|a| expr(a, left)) || expr(value, left),
    }
}

/// Whether `q` nests deeper than `left` more levels.
fn query(q: &AstQuery, left: usize) -> bool {
    let Some(left) = left.checked_sub(1) else {
        return true;
    };
    q.stmts.iter().any(|s| {
        any_in_literal(
            &s.literal,
            (&mut |e| expr(e, left), &mut |q| query(q, left)),
        ) || s
            .with_mods
            .iter()
            .any(|w| expr(&w.refr, left) || expr(&w.r#as, left))
    })
}

/// Whether `e` nests deeper than `left` more levels.
fn expr(e: &Ast, left: usize) -> bool {
    let Some(left) = left.checked_sub(1) else {
        return true;
    };
    any_child(e, (&mut |e| expr(e, left), &mut |q| query(q, left)))
}
