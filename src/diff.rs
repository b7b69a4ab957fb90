//! What a config change does to the key space, computed exactly from the two rings:
//! the share of keys that move, from which backend to which, and each backend's new
//! share. Pure: snapshots in, numbers out.

use std::collections::{BTreeMap, HashMap};

use crate::placement::Placement;
use crate::ring::Ring;
use std::fmt;

use crate::snapshot::Snapshot;

/// The key space before and after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDiff {
    /// Fraction of all keys whose owner changes, 0..=1.
    pub moved: f64,
    /// (from, to) -> fraction of all keys; `None` is "no owner" (every weight 0).
    pub flows: BTreeMap<(Option<String>, Option<String>), f64>,
    /// Backends only in the new config.
    pub added: Vec<String>,
    /// Backends only in the old config.
    pub removed: Vec<String>,
    /// Backends in both whose weight changed: (name, old, new).
    pub reweighted: Vec<(String, u32, u32)>,
    /// Backends in both whose address changed: (name, old, new). They start cold (new
    /// connections, fresh state), so their keys count as moved.
    pub readdressed: Vec<(String, String, String)>,
    /// Each new backend's share of the key space.
    pub shares: Vec<(String, f64)>,
}

/// Compares the owners of every arc of the key space under `old` and `new`, in one
/// linear merge of the two rings' sorted points.
pub fn diff(old: &Snapshot, new: &Snapshot) -> KeyDiff {
    // Each old backend's id in the new config when its identity stays, so the loop
    // compares integers, not names and addresses, for each of its ~2n arcs.
    let new_ids: HashMap<_, u32> = (0u32..)
        .zip(&new.backends)
        .map(|(i, b)| ((&*b.name, &b.address), i))
        .collect();
    let same_in_new: Vec<u32> = old
        .backends
        .iter()
        .map(|b| {
            new_ids
                .get(&(&*b.name, &b.address))
                .copied()
                .unwrap_or(GONE)
        })
        .collect();
    let kept = |from: u32| same_in_new.get(from as usize).copied().unwrap_or(NO_OWNER);
    let (moved_by, any_owner) = match (old.placement.as_ring(), new.placement.as_ring()) {
        (Some(o), Some(n)) => ring_arcs(o, n, kept),
        _ => sampled(&old.placement, &new.placement, kept),
    };
    let last = any_owner.then_some(());
    let space = 2f64.powi(64);
    let mut moved: u128 = moved_by.values().sum();
    if last.is_none() {
        // Neither ring has a point; nothing moves unless one of them is empty alone.
        moved = 0;
    }
    let flows: BTreeMap<(Option<String>, Option<String>), f64> = moved_by
        .into_iter()
        .map(|((from, to), arc)| {
            let key = (
                name_of(old, from).map(str::to_owned),
                name_of(new, to).map(str::to_owned),
            );
            (key, arc as f64 / space)
        })
        .collect();

    let names = |s: &Snapshot| -> BTreeMap<String, (u32, String)> {
        s.config
            .backends
            .iter()
            .map(|b| (b.name.to_string(), (b.weight, b.address.to_string())))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    KeyDiff {
        moved: moved as f64 / space,
        flows,
        added: after
            .keys()
            .filter(|n| !before.contains_key(*n))
            .cloned()
            .collect(),
        removed: before
            .keys()
            .filter(|n| !after.contains_key(*n))
            .cloned()
            .collect(),
        reweighted: after
            .iter()
            .filter_map(|(n, (w, _))| {
                before
                    .get(n)
                    .filter(|(old, _)| old != w)
                    .map(|(old, _)| (n.clone(), *old, *w))
            })
            .collect(),
        readdressed: after
            .iter()
            .filter_map(|(n, (_, a))| {
                before
                    .get(n)
                    .filter(|(_, old)| old != a)
                    .map(|(_, old)| (n.clone(), old.clone(), a.clone()))
            })
            .collect(),
        shares: new
            .backends
            .iter()
            .map(|b| b.name.to_string())
            .zip(new.shares())
            .collect(),
    }
}

fn name_of(snap: &Snapshot, id: u32) -> Option<&str> {
    snap.backends.get(id as usize).map(|b| &*b.name)
}

/// "No owner" (every weight 0) on either side of the merge.
const NO_OWNER: u32 = u32::MAX;
/// An old backend whose identity (name and address: a reload keeps a backend's state
/// only when both stay) is not in the new config; equals no new id.
const GONE: u32 = u32::MAX - 1;

impl KeyDiff {
    /// One line for logs: `+app-4 -app-2 ~app-3(1->2), 14.8% of keys moved`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.added.iter().map(|n| format!("+{n}")));
        parts.extend(self.removed.iter().map(|n| format!("-{n}")));
        parts.extend(
            self.readdressed
                .iter()
                .map(|(n, a, b)| format!("~{n}(address {a}->{b})")),
        );
        parts.extend(
            self.reweighted
                .iter()
                .map(|(n, a, b)| format!("~{n}(weight {a}->{b})")),
        );
        let changes = if parts.is_empty() {
            "no backend changes".to_owned()
        } else {
            parts.join(" ")
        };
        format!("{changes}, {:.1}% of keys moved", self.moved * 100.0)
    }
}

