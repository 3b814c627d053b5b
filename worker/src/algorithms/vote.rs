//! Majority voting over candidates — pure functions, no I/O.
//!
//! Rules (see docs/compatibility.md for where they deliberately differ from the reference):
//! * When `tool_vote` is set and at least half the candidates call tools, the vote is among the
//!   tool-calling candidates; otherwise among the text ones.
//! * Text answers vote on their `regex_patterns` projection (group 1 of the first match, or the
//!   whole match), or on their whitespace-trimmed text. A candidate none of whose patterns
//!   match never wins over one that matches.
//! * Tool votes compare *all* calls of a candidate, not just the first; arguments are compared as
//!   canonical JSON (keys sorted, `1.0 == 1`, excluded argument names removed from every call).
//! * Ties go to the candidate that came first, so the same candidates always give the same winner.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;

use regex::Regex;
use serde_json::Value;

use crate::config::ToolVote;
use crate::providers::Candidate;

/// How candidates are compared.
#[derive(Debug, Clone, Default)]
pub struct VoteSettings {
    pub tool_vote: Option<ToolVote>,
    pub exclude_args: Vec<String>,
    pub patterns: Vec<Regex>,
}

impl VoteSettings {
    /// Compiles `regex_patterns` case-insensitively with `.` matching newlines (as the reference).
    pub fn new(
        tool_vote: Option<ToolVote>,
        exclude_args: Vec<String>,
        patterns: &[String],
    ) -> Result<Self, regex::Error> {
        let patterns = patterns
            .iter()
            .map(|p| Regex::new(&format!("(?si){p}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tool_vote,
            exclude_args,
            patterns,
        })
    }
}

/// What was voted on; also a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteSpace {
    TextExact,
    TextRegex,
    ToolName,
    ToolArgs,
    ToolHierarchical,
    ToolFlatAll,
    /// Every candidate called tools but no `tool_vote` was configured: exact calls are compared.
    ToolCallsExact,
}

impl VoteSpace {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteSpace::TextExact => "text_exact",
            VoteSpace::TextRegex => "text_regex",
            VoteSpace::ToolName => "tool_name",
            VoteSpace::ToolArgs => "tool_args",
            VoteSpace::ToolHierarchical => "tool_hierarchical",
            VoteSpace::ToolFlatAll => "tool_flat_all",
            VoteSpace::ToolCallsExact => "tool_calls_exact",
        }
    }
}

/// The result of a vote.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// Index (into the candidates given) of the winner.
    pub selected: usize,
    /// Votes per distinct answer, in order of first appearance.
    pub counts: Vec<(String, usize)>,
    /// For hierarchical votes, the first level (tool names) counts.
    pub name_counts: Option<Vec<(String, usize)>>,
    /// Candidates that took part in the vote.
    pub eligible: usize,
    /// Votes of the winning answer (for the agreement ratio).
    pub winner_votes: usize,
    pub space: VoteSpace,
    /// True when another answer had as many votes as the winner.
    pub tied: bool,
}

impl Vote {
    /// Share of the eligible candidates that agreed with the winner.
    pub fn agreement(&self) -> f64 {
        if self.eligible == 0 {
            0.0
        } else {
            self.winner_votes as f64 / self.eligible as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("no candidates to vote on")]
    NoCandidates,
}

/// Runs the vote.
pub fn vote(candidates: &[Candidate], s: &VoteSettings) -> Result<Vote, VoteError> {
    if candidates.is_empty() {
        return Err(VoteError::NoCandidates);
    }
    let tool_idx: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].has_tool_calls())
        .collect();
    let text_idx: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].has_tool_calls())
        .collect();
    match s.tool_vote {
        Some(mode) if tool_idx.len() * 2 >= candidates.len() => {
            Ok(tool_vote(candidates, &tool_idx, mode, &s.exclude_args))
        }
        _ if !text_idx.is_empty() => Ok(text_vote(candidates, &text_idx, &s.patterns)),
        _ => {
            let keyed = tool_idx
                .iter()
                .map(|&i| (i, calls_key(&candidates[i], &s.exclude_args)))
                .collect();
            Ok(flat(keyed, VoteSpace::ToolCallsExact))
        }
    }
}

