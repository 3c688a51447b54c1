//! Rules: evaluated once, at their first reference, definition by definition (defaults after,
//! conflicting values an error), partial sets and objects built path by path, `else` chains
//! and the output contexts their bodies push and pop, as the interpreter does; calls of the
//! policy's functions, each definition tried in turn.

use anyhow::{Result, anyhow, bail};
use regorus::Value;

use super::super::ir::*;
use super::{Ctx, Fallback, Kind, PACKAGE, Run, TimeLimit};

impl<'p> Run<'p> {
    pub(super) fn set(&self, id: usize) -> Result<&'p RuleSet> {
        self.p
            .rules
            .get(id)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("rule {id} not compiled"))
    }

    pub(super) fn ensure(&mut self, id: usize) -> Result<()> {
        if self.path_done[id] {
            return Ok(());
        }
        let set = self.set(id)?;
        for (i, def) in set.defs.iter().enumerate() {
            if !self.def_done[id][i] {
                self.eval_def(id, set, def)?;
                self.def_done[id][i] = true;
            }
        }
        if let Some(d) = &set.default
            && !self.default_done[id]
        {
            if self.values[id] == Value::Undefined {
                self.values[id] = d.clone();
            }
            self.default_done[id] = true;
        }
        self.path_done[id] = true;
        Ok(())
    }

    pub(super) fn eval_def(&mut self, id: usize, set: &'p RuleSet, def: &'p RuleDef) -> Result<()> {
        let mut f = vec![Value::Undefined; def.frame];
        let is_set = set.kind == RuleKind::Set;
        let template = |output: Option<&'p E>, constant: bool| Ctx {
            kind: Kind::Rule {
                set: is_set,
                constant,
                determined: false,
            },
            name: Some(&set.name),
            key: def.key.as_ref(),
            output,
            value: if set.kind == RuleKind::Complete {
                Value::new_array()
            } else if is_set {
                Value::new_set()
            } else {
                Value::new_object()
            },
            rule_value: Value::new_object(),
            early_return: false,
        };
        let value = if let Some(out) = &def.bare_output {
            self.ctxs.push(template(Some(out), def.bare_constant));
            let r = self.output(&mut f);
            let popped = self.ctxs.pop().ok_or_else(|| anyhow!("context popped"))?;
            self.finish(popped, r?)?
        } else {
            let partial = set.kind != RuleKind::Complete;
            self.bodies(&mut f, &def.bodies, partial, &|b: &'p Body| {
                template(b.output.as_ref(), b.constant)
            })?
        };
        let package = Value::from(PACKAGE);
        if value != Value::Undefined {
            for (path, v) in value.as_object()?.iter() {
                let mut full = vec![package.clone()];
                full.extend(path.as_array()?.iter().cloned());
                self.check_path(&full, v, is_set)?;
                self.update(id, &full, v.clone(), is_set)?;
            }
        } else if is_set {
            let full = vec![package, set.name.clone()];
            self.update(id, &full, Value::new_set(), true)?;
        } else if set.kind == RuleKind::Object {
            let full = vec![package, set.name.clone()];
            self.update(id, &full, Value::Undefined, false)?;
        }
        Ok(())
    }

    pub(super) fn check_path(&mut self, path: &[Value], value: &Value, is_set: bool) -> Result<()> {
        let mut conflict = false;
        for (k, v) in self.rule_paths.range(..=path.to_vec()).rev() {
            if path.starts_with(k) {
                if !(k.as_slice() == path && (is_set || v == value)) {
                    conflict = true;
                }
            } else {
                break;
            }
        }
        if conflict {
            bail!("rule conflicts with another rule");
        }
        self.rule_paths.insert(path.to_vec(), value.clone());
        Ok(())
    }

    /// Writes a rule's value at `path` (`[package, name]` or `[package, name, key]`).
    pub(super) fn update(
        &mut self,
        id: usize,
        path: &[Value],
        mut value: Value,
        is_set: bool,
    ) -> Result<()> {
        let slot = &mut self.values[id];
        match path {
            [_, _] => {
                if is_set {
                    if *slot == Value::Undefined {
                        *slot = Value::new_set();
                    }
                    slot.as_set_mut()
                        .map_err(|_| anyhow!("previous value is not a set"))?
                        .append(value.as_set_mut()?);
                } else if value == Value::Undefined {
                    if *slot == Value::Undefined {
                        *slot = Value::new_object();
                    }
                } else if *slot == Value::Undefined {
                    *slot = value;
                } else if *slot != value {
                    bail!("complete rules should not produce multiple outputs");
                }
            }
            [_, _, key] => {
                if *slot == Value::Undefined {
                    *slot = Value::new_object();
                }
                let obj = slot
                    .as_object_mut()
                    .map_err(|_| anyhow!("previous value is not an object"))?;
                if is_set {
                    let s = obj.get_or_insert_with(key.clone(), Value::new_set);
                    s.as_set_mut()
                        .map_err(|_| anyhow!("previous value is not a set"))?
                        .append(value.as_set_mut()?);
                } else if value == Value::Undefined {
                    obj.get_or_insert_with(key.clone(), Value::new_object);
                } else {
                    let existing = obj.get_or_insert_with(key.clone(), || value.clone());
                    if *existing != value {
                        bail!("complete rules should not produce multiple outputs");
                    }
                }
            }
            _ => bail!("rule path"),
        }
        Ok(())
    }

    /// regorus's `eval_rule_bodies`.
    pub(super) fn bodies(
        &mut self,
        f: &mut [Value],
        bodies: &'p [Body],
        partial: bool,
        template: &dyn Fn(&'p Body) -> Ctx<'p>,
    ) -> Result<Value> {
        let mut result: Result<bool> = Ok(true);
        let mut any = false;
        for (idx, body) in bodies.iter().enumerate() {
            if idx == 0 {
                self.ctxs.push(template(body));
            } else {
                let popped = self.ctxs.pop().ok_or_else(|| anyhow!("context popped"))?;
                let mut next = template(body);
                if partial {
                    next.rule_value = popped.rule_value;
                    next.value = popped.value;
                }
                self.ctxs.push(next);
            }
            result = self.query(f, &body.query);
            match &result {
                Ok(true) => {
                    any = true;
                    let next_is_else = bodies.get(idx + 1).is_some_and(|b| b.is_else);
                    if !partial || next_is_else {
                        break;
                    }
                }
                Err(_) => break,
                Ok(false) => {}
            }
        }
        if partial {
            result = result.map(|_| any);
        }
        let popped = self.ctxs.pop().ok_or_else(|| anyhow!("context popped"))?;
        self.finish(popped, result?)
    }

    pub(super) fn finish(&mut self, popped: Ctx<'p>, result: bool) -> Result<Value> {
        if matches!(popped.kind, Kind::Rule { .. }) {
            return Ok(if result {
                popped.rule_value
            } else {
                Value::Undefined
            });
        }
        if !result {
            return Ok(Value::Undefined);
        }
        Ok(match popped.value {
            v @ Value::Object(_) => v,
            Value::Array(a) if a.len() == 1 => a[0].clone(),
            Value::Array(a) if a.is_empty() => Value::Bool(true),
            Value::Array(_) => bail!("complete rules should not produce multiple outputs"),
            v @ Value::Set(_) => v,
            _ => bail!("unexpected context value"),
        })
    }

    /// regorus's `eval_call_impl` for a policy function (no default functions).
    pub(super) fn call(&mut self, f: &mut [Value], func: usize, args: &'p [E]) -> Result<Value> {
        self.tick()?;
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            values.push(self.eval(f, a)?);
        }
        if values.contains(&Value::Undefined) {
            return Ok(Value::Undefined);
        }
        let func = self
            .p
            .funcs
            .get(func)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("function not compiled"))?;
        let mut results: Vec<Value> = Vec::new();
        let mut errors: Vec<anyhow::Error> = Vec::new();
        for def in &func.defs {
            let mut frame = vec![Value::Undefined; def.frame];
            for (slot, v) in def.params.iter().zip(&values) {
                frame[*slot] = v.clone();
            }
            let template = |b: &'p Body| {
                let mut c = Ctx::new(Kind::Func, Value::new_set());
                c.output = b.output.as_ref();
                c
            };
            let depth = self.ctxs.len();
            let value = match self.bodies(&mut frame, &def.bodies, false, &template) {
                Ok(v) => v,
                Err(e) => {
                    if e.downcast_ref::<Fallback>().is_some()
                        || e.downcast_ref::<TimeLimit>().is_some()
                    {
                        return Err(e);
                    }
                    if self.ctxs.len() != depth {
                        bail!(Fallback("an error left an output context behind"));
                    }
                    errors.push(e);
                    continue;
                }
            };
            let result = match &value {
                Value::Set(s) if s.len() == 1 => {
                    s.iter().next().cloned().unwrap_or(Value::Undefined)
                }
                Value::Set(s) if !s.is_empty() => bail!("function produced multiple outputs"),
                Value::Set(_) if !def.head_output => Value::Bool(true),
                Value::Set(_) => Value::Undefined,
                v => v.clone(),
            };
            if result != Value::Undefined {
                results.push(result);
            }
        }
        if results.is_empty() {
            return match errors.into_iter().next() {
                None => Ok(Value::Undefined),
                Some(e) => Err(anyhow!(e.to_string())),
            };
        }
        if results.windows(2).any(|w| w[0] != w[1]) {
            bail!("functions must not produce multiple outputs for same inputs");
        }
        Ok(results.swap_remove(0))
    }
}
