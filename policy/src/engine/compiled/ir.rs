//! The compiled form: names resolved to slots, rule ids and function pointers at load.

use regorus::Value;
use regorus::unstable::{ArithOp, BinOp, BoolOp, BuiltinFcn, Expr as Ast, Ref, Span};

/// A local variable's (or a hoisted loop's current value's) index in its frame.
pub(super) type Slot = usize;

/// An expression.
#[derive(Debug, Clone)]
pub(super) enum E {
    Const(Value),
    /// A reference: a head and the string fields read after it, in order.
    Ref {
        head: Box<Head>,
        fields: Vec<Value>,
    },
    Array(Vec<E>),
    Set(Vec<E>),
    Object(Vec<(E, E)>),
    Compr(Box<Compr>),
    Call {
        func: usize,
        args: Vec<E>,
    },
    Builtin(Box<Builtin>),
    Print {
        args: Vec<E>,
        line: u32,
    },
    Compare {
        op: BoolOp,
        lhs: Box<E>,
        rhs: Box<E>,
    },
    Arith(Box<Arith>),
    SetOp(Box<SetOp>),
    Member {
        key: Option<Box<E>>,
        value: Box<E>,
        collection: Box<E>,
    },
    Assign(Box<Plan>),
}

#[derive(Debug, Clone)]
pub(super) enum Head {
    Local(Slot),
    Input,
    Data,
    Rule(usize),
    /// `refr[index]` with a non-string index; `loop_slot` when regorus hoists it as a loop.
    Index {
        loop_slot: Option<Slot>,
        index: E,
        refr: E,
        data_root: bool,
    },
    Other(E),
}

#[derive(Debug, Clone)]
pub(super) struct Builtin {
    pub(super) f: BuiltinFcn,
    pub(super) span: Span,
    pub(super) params: Vec<Ref<Ast>>,
    pub(super) args: Vec<E>,
}

#[derive(Debug, Clone)]
pub(super) struct Arith {
    pub(super) op: ArithOp,
    pub(super) span: Span,
    pub(super) lhs_ast: Ref<Ast>,
    pub(super) rhs_ast: Ref<Ast>,
    pub(super) lhs: E,
    pub(super) rhs: E,
}

#[derive(Debug, Clone)]
pub(super) struct SetOp {
    pub(super) op: BinOp,
    pub(super) lhs_ast: Ref<Ast>,
    pub(super) rhs_ast: Ref<Ast>,
    pub(super) lhs: E,
    pub(super) rhs: E,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ComprKind {
    Array,
    Set,
    Object,
}

#[derive(Debug, Clone)]
pub(super) struct Compr {
    pub(super) kind: ComprKind,
    pub(super) key: Option<E>,
    pub(super) term: E,
    pub(super) query: Query,
}

/// How an assignment or unification binds.
#[derive(Debug, Clone)]
pub(super) enum Plan {
    /// `x := e`, `x = e` (x unbound), `e = x` (x unbound).
    Bind { value: E, slot: Slot },
    /// `[a, b] := e`.
    Array { value: E, slots: Vec<Option<Slot>> },
    /// `_ = e` or `e = _`.
    Wildcard(E),
    /// `a = b` with nothing to bind.
    Check { lhs: E, rhs: E },
}

#[derive(Debug, Clone)]
pub(super) struct Loop {
    pub(super) collection: E,
    pub(super) slot: Slot,
    /// The index variable (None for `_`).
    pub(super) index: Option<Slot>,
}

#[derive(Debug, Clone)]
pub(super) enum Lit {
    Expr(E),
    Not(E),
    SomeVars(Vec<Slot>),
    SomeIn {
        key: Option<Option<Slot>>,
        value: Option<Slot>,
        collection: E,
    },
    Every {
        key: Option<Slot>,
        value: Slot,
        domain: E,
        query: Query,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Stmt {
    pub(super) loops: Vec<Loop>,
    pub(super) lit: Lit,
}

/// A query's statements in regorus's order.
#[derive(Debug, Clone, Default)]
pub(super) struct Query {
    pub(super) stmts: Vec<Stmt>,
}

#[derive(Debug, Clone)]
pub(super) struct Body {
    pub(super) query: Query,
    /// The output evaluated when the body holds (its own `else := v`, else the head's).
    pub(super) output: Option<E>,
    /// Whether the rule's output is a constant here (regorus then stops at the first success).
    pub(super) constant: bool,
    pub(super) is_else: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RuleKind {
    Complete,
    Set,
    Object,
}

#[derive(Debug, Clone)]
pub(super) struct RuleDef {
    pub(super) key: Option<E>,
    pub(super) bodies: Vec<Body>,
    /// Body-less definitions: the head output, evaluated once.
    pub(super) bare_output: Option<E>,
    pub(super) bare_constant: bool,
    pub(super) frame: usize,
}

#[derive(Debug, Clone)]
pub(super) struct RuleSet {
    pub(super) name: Value,
    pub(super) kind: RuleKind,
    pub(super) defs: Vec<RuleDef>,
    pub(super) default: Option<Value>,
}

#[derive(Debug, Clone)]
pub(super) struct FuncDef {
    pub(super) params: Vec<Slot>,
    pub(super) bodies: Vec<Body>,
    pub(super) head_output: bool,
    pub(super) frame: usize,
}

#[derive(Debug, Clone)]
pub(super) struct Func {
    pub(super) defs: Vec<FuncDef>,
}
