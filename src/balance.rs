//! Bounded loads ("Consistent Hashing with Bounded Loads", Mirrokni, Thorup and
//! Zadimoghaddam): no backend takes more than its weight's share of `c` times the
//! requests in flight; a key whose owner is full goes to the next backend of its
//! failover order with room. Pure: counts in, a choice out; no atomics, no clock.

use crate::ring::BackendId;

/// A backend with fewer requests than this in flight always takes its own keys: at low
/// load the bound would otherwise be a request or two, and keys would spill for
/// nothing (HAProxy's cap at low load is 1; sglang had to add a floor).
pub const FLOOR: u64 = 2;

/// The bound on one backend's requests in flight: `ceil(c × (total + 1) × weight /
/// available_weight)`, counting the request being placed in `total + 1`.
pub fn capacity(factor: f64, total_in_flight: u64, weight: u32, available_weight: u64) -> u64 {
    if available_weight == 0 {
        return u64::MAX;
    }
    let cap = factor * (total_in_flight as f64 + 1.0) * f64::from(weight) / available_weight as f64;
    cap.ceil() as u64
}

/// A backend with `in_flight` requests can take one more under `cap`.
pub fn has_room(in_flight: u64, cap: u64) -> bool {
    in_flight < FLOOR || in_flight < cap
}

/// One candidate of a key's failover order, as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Which backend.
    pub id: BackendId,
    /// Its requests in flight now.
    pub in_flight: u64,
    /// Its weight.
    pub weight: u32,
}

/// What the chooser decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Where the request goes.
    pub id: BackendId,
    /// The first candidate: the key's owner among the available backends.
    pub owner: BackendId,
    /// Not the first candidate: the ones before it were full.
    pub spilled: bool,
}

/// The first candidate (in failover order, available ones only) with room; when all
/// are full, the one with the most room left (the earliest on a tie). Looks at each
/// candidate once and stops at the first with room: O(1) per backend looked at.
pub fn choose(
    candidates: impl IntoIterator<Item = Candidate>,
    factor: f64,
    total_in_flight: u64,
    available_weight: u64,
) -> Option<Choice> {
    let mut best: Option<(i128, usize, BackendId)> = None;
    let mut owner = None;
    for (i, c) in candidates.into_iter().enumerate() {
        let owner = *owner.get_or_insert(c.id);
        let cap = capacity(factor, total_in_flight, c.weight, available_weight);
        if has_room(c.in_flight, cap) {
            return Some(Choice {
                id: c.id,
                owner,
                spilled: i > 0,
            });
        }
        let room = i128::from(cap) - i128::from(c.in_flight);
        if best.is_none_or(|(r, _, _)| room > r) {
            best = Some((room, i, c.id));
        }
    }
    Some(Choice {
        id: best?.2,
        owner: owner?,
        spilled: best?.1 > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: u32, in_flight: u64, weight: u32) -> Candidate {
        Candidate {
            id: BackendId(id),
            in_flight,
            weight,
        }
    }

    #[test]
    fn capacity_follows_the_paper_and_weights() {
        // 3 backends of weight 1, 29 in flight, c = 1.25: ceil(1.25 * 30 / 3) = 13.
        assert_eq!(capacity(1.25, 29, 1, 3), 13);
        // A weight-2 backend of total weight 4 gets half.
        assert_eq!(capacity(1.0, 9, 2, 4), 5);
    }

    #[test]
    fn the_floor_keeps_light_traffic_at_home() {
        // With one request in flight the bound is 1, but the owner keeps its key.
        let c = choose([cand(0, 1, 1), cand(1, 0, 1)], 1.01, 1, 8).expect("a choice");
        assert_eq!(
            c,
            Choice {
                id: BackendId(0),
                owner: BackendId(0),
                spilled: false
            }
        );
    }

    #[test]
    fn a_full_owner_spills_to_the_next_with_room_and_all_full_picks_most_room() {
        let c = choose([cand(0, 20, 1), cand(1, 20, 1), cand(2, 3, 1)], 1.25, 30, 3);
        assert_eq!(
            c,
            Some(Choice {
                id: BackendId(2),
                owner: BackendId(0),
                spilled: true
            })
        );
        // Everybody over: the one with most room (least over) wins.
        let c = choose([cand(0, 50, 1), cand(1, 40, 1), cand(2, 45, 1)], 1.0, 2, 3);
        assert_eq!(
            c,
            Some(Choice {
                id: BackendId(1),
                owner: BackendId(0),
                spilled: true
            })
        );
        assert_eq!(choose([], 1.5, 0, 1), None);
    }

    proptest! {
        #[test]
        fn the_choice_is_the_first_candidate_with_room(
            loads in proptest::collection::vec((0u64..40, 1u32..4), 1..10),
            factor in 1.01f64..3.0,
        ) {
            let cands: Vec<Candidate> =
                loads.iter().enumerate().map(|(i, &(f, w))| cand(i as u32, f, w)).collect();
            let total: u64 = loads.iter().map(|l| l.0).sum();
            let weight: u64 = loads.iter().map(|l| u64::from(l.1)).sum();
            let choice = choose(cands.clone(), factor, total, weight).expect("non-empty");
            let first_with_room = cands.iter().position(|c| {
                has_room(c.in_flight, capacity(factor, total, c.weight, weight))
            });
            match first_with_room {
                Some(i) => {
                    prop_assert_eq!(choice.id, cands[i].id);
                    prop_assert_eq!(choice.spilled, i > 0);
                }
                None => {
                    let room = |c: &Candidate| {
                        i128::from(capacity(factor, total, c.weight, weight)) - i128::from(c.in_flight)
                    };
                    let most = cands.iter().map(room).max().expect("non-empty");
                    let chosen = cands.iter().find(|c| c.id == choice.id).expect("a candidate");
                    prop_assert_eq!(room(chosen), most);
                }
            }
        }
    }
}
