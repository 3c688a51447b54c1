//! The direct sub-expressions and sub-queries of regorus's parsed expressions and statements,
//! for the walks that look for something anywhere in them (`depth`, and the variable search of
//! `lower`).

use regorus::unstable::{Expr as Ast, Literal, Query as AstQuery};

/// A test on an expression, and one on a query.
pub(super) type Tests<'a> = (
    &'a mut dyn FnMut(&Ast) -> bool,
    &'a mut dyn FnMut(&AstQuery) -> bool,
);

/// Whether a test holds for some direct sub-expression or query of `e` (none for scalars and
/// variables; always for an expression kind this walk does not know).
pub(super) fn any_child(e: &Ast, (f, q): Tests<'_>) -> bool {
    match e {
        Ast::String { .. }
        | Ast::RawString { .. }
        | Ast::Number { .. }
        | Ast::Bool { .. }
        | Ast::Null { .. }
        | Ast::Var { .. } => false,
        Ast::Array { items, .. } | Ast::Set { items, .. } => items.iter().any(|i| f(i)),
        Ast::Object { fields, .. } => fields.iter().any(|(_, k, v)| f(k) || f(v)),
        Ast::ArrayCompr { term, query, .. } | Ast::SetCompr { term, query, .. } => {
            f(term) || q(query)
        }
        Ast::ObjectCompr {
            key, value, query, ..
        } => f(key) || f(value) || q(query),
        Ast::Call { fcn, params, .. } => f(fcn) || params.iter().any(|p| f(p)),
        Ast::UnaryExpr { expr, .. } => f(expr),
        Ast::RefDot { refr, .. } => f(refr),
        Ast::RefBrack { refr, index, .. } => f(refr) || f(index),
        Ast::BinExpr { lhs, rhs, .. }
        | Ast::BoolExpr { lhs, rhs, .. }
        | Ast::ArithExpr { lhs, rhs, .. }
        | Ast::AssignExpr { lhs, rhs, .. } => f(lhs) || f(rhs),
        Ast::Membership {
            key,
            value,
            collection,
            ..
        } => key.as_ref().is_some_and(|k| f(k)) || f(value) || f(collection),
        // A kind only some builds of regorus have (`OrExpr` with `rego-extensions`, which no
        // crate here turns on, so that every build reads Rego as the agent and upstream do):
        // counted as a match, which every caller takes as a reason to refuse.
        #[allow(unreachable_patterns)]
        _ => true,
    }
}

/// Whether a test holds for some expression or query of the statement `literal` (its `with`
/// modifiers and the names it declares are not looked at).
pub(super) fn any_in_literal(literal: &Literal, (f, q): Tests<'_>) -> bool {
    match literal {
        Literal::SomeVars { .. } => false,
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => key.as_ref().is_some_and(|k| f(k)) || f(value) || f(collection),
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => f(expr),
        Literal::Every { domain, query, .. } => f(domain) || q(query),
    }
}
