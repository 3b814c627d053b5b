//! Deciding a self-consistency vote before every call has answered — pure functions, no I/O.
//!
//! [`settled`] is exact: it says "stop" only when no answer the outstanding calls could still
//! give (or fail to give) would change which candidate the vote selects — tie-breaks included —
//! so stopping returns the very response that waiting for everyone would have returned. The
//! statistical rules that stop *earlier*, accepting a small chance of another answer, are in
//! [`super::adaptive`].

use std::collections::HashMap;

use super::vote::{VoteSettings, calls_key, flat_tool_key, names_key, regex_key};
use crate::config::ToolVote;
use crate::providers::Candidate;

/// One planned upstream call, as far as the fan-out knows it.
#[derive(Debug, Clone, Copy)]
pub enum Slot<'a> {
    /// Still running; it may yet bring up to this many candidates (OpenAI's `n`, usually 1).
    Pending(usize),
    /// Finished: the candidates it brought (none when it failed).
    Done(&'a [Candidate]),
}

/// True when the vote over the finished calls selects the same candidate that the vote over all
/// calls would select, whatever the pending calls answer or however they fail.
///
/// Mirrors [`super::vote::vote`] rule by rule: which side (tool calls or text) votes, in which
/// space, then the majority with ties to the answer seen first (in call order).
pub fn settled(slots: &[Slot<'_>], s: &VoteSettings) -> bool {
    let mut done: Vec<(usize, &Candidate)> = Vec::new();
    let mut first_pending = None;
    let mut still_to_come = 0usize;
    for (slot, state) in slots.iter().enumerate() {
        match *state {
            Slot::Pending(n) => {
                first_pending.get_or_insert(slot);
                still_to_come += n;
            }
            Slot::Done(candidates) => done.extend(candidates.iter().map(|c| (slot, c))),
        }
    }
    let Some(first_pending) = first_pending else {
        return true;
    };
    if still_to_come == 0 {
        return true;
    }
    if done.is_empty() {
        return false;
    }
    let outstanding = Outstanding {
        first_slot: first_pending,
        candidates: still_to_come,
    };
    let tools = done.iter().filter(|(_, c)| c.has_tool_calls()).count();
    let total = done.len();
    match s.tool_vote {
        // Tool calls vote when they are at least half of the candidates: certain only if that
        // holds even when every outstanding candidate turns out to be text.
        Some(mode) if tools * 2 >= total + still_to_come => {
            let calls: Vec<(usize, &Candidate)> = done
                .iter()
                .copied()
                .filter(|(_, c)| c.has_tool_calls())
                .collect();
            tools_settled(&calls, mode, &s.exclude_args, outstanding)
        }
        // Text votes for certain only if it does even when every outstanding one calls tools.
        Some(_) if (tools + still_to_come) * 2 < total + still_to_come => {
            text_settled(&done, s, outstanding)
        }
        Some(_) => false,
        // Without tool voting text always wins the routing once there is any; before that, a
        // single text answer would move the vote from the tool calls to it.
        None if tools < total => text_settled(&done, s, outstanding),
        None => false,
    }
}

/// What the pending calls can still bring.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// The earliest pending call, in call order.
    first_slot: usize,
    /// At most this many candidates in all.
    candidates: usize,
}

fn text_settled(done: &[(usize, &Candidate)], s: &VoteSettings, out: Outstanding) -> bool {
    let texts = done.iter().filter(|(_, c)| !c.has_tool_calls());
    if s.patterns.is_empty() {
        let keyed: Vec<(usize, String)> = texts
            .map(|(slot, c)| (*slot, c.text.trim().to_owned()))
            .collect();
        return flat_settled(&keyed, out, true).is_some();
    }
    let matched: Vec<(usize, String)> = texts
        .filter_map(|(slot, c)| regex_key(&c.text, &s.patterns).map(|k| (*slot, k)))
        .collect();
    // With no match yet the vote is on exact text, and one matching answer would move it to the
    // regex projection.
    !matched.is_empty() && flat_settled(&matched, out, true).is_some()
}

