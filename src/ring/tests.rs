//! The ring as an algorithm: the spec's invariants under proptest, and agreement with a
//! slow reference that walks every point linearly.

use super::*;
use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

fn ring_of(members: &[(String, u32)], vnodes: u32) -> Ring {
    let m: Vec<Member> = members
        .iter()
        .enumerate()
        .map(|(i, (name, weight))| Member {
            id: BackendId::try_from(i).unwrap(),
            name,
            weight: *weight,
        })
        .collect();
    Ring::build(&m, vnodes).unwrap()
}

/// The owner by definition: every point, sorted, first at or after the key, ties by name.
fn reference_owner(members: &[(String, u32)], vnodes: u32, key: u64) -> Option<usize> {
    let mut points = Vec::new();
    for (i, (name, w)) in members.iter().enumerate() {
        for p in 0..w * vnodes {
            points.push((xxh3_64(format!("{name}#{p}").as_bytes()), name.clone(), i));
        }
    }
    points.sort();
    let first = points.iter().find(|p| p.0 >= key).or(points.first())?;
    Some(first.2)
}

fn names_of(ring: &Ring, members: &[(String, u32)], key: u64) -> Vec<String> {
    ring.failover(key)
        .map(|id| members[id.index()].0.clone())
        .collect()
}

fn members_strategy() -> impl Strategy<Value = Vec<(String, u32)>> {
    prop::collection::btree_map("[a-z]{1,6}", 0u32..4, 1..8).prop_map(|m| m.into_iter().collect())
}

#[test]
fn point_hash_is_name_hash_index() {
    let mut buf = Vec::new();
    for i in [0, 7, 10, 159, 4_294_967_295] {
        assert_eq!(
            point_hash("app-1", i, &mut buf),
            xxh3_64(format!("app-1#{i}").as_bytes())
        );
    }
}

#[test]
fn empty_and_drained_rings_own_nothing() {
    let ring = ring_of(&[("a".into(), 0)], 160);
    assert!(ring.is_empty());
    assert_eq!(ring.owner(42), None);
    assert_eq!(ring.last_point(), None);
    assert_eq!(ring.failover(42).count(), 0);
}

#[test]
fn keys_past_the_last_point_wrap_to_the_first() {
    let members = vec![("a".to_string(), 1), ("b".to_string(), 1)];
    let ring = ring_of(&members, 3);
    let points: Vec<(u64, BackendId)> = ring.points().collect();
    let (first, (last, last_owner)) = (points[0].1, *points.last().unwrap());
    assert_eq!(ring.owner(u64::MAX), Some(first));
    if last < u64::MAX {
        assert_eq!(ring.owner(last + 1), Some(first));
    }
    assert_eq!(ring.owner(last), Some(last_owner));
}

#[test]
fn failover_yields_every_member_once() {
    let members: Vec<(String, u32)> = (0..20).map(|i| (format!("n{i}"), 1 + i % 3)).collect();
    let ring = ring_of(&members, 40);
    for key in [0, 1, u64::MAX / 3, u64::MAX] {
        let mut order: Vec<u32> = ring.failover(key).map(|b| b.0).collect();
        assert_eq!(order.first().copied(), ring.owner(key).map(|b| b.0));
        order.sort();
        assert_eq!(order, (0..20).collect::<Vec<u32>>());
    }
}

/// Every point sorted with its owner's index, by definition (ties by name).
fn reference_points(members: &[(String, u32)], vnodes: u32) -> Vec<(u64, usize)> {
    let mut points = Vec::new();
    for (i, (name, w)) in members.iter().enumerate() {
        for p in 0..w * vnodes {
            points.push((xxh3_64(format!("{name}#{p}").as_bytes()), name.clone(), i));
        }
    }
    points.sort();
    points.into_iter().map(|(h, _, i)| (h, i)).collect()
}

#[test]
fn exact_at_and_beside_every_point_and_bucket_edge() {
    let members: Vec<(String, u32)> = (0..13).map(|i| (format!("m{i}"), 1 + i % 3)).collect();
    let ring = ring_of(&members, 50);
    let reference = reference_points(&members, 50);
    let listed: Vec<(u64, usize)> = ring.points().map(|(h, o)| (h, o.index())).collect();
    assert_eq!(listed, reference, "points() lists the exact ring");
    assert_eq!(ring.last_point(), listed.last().map(|p| p.0));
    let mut keys = vec![0, 1, u64::MAX - 1, u64::MAX];
    for &(p, _) in &reference {
        keys.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
    }
    let shift = 64 - ring.bits;
    for b in 0..(1u64 << ring.bits) {
        keys.extend([(b << shift).wrapping_sub(1), b << shift]);
    }
    for k in keys {
        assert_eq!(
            ring.owner(k).map(|b| b.index()),
            reference_owner(&members, 50, k),
            "key {k:#x}"
        );
    }
}