fn text_vote(candidates: &[Candidate], idx: &[usize], patterns: &[Regex]) -> Vote {
    if !patterns.is_empty() {
        let matched: Vec<(usize, String)> = idx
            .iter()
            .filter_map(|&i| regex_key(&candidates[i].text, patterns).map(|k| (i, k)))
            .collect();
        if !matched.is_empty() {
            return flat(matched, VoteSpace::TextRegex);
        }
    }
    flat(
        idx.iter()
            .map(|&i| (i, candidates[i].text.trim().to_owned()))
            .collect(),
        VoteSpace::TextExact,
    )
}

/// The regex projection of a text, or `None` when no pattern matches.
pub(crate) fn regex_key(text: &str, patterns: &[Regex]) -> Option<String> {
    let parts: Vec<Option<String>> = patterns
        .iter()
        .map(|re| {
            re.captures(text).map(|c| {
                let m = c.get(1).or_else(|| c.get(0)).map_or("", |m| m.as_str());
                m.trim().to_owned()
            })
        })
        .collect();
    if parts.iter().all(Option::is_none) {
        return None;
    }
    Some(
        parts
            .into_iter()
            .map(|p| p.unwrap_or_else(|| "<no match>".to_owned()))
            .collect::<Vec<_>>()
            .join(" | "),
    )
}

fn tool_vote(candidates: &[Candidate], idx: &[usize], mode: ToolVote, exclude: &[String]) -> Vote {
    let space = match mode {
        ToolVote::ToolName => VoteSpace::ToolName,
        ToolVote::ToolArgs => VoteSpace::ToolArgs,
        ToolVote::ToolFlatAll => VoteSpace::ToolFlatAll,
        ToolVote::ToolHierarchical => return hierarchical_vote(candidates, idx, exclude),
    };
    flat(
        idx.iter()
            .map(|&i| (i, flat_tool_key(&candidates[i], mode, exclude)))
            .collect(),
        space,
    )
}

/// Level 1: which tools. Level 2: exact arguments, among the winning tools only.
fn hierarchical_vote(candidates: &[Candidate], idx: &[usize], exclude: &[String]) -> Vote {
    let names = tally(
        idx.iter()
            .map(|&i| (i, names_key(&candidates[i])))
            .collect(),
    );
    let (name_winner, _) = winner(&names);
    let finalists = &names[name_winner].members;
    let full = tally(
        idx.iter()
            .map(|&i| (i, calls_key(&candidates[i], exclude)))
            .collect(),
    );
    let in_final = tally(
        finalists
            .iter()
            .map(|&i| (i, calls_key(&candidates[i], exclude)))
            .collect(),
    );
    let (w, tied) = winner(&in_final);
    Vote {
        selected: in_final[w].members[0],
        winner_votes: in_final[w].members.len(),
        counts: full
            .iter()
            .map(|g| (g.key.clone(), g.members.len()))
            .collect(),
        name_counts: Some(
            names
                .iter()
                .map(|g| (g.key.clone(), g.members.len()))
                .collect(),
        ),
        eligible: idx.len(),
        space: VoteSpace::ToolHierarchical,
        tied: tied || winner(&names).1,
    }
}

/// The key a candidate votes with in the flat tool-vote modes (`tool_name`, `tool_args`,
/// `tool_flat_all`); for `tool_hierarchical`, its first level (the tool names).
pub(crate) fn flat_tool_key(c: &Candidate, mode: ToolVote, exclude: &[String]) -> String {
    match mode {
        ToolVote::ToolName | ToolVote::ToolHierarchical => names_key(c),
        ToolVote::ToolArgs => c
            .tool_calls
            .iter()
            .map(|t| canonical_args(&t.arguments, exclude))
            .collect::<Vec<_>>()
            .join("; "),
        ToolVote::ToolFlatAll => {
            let set: BTreeSet<String> = c
                .tool_calls
                .iter()
                .map(|t| format!("{}({})", t.name, canonical_args(&t.arguments, exclude)))
                .collect();
            set.into_iter().collect::<Vec<_>>().join("; ")
        }
    }
}

