//! Helpers shared by the benches: rings of `app-N` backends, every weight 1.
#![allow(dead_code)] // each bench uses a different part

use ringlb::ring::{BackendId, Member, Ring};

/// `app-0` .. `app-{n-1}`.
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("app-{i}")).collect()
}

/// `names` as ring members, weight 1 each, ids in order.
pub fn members_of(names: &[String]) -> Vec<Member<'_>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| Member {
            id: BackendId::try_from(i).expect("bench sizes fit u32"),
            name,
            weight: 1,
        })
        .collect()
}

/// The ring of `names`, weight 1 each, with `vnodes` points per backend.
pub fn ring_of(names: &[String], vnodes: u32) -> Ring {
    Ring::build(&members_of(names), vnodes).expect("bench ring builds")
}
