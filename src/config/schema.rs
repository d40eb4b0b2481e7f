//! Reading a config file so that every schema problem is named at once (an unknown field,
//! an unknown variant, a wrong type), each with its field path and line:column, beside
//! validation's own problems.
//!
//! serde stops at the first error, and toml's error for it has a span. So the document is
//! parsed once with spans (`toml::de::DeTable`) and deserialized; on an error, the entry
//! the span falls in is named, reported and taken out of the tree, and the rest is
//! deserialized again, until it passes. Taking an entry out leaves the others' spans as
//! they were, and what is left is read as if the entry had not been written (its default),
//! so that validation can go on and name the semantic problems too. Unknown fields stay
//! errors: every table keeps `deny_unknown_fields`. No crate does this for TOML
//! (`serde_path_to_error` gives a path for the first error only, `serde_ignored` reports
//! unknown fields but not wrong types), and toml's own spans are all it needs.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, Location, Problem};

/// A file read as far as it could be: the config with the entries that had schema
/// problems left out, and those problems.
#[derive(Debug)]
pub struct Parsed {
    /// `None` when a problem could not be cut out of the document (none is known to be).
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
    /// Every field written in the file, by path (`routes[0].hash_key`), with where.
    index: Vec<(String, Location)>,
}

/// One step of a field path.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn path(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        match s {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Where byte `pos` of `text` is, 1-based; the column counts characters.
fn location(text: &str, pos: usize) -> Location {
    let before = &text[..pos.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    Location {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

fn contains(span: Range<usize>, pos: usize) -> bool {
    span.contains(&pos) || (span.is_empty() && span.start == pos)
}

/// The deepest entry whose key or value holds byte `pos`, as a path from `table`.
fn find(table: &DeTable<'_>, pos: usize) -> Option<Vec<Step>> {
    for (k, v) in table.iter() {
        let key = Step::Key(k.get_ref().to_string());
        if let Some(rest) = find_in(v.get_ref(), pos) {
            return Some([vec![key], rest].concat());
        }
        if contains(k.span(), pos) || contains(v.span(), pos) {
            return Some(vec![key]);
        }
    }
    None
}

/// The same inside a value (a table's entries, an array's elements).
fn find_in(v: &DeValue<'_>, pos: usize) -> Option<Vec<Step>> {
    match v {
        DeValue::Table(t) => find(t, pos),
        DeValue::Array(a) => {
            a.iter()
                .enumerate()
                .find_map(|(i, e)| match find_in(e.get_ref(), pos) {
                    Some(rest) => Some([vec![Step::Index(i)], rest].concat()),
                    None if contains(e.span(), pos) => Some(vec![Step::Index(i)]),
                    None => None,
                })
        }
        _ => None,
    }
}

/// Takes the entry at `steps` out of `table`; false if there is none.
fn remove(table: &mut DeTable<'_>, steps: &[Step]) -> bool {
    match steps {
        [Step::Key(k)] => table.remove(k.as_str()).is_some(),
        [Step::Key(k), rest @ ..] => match table.get_mut(k.as_str()).map(|v| v.get_mut()) {
            Some(v) => remove_in(v, rest),
            None => false,
        },
        _ => false,
    }
}

fn remove_in(v: &mut DeValue<'_>, steps: &[Step]) -> bool {
    match (v, steps) {
        (DeValue::Table(t), _) => remove(t, steps),
        (DeValue::Array(a), [Step::Index(i)]) if *i < a.len() => {
            // `DeArray` has no `remove`; rebuilt without the element.
            let items = std::mem::replace(a, toml::de::DeArray::new());
            *a = items
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, e)| e)
                .collect();
            true
        }
        (DeValue::Array(a), [Step::Index(i), rest @ ..]) => match a.get_mut(*i) {
            Some(e) => remove_in(e.get_mut(), rest),
            None => false,
        },
        _ => false,
    }
}

/// Every entry of `table` (and of the tables and arrays in it) with where it is written.
fn index(
    table: &DeTable<'_>,
    prefix: &mut Vec<Step>,
    text: &str,
    out: &mut Vec<(String, Location)>,
) {
    for (k, v) in table.iter() {
        prefix.push(Step::Key(k.get_ref().to_string()));
        out.push((path(prefix), location(text, k.span().start)));
        index_in(v, prefix, text, out);
        prefix.pop();
    }
}

fn index_in(
    v: &Spanned<DeValue<'_>>,
    prefix: &mut Vec<Step>,
    text: &str,
    out: &mut Vec<(String, Location)>,
) {
    match v.get_ref() {
        DeValue::Table(t) => index(t, prefix, text, out),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                prefix.push(Step::Index(i));
                out.push((path(prefix), location(text, e.span().start)));
                index_in(e, prefix, text, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// Reads `text`: `Err` only for a file that is not TOML at all (the syntax error, with
/// its line and column, as toml words it).
pub fn parse(text: &str) -> Result<Parsed, String> {
    let original = DeTable::parse(text).map_err(|e| {
        let mut e = e;
        e.set_input(Some(text));
        e.to_string().trim_end().to_string()
    })?;
    let mut found = Vec::new();
    index(original.get_ref(), &mut Vec::new(), text, &mut found);
    let mut tree = original.clone();
    let mut problems = Vec::new();
    // Each turn takes one entry out, so this ends.
    loop {
        let e = match Config::deserialize(toml::de::Deserializer::from(tree.clone())) {
            Ok(config) => {
                // Found table by table (the tree's keys are sorted): told in file order.
                problems.sort_by_key(|p: &Problem| p.at);
                return Ok(Parsed {
                    config: Some(config),
                    problems,
                    index: found,
                });
            }
            Err(e) => e,
        };
        let pos = e.span().map(|s| s.start);
        // The path as written (indices in `tree` move as array elements are taken out).
        let steps = pos.and_then(|p| find(original.get_ref(), p));
        let cut = pos
            .and_then(|p| find(tree.get_ref(), p))
            .is_some_and(|s| remove(tree.get_mut(), &s));
        problems.push(Problem {
            field: steps.as_deref().map_or_else(String::new, path),
            message: e.message().to_string(),
            at: pos.map(|p| location(text, p)),
        });
        if !cut {
            return Ok(Parsed {
                config: None,
                problems,
                index: found,
            });
        }
    }
}

impl From<Config> for Parsed {
    /// Settings that come from no file (`wslb run` without `--config`, `wslb demo`).
    fn from(config: Config) -> Self {
        Parsed {
            config: Some(config),
            problems: Vec::new(),
            index: Vec::new(),
        }
    }
}

impl Parsed {
    /// Where `field` (a problem's path) is written: the field itself, or the nearest
    /// table or entry around it that is (`tls.key` left out: the `[tls]` table).
    pub fn locate(&self, field: &str) -> Option<Location> {
        let mut f = field;
        loop {
            if let Some((_, at)) = self.index.iter().find(|(p, _)| p == f) {
                return Some(*at);
            }
            let cut = f.rfind(['.', '['])?;
            f = &f[..cut];
        }
    }
}