pub(crate) fn names_key(c: &Candidate) -> String {
    c.tool_calls
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn calls_key(c: &Candidate, exclude: &[String]) -> String {
    c.tool_calls
        .iter()
        .map(|t| format!("{}({})", t.name, canonical_args(&t.arguments, exclude)))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Group {
    key: String,
    members: Vec<usize>,
}

/// Groups equal keys, in order of first appearance.
fn tally(keyed: Vec<(usize, String)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut pos: HashMap<String, usize> = HashMap::with_capacity(keyed.len());
    for (i, key) in keyed {
        match pos.get(&key) {
            Some(&g) => groups[g].members.push(i),
            None => {
                pos.insert(key.clone(), groups.len());
                groups.push(Group {
                    key,
                    members: vec![i],
                });
            }
        }
    }
    groups
}

/// The group with most votes; on a tie the one that appeared first. Returns (group, tied).
fn winner(groups: &[Group]) -> (usize, bool) {
    let mut best = 0;
    let mut tied = false;
    for (g, group) in groups.iter().enumerate().skip(1) {
        let (n, b) = (group.members.len(), groups[best].members.len());
        if n > b {
            best = g;
            tied = false;
        } else if n == b {
            tied = true;
        }
    }
    (best, tied)
}

fn flat(keyed: Vec<(usize, String)>, space: VoteSpace) -> Vote {
    let eligible = keyed.len();
    let groups = tally(keyed);
    let (w, tied) = winner(&groups);
    Vote {
        selected: groups[w].members[0],
        winner_votes: groups[w].members.len(),
        counts: groups
            .iter()
            .map(|g| (g.key.clone(), g.members.len()))
            .collect(),
        name_counts: None,
        eligible,
        space,
        tied,
    }
}

/// Canonical form of a tool call's JSON arguments: keys sorted at every level, integral floats
/// written as integers, and the top-level arguments named in `exclude` removed. Arguments that
/// are not JSON are compared as trimmed text.
pub fn canonical_args(raw: &str, exclude: &[String]) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(mut map)) => {
            for name in exclude {
                map.remove(name);
            }
            canonical_string(&Value::Object(map), raw.len())
        }
        Ok(other) => canonical_string(&other, raw.len()),
        Err(_) if raw.trim().is_empty() => "{}".to_owned(),
        Err(_) => raw.trim().to_owned(),
    }
}

fn canonical_string(v: &Value, capacity: usize) -> String {
    let mut out = Vec::with_capacity(capacity);
    write_canonical(v, &mut out);
    // serde_json writes UTF-8 and so does every arm below: the lossy branch is never taken.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

// Written by hand rather than with serde_json::to_string: key order must not depend on whether
// some other crate in the build enabled serde_json's `preserve_order`. Strings are escaped by
// serde_json straight into the output (this runs for every tool call on every vote).
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (n, k) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Number(num) => {
            // Writing to a Vec cannot fail.
            let _ = match num.as_f64() {
                Some(f) if num.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    write!(out, "{}", f as i64)
                }
                _ => write!(out, "{num}"),
            };
        }
        Value::String(text) => write_json_string(text, out),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