#[test]
fn twelve_bytes_a_point_or_less_at_1000_by_160() {
    let members: Vec<(String, u32)> = (0..1000).map(|i| (format!("app-{i}"), 1)).collect();
    let ring = ring_of(&members, 160);
    assert_eq!(ring.len(), 160_000);
    let per_point = ring.memory_bytes() as f64 / ring.len() as f64;
    assert!(per_point <= 12.0, "{per_point} bytes a point");
}

#[test]
fn ids_beyond_the_packing_limit_are_refused() {
    let m = [Member {
        id: BackendId(MAX_ID + 1),
        name: "x",
        weight: 1,
    }];
    assert_eq!(
        Ring::build(&m, 1).unwrap_err(),
        RingError::IdTooLarge(MAX_ID + 1)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn agrees_with_the_reference_next_to_points(members in members_strategy(), picks in prop::collection::vec((any::<prop::sample::Index>(), -2i64..=2), 40)) {
        let ring = ring_of(&members, 8);
        let reference = reference_points(&members, 8);
        prop_assume!(!reference.is_empty());
        for (pick, delta) in picks {
            let k = reference[pick.index(reference.len())].0.wrapping_add_signed(delta);
            prop_assert_eq!(ring.owner(k).map(|b| b.index()), reference_owner(&members, 8, k));
        }
    }

    #[test]
    fn agrees_with_the_linear_reference(members in members_strategy(), keys in prop::collection::vec(any::<u64>(), 50)) {
        let ring = ring_of(&members, 8);
        for k in keys {
            prop_assert_eq!(ring.owner(k).map(|b| b.index()), reference_owner(&members, 8, k));
        }
    }

    #[test]
    fn same_key_same_owner_across_builds(members in members_strategy(), keys in prop::collection::vec(any::<u64>(), 50)) {
        let (a, b) = (ring_of(&members, 16), ring_of(&members, 16));
        for k in keys {
            prop_assert_eq!(a.owner(k), b.owner(k));
        }
    }

    #[test]
    fn file_order_does_not_matter(members in members_strategy(), keys in prop::collection::vec(any::<u64>(), 50)) {
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.rotate_left(members.len() / 2);
        let (a, b) = (ring_of(&members, 16), ring_of(&shuffled, 16));
        for k in keys {
            prop_assert_eq!(names_of(&a, &members, k), names_of(&b, &shuffled, k));
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys_to_their_next(
        members in members_strategy(),
        victim in any::<prop::sample::Index>(),
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let v = victim.index(members.len());
        let before = ring_of(&members, 16);
        let mut rest = members.clone();
        let removed = rest.remove(v).0;
        let after = ring_of(&rest, 16);
        for k in keys {
            let old = names_of(&before, &members, k);
            let new = names_of(&after, &rest, k).first().cloned();
            if old.first() == Some(&removed) {
                prop_assert_eq!(new.as_ref(), old.get(1), "owned key goes to its next backend");
            } else {
                prop_assert_eq!(new.as_ref(), old.first(), "a key the victim did not own stays");
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_keys_only_onto_it(
        members in members_strategy(),
        weight in 1u32..4,
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let before = ring_of(&members, 16);
        let mut more = members.clone();
        more.push(("zz-new".into(), weight));
        let after = ring_of(&more, 16);
        for k in keys {
            let old = names_of(&before, &members, k).first().cloned();
            let new = names_of(&after, &more, k).first().cloned();
            prop_assert!(new == old || new.as_deref() == Some("zz-new"), "{old:?} -> {new:?}");
        }
    }

    /// A backend with k points among M holds a Beta(k, M-k) share whose relative
    /// standard deviation is below 1/sqrt(k); 5 of them bound a failure below 1e-6.
    #[test]
    fn shares_follow_weights(weights in prop::collection::vec(1u32..5, 2..12)) {
        let vnodes = 160;
        let members: Vec<(String, u32)> = weights.iter().enumerate().map(|(i, w)| (format!("app-{i}"), *w)).collect();
        let ring = ring_of(&members, vnodes);
        let total: u32 = weights.iter().sum();
        let shares = ring.shares(members.len());
        prop_assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        for (i, w) in weights.iter().enumerate() {
            let ideal = f64::from(*w) / f64::from(total);
            let tolerance = 5.0 / f64::from(w * vnodes).sqrt();
            prop_assert!((shares[i] / ideal - 1.0).abs() < tolerance,
                "app-{i}: share {} vs ideal {ideal} (tolerance {tolerance})", shares[i]);
        }
    }
}