impl fmt::Display for KeyDiff {
    /// The `ringlb diff` report.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        if !self.flows.is_empty() {
            writeln!(f, "\nkeys moving (share of all keys):")?;
            let mut flows: Vec<_> = self.flows.iter().collect();
            flows.sort_by(|a, b| b.1.total_cmp(a.1));
            for ((from, to), share) in flows {
                let (from, to) = (
                    from.as_deref().unwrap_or("(none)"),
                    to.as_deref().unwrap_or("(none)"),
                );
                writeln!(f, "  {from:>12} -> {to:<12} {:6.2}%", share * 100.0)?;
            }
        }
        writeln!(f, "\nshares after the change:")?;
        for (name, share) in &self.shares {
            writeln!(f, "  {name:<12} {:6.2}%", share * 100.0)?;
        }
        Ok(())
    }
}

/// Arc lengths moved between two rings by (old owner, new owner), exact: one linear
/// merge of their sorted points. Also whether either ring has a point.
fn ring_arcs(
    old: &Ring,
    new: &Ring,
    kept: impl Fn(u32) -> u32,
) -> (HashMap<(u32, u32), u128>, bool) {
    let (oh, oo) = old.unpacked();
    let (nh, no) = new.unpacked();
    // Arc lengths moved, by (old owner, new owner) index; u32::MAX is "no owner".
    let mut moved_by: HashMap<(u32, u32), u128> = HashMap::new();
    let last = oh.last().copied().max(nh.last().copied());
    let (mut i, mut j) = (0, 0);
    // Between two consecutive points of either ring (a, b] every key has the owner of
    // b in each ring: the first point at or after b, wrapping to the first point.
    let mut previous: Option<u64> = None;
    while i < oh.len() || j < nh.len() {
        let b = match (oh.get(i), nh.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        let arc = match previous {
            Some(p) => u128::from(b - p),
            // From the last point, around zero, to the first.
            None => (u128::from(u64::MAX) - u128::from(last.unwrap_or(0))) + u128::from(b) + 1,
        };
        let from = oo.get(i).or(oo.first()).map_or(NO_OWNER, |id| id.0);
        let to = no.get(j).or(no.first()).map_or(NO_OWNER, |id| id.0);
        if kept(from) != to {
            *moved_by.entry((from, to)).or_insert(0) += arc;
        }
        while oh.get(i) == Some(&b) {
            i += 1;
        }
        while nh.get(j) == Some(&b) {
            j += 1;
        }
        previous = Some(b);
    }
    (moved_by, last.is_some())
}

/// Keys sampled when either side is not a ring: evenly spaced, so the estimate is the
/// same on every run (±0.4% of the key space at worst).
const DIFF_SAMPLES: u64 = 1 << 16;

/// As `ring_arcs`, estimated from `DIFF_SAMPLES` keys, for algorithms without arcs.
fn sampled(
    old: &Placement,
    new: &Placement,
    kept: impl Fn(u32) -> u32,
) -> (HashMap<(u32, u32), u128>, bool) {
    let step = u64::MAX / DIFF_SAMPLES;
    let mut moved_by: HashMap<(u32, u32), u128> = HashMap::new();
    for i in 0..DIFF_SAMPLES {
        let k = i * step;
        let from = old.owner(k).map_or(NO_OWNER, |id| id.0);
        let to = new.owner(k).map_or(NO_OWNER, |id| id.0);
        if kept(from) != to {
            *moved_by.entry((from, to)).or_insert(0) += u128::from(step);
        }
    }
    (moved_by, !(old.is_empty() && new.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn snap(backends: &[(&str, u32)]) -> Snapshot {
        let mut y =
            String::from("listeners:\n  - bind: \"127.0.0.1:0\"\nhash:\n  vnodes: 40\nbackends:\n");
        // The address follows the name (a -> 9000, b -> 9001, ...), as a real backend's would.
        for (n, w) in backends {
            let port = 9000 + u16::from(n.as_bytes()[0] - b'a');
            y.push_str(&format!(
                "  - name: {n}\n    address: \"127.0.0.1:{port}\"\n    weight: {w}\n"
            ));
        }
        Snapshot::build(config::from_str(&y, "t.yaml").unwrap(), None).unwrap()
    }

    #[test]
    fn no_change_moves_nothing() {
        let d = diff(&snap(&[("a", 1), ("b", 1)]), &snap(&[("b", 1), ("a", 1)]));
        assert_eq!(d.moved, 0.0);
        assert!(d.flows.is_empty());
        assert_eq!(d.summary(), "no backend changes, 0.0% of keys moved");
    }

    #[test]
    fn removing_a_backend_moves_exactly_its_share_to_the_others() {
        let old = snap(&[("a", 1), ("b", 1), ("c", 1)]);
        let share_b = old.shares()[1];
        let d = diff(&old, &snap(&[("a", 1), ("c", 1)]));
        assert!(
            (d.moved - share_b).abs() < 1e-12,
            "{} vs {share_b}",
            d.moved
        );
        assert!(
            d.flows.keys().all(|(from, _)| from.as_deref() == Some("b")),
            "only b's keys move"
        );
        assert_eq!(d.removed, ["b"]);
        assert!(d.summary().starts_with("-b, "));
    }

    #[test]
    fn adding_a_backend_moves_exactly_its_new_share_onto_it() {
        let new = snap(&[("a", 1), ("b", 1), ("d", 2)]);
        let share_d = new.shares()[2];
        let d = diff(&snap(&[("a", 1), ("b", 1)]), &new);
        assert!((d.moved - share_d).abs() < 1e-12);
        assert!(d.flows.keys().all(|(_, to)| to.as_deref() == Some("d")));
        assert_eq!(d.added, ["d"]);
    }

    #[test]
    fn a_new_address_moves_the_backends_keys_as_it_starts_cold() {
        let old = snap(&[("a", 1), ("b", 1)]);
        let y = "listeners:\n  - bind: \"127.0.0.1:0\"\nhash:\n  vnodes: 40\nbackends:\n  - name: a\n    address: \"127.0.0.1:9000\"\n  - name: b\n    address: \"127.0.0.1:7777\"\n";
        let new = Snapshot::build(config::from_str(y, "t.yaml").unwrap(), None).unwrap();
        let d = diff(&old, &new);
        assert!((d.moved - old.shares()[1]).abs() < 1e-12);
        assert_eq!(
            d.summary(),
            format!(
                "~b(address 127.0.0.1:9001->127.0.0.1:7777), {:.1}% of keys moved",
                d.moved * 100.0
            )
        );
    }

    #[test]
    fn the_exact_figure_agrees_with_sampled_keys() {
        let (old, new) = (
            snap(&[("a", 1), ("b", 2), ("c", 1)]),
            snap(&[("a", 2), ("b", 1), ("d", 1)]),
        );
        let d = diff(&old, &new);
        let owner =
            |s: &Snapshot, k: u64| s.placement.owner(k).map(|id| s.backend(id).name.clone());
        let n = 200_000u64;
        let sampled = (0..n)
            .map(|i| crate::ring::hash_key(&i.to_le_bytes()))
            .filter(|&k| owner(&old, k) != owner(&new, k))
            .count() as f64
            / n as f64;
        assert!(
            (sampled - d.moved).abs() < 0.01,
            "sampled {sampled} vs exact {}",
            d.moved
        );
        assert_eq!(
            d.reweighted,
            [("a".to_owned(), 1, 2), ("b".to_owned(), 2, 1)]
        );
    }
}