fn write_json_string(text: &str, out: &mut Vec<u8>) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Candidate;
    use serde_json::json;

    fn text(t: &str) -> Candidate {
        Candidate::from_message(json!({"role":"assistant","content":t}), None, None)
    }

    fn calls(calls: &[(&str, &str)]) -> Candidate {
        let tc: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (n, a))| json!({"id": format!("call_{i}"), "type":"function","function":{"name":n,"arguments":a}}))
            .collect();
        Candidate::from_message(
            json!({"role":"assistant","content":null,"tool_calls":tc}),
            None,
            None,
        )
    }

    fn settings(tv: Option<ToolVote>, exclude: &[&str], patterns: &[&str]) -> VoteSettings {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        VoteSettings::new(tv, exclude.iter().map(|s| s.to_string()).collect(), &p).unwrap()
    }

    #[test]
    fn text_majority_trimmed() {
        let c = [text("B"), text(" A "), text("A\n"), text("B"), text("A")];
        let v = vote(&c, &settings(None, &[], &[])).unwrap();
        assert_eq!(v.selected, 1);
        assert_eq!(v.counts, vec![("B".into(), 2), ("A".into(), 3)]);
        assert_eq!(v.space, VoteSpace::TextExact);
        assert!((v.agreement() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn ties_go_to_the_earliest_candidate() {
        let c = [text("x"), text("y"), text("y"), text("x")];
        let v = vote(&c, &settings(None, &[], &[])).unwrap();
        assert_eq!(v.selected, 0);
        assert!(v.tied);
    }

    #[test]
    fn regex_projection_votes_on_the_captured_answer() {
        let c = [
            text("Let me think... \\boxed{42}"),
            text("The result is \\boxed{ 42 }."),
            text("\\boxed{41}"),
        ];
        let v = vote(&c, &settings(None, &[], &[r"\\boxed\{(.*?)\}"])).unwrap();
        assert_eq!(v.selected, 0);
        assert_eq!(v.counts, vec![("42".into(), 2), ("41".into(), 1)]);
        assert_eq!(v.space, VoteSpace::TextRegex);
    }

    #[test]
    fn unmatched_candidates_never_beat_matched_ones() {
        // Three identical non-matching answers must not outvote one matching answer.
        let c = [
            text("no idea"),
            text("no idea"),
            text("no idea"),
            text("ANSWER: 7"),
        ];
        let v = vote(&c, &settings(None, &[], &["answer: (\\d+)"])).unwrap();
        assert_eq!(v.selected, 3);
        assert_eq!(v.eligible, 1);
        // …and with no match anywhere, the trimmed text decides.
        let c = [text("no idea"), text("maybe"), text("no idea")];
        let v = vote(&c, &settings(None, &[], &["answer: (\\d+)"])).unwrap();
        assert_eq!((v.selected, v.space), (0, VoteSpace::TextExact));
    }

    #[test]
    fn regex_is_case_insensitive_and_dotall() {
        let c = [text("Answer:\n 5"), text("answer: 5")];
        let v = vote(&c, &settings(None, &[], &["answer:.(\\s*\\d)"])).unwrap();
        assert_eq!(v.counts, vec![("5".into(), 2)]);
    }

    #[test]
    fn tool_name_vote() {
        let c = [
            calls(&[("search", "{}")]),
            calls(&[("calc", r#"{"e":"1"}"#)]),
            calls(&[("calc", r#"{"e":"2"}"#)]),
        ];
        let v = vote(&c, &settings(Some(ToolVote::ToolName), &[], &[])).unwrap();
        assert_eq!(v.selected, 1);
        assert_eq!(v.counts, vec![("search".into(), 1), ("calc".into(), 2)]);
    }

    #[test]
    fn tool_args_vote_is_exact_and_ignores_key_order_and_excluded_args() {
        let c = [
            calls(&[("calc", r#"{"a":1,"b":1,"request_id":"r1"}"#)]),
            calls(&[("calc", r#"{"a":2,"b":9,"request_id":"r2"}"#)]),
            calls(&[("calc", r#"{"b":9.0,"a":2,"request_id":"r3"}"#)]),
            calls(&[("calc", r#"{"a":1,"b":3}"#)]),
        ];
        let v = vote(
            &c,
            &settings(Some(ToolVote::ToolArgs), &["request_id"], &[]),
        )
        .unwrap();
        // The reference's pair-wise hierarchy would pick an a=1 call; exact voting picks {a:2,b:9}.
        assert_eq!(v.selected, 1);
        assert_eq!(v.winner_votes, 2);
        // Without the exclusion every call is different and the earliest wins the 1/1/1/1 tie.
        let v = vote(&c, &settings(Some(ToolVote::ToolArgs), &[], &[])).unwrap();
        assert_eq!((v.selected, v.tied), (0, true));
    }

    #[test]
    fn exclude_args_applies_to_every_call_not_just_the_first() {
        let c = [
            calls(&[("a", r#"{"x":1,"ts":1}"#), ("b", r#"{"y":2,"ts":1}"#)]),
            calls(&[("a", r#"{"x":1,"ts":2}"#), ("b", r#"{"y":2,"ts":2}"#)]),
            calls(&[("a", r#"{"x":1,"ts":3}"#), ("b", r#"{"y":3,"ts":3}"#)]),
        ];
        let v = vote(&c, &settings(Some(ToolVote::ToolArgs), &["ts"], &[])).unwrap();
        assert_eq!(v.winner_votes, 2);
        assert_eq!(v.counts[0].0, r#"{"x":1}; {"y":2}"#);
    }

    #[test]
    fn hierarchical_picks_the_name_first_then_exact_args() {
        let c = [
            calls(&[("search", r#"{"q":"x"}"#)]),
            calls(&[("search", r#"{"q":"x"}"#)]),
            calls(&[("calc", r#"{"e":"1+1"}"#)]),
            calls(&[("calc", r#"{"e":"1+2"}"#)]),
            calls(&[("calc", r#"{"e":"1+2","id":"z"}"#)]),
        ];
        let v = vote(
            &c,
            &settings(Some(ToolVote::ToolHierarchical), &["id"], &[]),
        )
        .unwrap();
        // `calc` wins on names (3 vs 2), then "1+2" wins among the calc calls — even though the
        // search call has as many exact votes overall.
        assert_eq!(v.selected, 3);
        assert_eq!(
            v.name_counts,
            Some(vec![("search".into(), 2), ("calc".into(), 3)])
        );
        assert_eq!(v.winner_votes, 2);
    }

    #[test]
    fn flat_all_ignores_call_order_and_duplicates() {
        let c = [
            calls(&[("a", "{}"), ("b", "{}")]),
            calls(&[("b", "{}"), ("a", "{}"), ("a", "{}")]),
            calls(&[("a", "{}")]),
        ];
        let v = vote(&c, &settings(Some(ToolVote::ToolFlatAll), &[], &[])).unwrap();
        assert_eq!(
            v.counts,
            vec![("a({}); b({})".into(), 2), ("a({})".into(), 1)]
        );
    }

    #[test]
    fn mixed_candidates_route_by_majority() {
        // 2 of 4 call tools: half counts as a tool majority when tool_vote is set.
        let c = [
            text("hi"),
            calls(&[("f", "{}")]),
            text("hi"),
            calls(&[("f", "{}")]),
        ];
        let v = vote(&c, &settings(Some(ToolVote::ToolName), &[], &[])).unwrap();
        assert_eq!((v.selected, v.space), (1, VoteSpace::ToolName));
        // 1 of 3: text wins.
        let c = [text("hi"), calls(&[("f", "{}")]), text("hi")];
        let v = vote(&c, &settings(Some(ToolVote::ToolName), &[], &[])).unwrap();
        assert_eq!((v.selected, v.space), (0, VoteSpace::TextExact));
        // Without tool_vote, text candidates are voted even when fewer.
        let c = [calls(&[("f", "{}")]), calls(&[("f", "{}")]), text("hi")];
        let v = vote(&c, &settings(None, &[], &[])).unwrap();
        assert_eq!(v.selected, 2);
        // …and when all call tools, exact calls are compared instead of failing.
        let c = [
            calls(&[("f", r#"{"a":1}"#)]),
            calls(&[("f", r#"{"a":2}"#)]),
            calls(&[("f", r#"{ "a": 2 }"#)]),
        ];
        let v = vote(&c, &settings(None, &[], &[])).unwrap();
        assert_eq!((v.selected, v.space), (1, VoteSpace::ToolCallsExact));
    }

    #[test]
    fn canonical_args_cases() {
        assert_eq!(
            canonical_args(r#"{"b":[1,{"d":1.0,"c":2}],"a":null}"#, &[]),
            r#"{"a":null,"b":[1,{"c":2,"d":1}]}"#
        );
        assert_eq!(canonical_args("not json", &[]), "not json");
        assert_eq!(canonical_args("", &[]), "{}");
        assert_eq!(canonical_args(r#"{"id":1}"#, &["id".into()]), "{}");
        assert_eq!(canonical_args("1.5", &[]), "1.5");
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(
            vote(&[], &VoteSettings::default()),
            Err(VoteError::NoCandidates)
        );
    }
}