fn tools_settled(
    calls: &[(usize, &Candidate)],
    mode: ToolVote,
    exclude: &[String],
    out: Outstanding,
) -> bool {
    let keyed_by = |key: &dyn Fn(&Candidate) -> String| -> Vec<(usize, String)> {
        calls.iter().map(|(slot, c)| (*slot, key(c))).collect()
    };
    if mode != ToolVote::ToolHierarchical {
        let keyed = keyed_by(&|c| flat_tool_key(c, mode, exclude));
        return flat_settled(&keyed, out, true).is_some();
    }
    // Level 1 (tool names) must keep its winner; which of its members leads does not matter
    // there. Level 2 (exact calls) among that winner's members decides the candidate.
    let names = keyed_by(&names_key);
    let Some(name_winner) = flat_settled(&names, out, false) else {
        return false;
    };
    let finalists: Vec<(usize, String)> = calls
        .iter()
        .zip(&names)
        .filter(|(_, (_, name))| *name == name_winner)
        .map(|((slot, c), _)| (*slot, calls_key(c, exclude)))
        .collect();
    flat_settled(&finalists, out, true).is_some()
}

/// The flat majority over `keyed` (in call order) if it is certain, `None` otherwise.
///
/// The adversary puts every outstanding candidate on one answer. The leader stays ahead of an
/// answer first seen before it only with strictly more votes, and of an answer first seen after
/// it (every new answer is, the outstanding calls coming later) with at least as many. With
/// `same_candidate`, no outstanding call may come before the leader's first vote either: an
/// answer arriving there would become the selected candidate, though the same answer won.
fn flat_settled(
    keyed: &[(usize, String)],
    out: Outstanding,
    same_candidate: bool,
) -> Option<String> {
    struct Group<'k> {
        key: &'k str,
        votes: usize,
        first_slot: usize,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(keyed.len());
    for (slot, key) in keyed {
        match index.get(key.as_str()) {
            Some(&g) => groups[g].votes += 1,
            None => {
                index.insert(key, groups.len());
                groups.push(Group {
                    key,
                    votes: 1,
                    first_slot: *slot,
                });
            }
        }
    }
    let mut leader = groups.first()?;
    for g in &groups[1..] {
        if g.votes > leader.votes {
            leader = g;
        }
    }
    // An outstanding call before the leader's first vote could make any answer "seen first".
    let call_before_leader = out.first_slot < leader.first_slot;
    if same_candidate && call_before_leader {
        return None;
    }
    let stays_ahead = |votes: usize, seen_before_leader: bool| {
        if seen_before_leader || call_before_leader {
            votes + out.candidates < leader.votes
        } else {
            votes + out.candidates <= leader.votes
        }
    };
    // A fresh answer from the outstanding calls starts from zero votes.
    let safe = stays_ahead(0, false)
        && groups.iter().all(|g| {
            std::ptr::eq(g, leader) || stays_ahead(g.votes, g.first_slot < leader.first_slot)
        });
    safe.then(|| leader.key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::vote::vote;
    use serde_json::json;

    // --- exact early decision ---------------------------------------------------------------

    fn text(t: &str) -> Candidate {
        Candidate::from_message(json!({"role": "assistant", "content": t}), None, None)
    }

    fn call(name: &str, args: &str) -> Candidate {
        let tc = json!([{"id": "call_1", "type": "function",
                         "function": {"name": name, "arguments": args}}]);
        Candidate::from_message(
            json!({"role": "assistant", "content": null, "tool_calls": tc}),
            None,
            None,
        )
    }

    fn settings(tool_vote: Option<ToolVote>, patterns: &[&str]) -> VoteSettings {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        VoteSettings::new(tool_vote, vec!["id".into()], &p).expect("valid patterns")
    }

    #[test]
    fn a_majority_no_outstanding_call_can_reach_is_settled() {
        let (a, b) = ([text("A")], [text("B")]);
        let s = settings(None, &[]);
        let slots = [
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&b),
            Slot::Pending(1),
        ];
        assert!(settled(&slots, &s));
        // Two outstanding calls could bring B level with A; A came first, so A still wins.
        let slots = [
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&b),
            Slot::Pending(1),
            Slot::Pending(1),
        ];
        assert!(settled(&slots, &s));
        // Three could put B ahead.
        let slots = [
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&b),
            Slot::Pending(1),
            Slot::Pending(1),
            Slot::Pending(1),
        ];
        assert!(!settled(&slots, &s));
    }

    #[test]
    fn a_tie_is_lost_to_an_answer_seen_earlier() {
        let (a, b) = ([text("A")], [text("B")]);
        let s = settings(None, &[]);
        // B first (slot 0), A leads 3 to 1 with one outstanding: B reaches 2 at most, settled.
        let slots = [
            Slot::Done(&b),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Pending(1),
        ];
        assert!(settled(&slots, &s));
        // B first, A leads 3 to 1 with two outstanding: 1 + 2 = 3 ties and B, seen first, would win.
        let slots = [
            Slot::Done(&b),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Pending(1),
            Slot::Pending(1),
        ];
        assert!(!settled(&slots, &s));
    }

    #[test]
    fn an_outstanding_call_before_the_leader_keeps_the_fan_out_open() {
        let a = [text("A")];
        let s = settings(None, &[]);
        // Unanimous so far, but call 0 could answer A too and would then be the one returned.
        let slots = [
            Slot::Pending(1),
            Slot::Done(&a),
            Slot::Done(&a),
            Slot::Done(&a),
        ];
        assert!(!settled(&slots, &s));
        assert!(settled(
            &[Slot::Done(&a), Slot::Done(&a), Slot::Pending(1)],
            &s
        ));
    }

    #[test]
    fn candidates_per_call_count_as_that_many_votes() {
        let a = [text("A")];
        let s = settings(None, &[]);
        assert!(settled(
            &[Slot::Done(&a), Slot::Done(&a), Slot::Pending(2)],
            &s
        ));
        assert!(!settled(
            &[Slot::Done(&a), Slot::Done(&a), Slot::Pending(3)],
            &s
        ));
    }

    #[test]
    fn routing_between_tools_and_text_must_be_certain() {
        let (c, t) = ([call("f", "{}")], [text("A")]);
        let s = settings(Some(ToolVote::ToolName), &[]);
        // 3 tool calls, 1 text, 1 outstanding: 3·2 ≥ 4 + 1, the tools vote whatever comes.
        let slots = [
            Slot::Done(&c),
            Slot::Done(&c),
            Slot::Done(&c),
            Slot::Done(&t),
            Slot::Pending(1),
        ];
        assert!(settled(&slots, &s));
        // 2 tool calls, 1 text, 1 outstanding: a text answer would make it 2 of 4, still tools;
        // 2·2 ≥ 3 + 1 holds, and the tool majority (2, no rival) cannot be caught by 1.
        let slots = [
            Slot::Done(&c),
            Slot::Done(&c),
            Slot::Done(&t),
            Slot::Pending(1),
        ];
        assert!(settled(&slots, &s));
        // 1 tool call, 1 text, 1 outstanding: either side could win the routing.
        let slots = [Slot::Done(&c), Slot::Done(&t), Slot::Pending(1)];
        assert!(!settled(&slots, &s));
        // Without tool voting, only tool calls so far: one text answer would take the vote.
        let s = settings(None, &[]);
        assert!(!settled(
            &[
                Slot::Done(&c),
                Slot::Done(&c),
                Slot::Done(&c),
                Slot::Pending(1)
            ],
            &s
        ));
    }

    #[test]
    fn regex_space_is_certain_only_once_something_matched() {
        let (yes, no) = ([text("Answer: 42")], [text("no idea")]);
        let s = settings(None, &[r"answer:\s*(\d+)"]);
        assert!(!settled(
            &[
                Slot::Done(&no),
                Slot::Done(&no),
                Slot::Done(&no),
                Slot::Pending(1)
            ],
            &s
        ));
        assert!(settled(
            &[
                Slot::Done(&yes),
                Slot::Done(&yes),
                Slot::Done(&no),
                Slot::Pending(1)
            ],
            &s
        ));
    }

    #[test]
    fn hierarchical_needs_both_levels_settled() {
        let (f1, f2, g) = (
            [call("f", r#"{"x":1}"#)],
            [call("f", r#"{"x":2}"#)],
            [call("g", "{}")],
        );
        let s = settings(Some(ToolVote::ToolHierarchical), &[]);
        // Names: f 3, g 0 → settled at level 1 with 1 outstanding; args among f: x=1 2, x=2 1 →
        // one more x=2 would tie, and x=1 came first: settled.
        let slots = [
            Slot::Done(&f1),
            Slot::Done(&f1),
            Slot::Done(&f2),
            Slot::Pending(1),
        ];
        assert!(settled(&slots, &s));
        // x=2 first: a tie would go to x=2.
        let slots = [
            Slot::Done(&f2),
            Slot::Done(&f1),
            Slot::Done(&f1),
            Slot::Pending(1),
        ];
        assert!(!settled(&slots, &s));
        // Names f 2, g 1 with two outstanding: g could overtake.
        let slots = [
            Slot::Done(&f1),
            Slot::Done(&f1),
            Slot::Done(&g),
            Slot::Pending(1),
            Slot::Pending(1),
        ];
        assert!(!settled(&slots, &s));
    }

    #[test]
    fn nothing_outstanding_is_settled_and_nothing_done_is_not() {
        let a = [text("A")];
        let s = settings(None, &[]);
        assert!(settled(&[Slot::Done(&a), Slot::Done(&[])], &s));
        assert!(!settled(&[Slot::Pending(1), Slot::Pending(1)], &s));
        assert!(!settled(&[Slot::Done(&[]), Slot::Pending(1)], &s));
    }

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The selected candidate as (call, position in the call's candidates).
    fn selected_of(
        outcomes: &[Option<Vec<Candidate>>],
        s: &VoteSettings,
    ) -> Option<(usize, usize)> {
        let flat: Vec<(usize, usize, Candidate)> = outcomes
            .iter()
            .enumerate()
            .flat_map(|(slot, o)| {
                o.iter()
                    .flatten()
                    .enumerate()
                    .map(move |(pos, c)| (slot, pos, c.clone()))
            })
            .collect();
        let candidates: Vec<Candidate> = flat.iter().map(|(_, _, c)| c.clone()).collect();
        let v = vote(&candidates, s).ok()?;
        Some((flat[v.selected].0, flat[v.selected].1))
    }

    /// The property the early decision promises: over random answers, failures, settings and
    /// arrival orders, stopping as soon as `settled` says so selects exactly the candidate the
    /// vote over every call selects. Also checks it does stop early often enough to matter.
    #[test]
    fn stopping_early_never_changes_the_selected_candidate() {
        let pool = [
            text("A"),
            text(" A "),
            text("B"),
            text("C"),
            text("Answer: 42"),
            text("answer: 42."),
            text("Answer: 7"),
            call("f", r#"{"x":1}"#),
            call("f", r#"{"x": 1, "id": "z"}"#),
            call("f", r#"{"x":2}"#),
            call("g", "{}"),
        ];
        let modes = [
            None,
            Some(ToolVote::ToolName),
            Some(ToolVote::ToolArgs),
            Some(ToolVote::ToolHierarchical),
            Some(ToolVote::ToolFlatAll),
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut scenarios, mut stopped_early) = (0, 0);
        for _ in 0..3_000 {
            let s = settings(
                modes[rng.below(modes.len())],
                if rng.below(3) == 0 {
                    &[r"answer:\s*(\d+)"]
                } else {
                    &[]
                },
            );
            let calls = 1 + rng.below(9);
            let per_call = if rng.below(5) == 0 { 2 } else { 1 };
            // Skewed answer distributions make early decisions common, as in real traffic.
            let favourite = rng.below(pool.len());
            let outcomes: Vec<Option<Vec<Candidate>>> = (0..calls)
                .map(|_| {
                    if rng.below(10) == 0 {
                        return Some(Vec::new()); // a failed call
                    }
                    Some(
                        (0..per_call)
                            .map(|_| {
                                let i = if rng.below(3) > 0 {
                                    favourite
                                } else {
                                    rng.below(pool.len())
                                };
                                pool[i].clone()
                            })
                            .collect(),
                    )
                })
                .collect();
            let full = selected_of(&outcomes, &s);
            let mut order: Vec<usize> = (0..calls).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let mut arrived: Vec<Option<Vec<Candidate>>> = vec![None; calls];
            for (step, &slot) in order.iter().enumerate() {
                arrived[slot] = outcomes[slot].clone();
                let slots: Vec<Slot<'_>> = arrived
                    .iter()
                    .map(|a| match a {
                        Some(c) => Slot::Done(c),
                        None => Slot::Pending(per_call),
                    })
                    .collect();
                if settled(&slots, &s) {
                    assert_eq!(
                        selected_of(&arrived, &s),
                        full,
                        "stopped after {} of {calls} calls (order {order:?}) with {:?}",
                        step + 1,
                        s.tool_vote
                    );
                    if step + 1 < calls {
                        stopped_early += 1;
                    }
                    break;
                }
            }
            scenarios += 1;
        }
        assert!(
            stopped_early * 4 > scenarios,
            "stopped early in only {stopped_early} of {scenarios}"
        );
    }
}
